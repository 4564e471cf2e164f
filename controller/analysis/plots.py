"""The report's figures, drawn with matplotlib's Agg renderer (no display, no pyplot state).

Each function draws one PNG from already computed numbers; none computes anything a table
does not also show. Figures carry a title, axis labels with units, and a legend where
colours mean something, so a single PNG can be pasted into a README and still be read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from controller.analysis import compare, correlation, importance, load, trajectory

logger = logging.getLogger(__name__)

DPI = 120
_MAX_BARS = 15
_MAX_PAIR_BARS = 10


def _figure(width: float = 7.5, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    logger.debug("Plot %s written.", path)
    return path


def time_unit(span: float) -> tuple[float, str]:
    """Divisor and unit for a time axis covering ``span`` seconds."""
    if span >= 2 * 3600:
        return 3600.0, "h"
    if span >= 2 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _budget_colors(budgets: Sequence[float]) -> dict[float, tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = max(len(budgets) - 1, 1)
    return {b: tuple(cmap(0.9 * i / n)) for i, b in enumerate(budgets)}


def correlation_heatmap(result: correlation.Correlations, path: Path) -> Path:
    """Budgets x budgets, Spearman's rho in colour, rho and n written in each cell."""
    budgets = result.budgets
    k = len(budgets)
    matrix = np.full((k, k), np.nan)
    counts = np.zeros((k, k), dtype=int)
    for i in range(k):
        matrix[i, i] = 1.0
    for pair in result.pairs:
        i, j = budgets.index(pair.low), budgets.index(pair.high)
        counts[i, j] = counts[j, i] = pair.n
        if pair.rho is not None:
            matrix[i, j] = matrix[j, i] = pair.rho

    # Grow with the number of budgets so the per-cell text stays legible.
    fig = _figure(1.2 * k + 3.0, 1.0 * k + 2.0)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="coolwarm_r", vmin=-1, vmax=1)
    ax.set_facecolor("0.85")  # grey where rho is undefined
    for i in range(k):
        for j in range(k):
            text = "1" if i == j else (
                f"{matrix[i, j]:.2f}\nn={counts[i, j]}" if np.isfinite(matrix[i, j])
                else f"n/a\nn={counts[i, j]}")
            ax.text(j, i, text, ha="center", va="center", fontsize=9)
    labels = [correlation.fmt_budget(b) for b in budgets]
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("budget (training seconds)")
    ax.set_ylabel("budget (training seconds)")
    ax.set_title("Spearman rank correlation of losses between budgets")
    fig.colorbar(image, ax=ax, label="Spearman rho")
    return _save(fig, path)


def importance_bars(result: importance.BudgetImportance, path: Path) -> Path:
    """Individual importances (left) and the strongest pair interactions (right)."""
    fig = _figure(11.0, 5.0)
    # One scale for both panels, so a small interaction does not look like a big one.
    left, right = fig.subplots(1, 2, sharex=True)
    top = result.individual[:_MAX_BARS][::-1]
    # Error bars stop at zero: an importance is a variance fraction, never negative.
    left.barh([i.name for i in top], [i.mean for i in top],
              xerr=[[min(i.std, i.mean) for i in top], [i.std for i in top]],
              color="tab:blue", capsize=2)
    left.set_xlabel("fraction of loss variance explained")
    left.set_title("single parameters")

    pairs = result.pairs[:_MAX_PAIR_BARS][::-1]
    if pairs:
        right.barh([f"{p.first} x {p.second}" for p in pairs], [p.mean for p in pairs],
                   xerr=[[min(p.std, p.mean) for p in pairs], [p.std for p in pairs]],
                   color="tab:orange", capsize=2)
    right.set_xlabel("fraction of loss variance explained")
    right.set_title("pair interactions")
    fig.suptitle(
        f"fANOVA importance on budget {correlation.fmt_budget(result.budget)} "
        f"({result.n} runs; error bars: std over {result.seeds} forest seeds)"
    )
    return _save(fig, path)


def incumbent_trajectory(
    per_budget: dict[float, list[trajectory.Step]], overall: list[trajectory.Step], end: float,
    path: Path,
) -> Path:
    """Best loss so far against wall-clock time, per budget and over all budgets."""
    divisor, unit = time_unit(end)
    colors = _budget_colors(sorted(per_budget))
    fig = _figure()
    ax = fig.add_subplot()
    # The overall incumbent is a wide pale band underneath, so the per-budget lines it
    # coincides with stay visible on top of it.
    if overall:
        ax.step([s.time / divisor for s in overall] + [end / divisor],
                [s.loss for s in overall] + [overall[-1].loss], where="post", color="black",
                alpha=0.3, linewidth=5, label="incumbent (largest budget so far)", zorder=1)
    for budget, steps in sorted(per_budget.items()):
        if steps:
            ax.step([s.time / divisor for s in steps] + [end / divisor],
                    [s.loss for s in steps] + [steps[-1].loss], where="post",
                    color=colors[budget], linewidth=1.6, zorder=2,
                    label=f"best on {correlation.fmt_budget(budget)}")
    ax.set_xlabel(f"wall-clock time since the search started ({unit})")
    ax.set_ylabel("loss (validation error)")
    ax.set_title("Incumbent loss over time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def losses_over_time(search: load.Search, path: Path) -> Path:
    """Every finished run's loss at its finishing time; failed runs as crosses on top."""
    finished = [r for r in search.runs if r.finished is not None]
    times = {id(r): float(r.finished or 0.0) for r in finished}
    end = max(times.values(), default=0.0) or 1.0
    divisor, unit = time_unit(end)
    colors = _budget_colors(search.budgets)
    ok = [float(r.loss) for r in finished if r.loss is not None]
    ceiling = (max(ok) + 0.05 * (max(ok) - min(ok) or 1.0)) if ok else 1.0

    fig = _figure()
    ax = fig.add_subplot()
    for budget in search.budgets:
        runs = [r for r in finished if r.budget == budget]
        good = [r for r in runs if r.loss is not None]
        ax.scatter([times[id(r)] / divisor for r in good], [float(r.loss or 0.0) for r in good],
                   color=colors[budget], s=18, label=correlation.fmt_budget(budget))
        bad = [r for r in runs if r.loss is None]
        if bad:
            ax.scatter([times[id(r)] / divisor for r in bad], [ceiling] * len(bad),
                       color=colors[budget], marker="x", s=30)
    if any(r.loss is None for r in finished):
        ax.axhline(ceiling, color="0.6", linestyle=":", linewidth=1)
        ax.annotate("failed runs", (0.01, ceiling), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=8, color="0.4")
    ax.set_xlabel(f"wall-clock time at which the run finished ({unit})")
    ax.set_ylabel("loss (validation error)")
    ax.set_title("Loss of every run over time, by budget")
    ax.legend(title="budget", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def concurrency(series: trajectory.Concurrency, path: Path) -> Path:
    """Trials in flight against time, with the declared number of workers."""
    divisor, unit = time_unit(series.times[-1])
    fig = _figure(7.5, 3.5)
    ax = fig.add_subplot()
    ax.step([t / divisor for t in series.times], series.running, where="post", color="tab:green")
    ax.fill_between([t / divisor for t in series.times], series.running, step="post",
                    color="tab:green", alpha=0.25)
    if series.workers:
        ax.axhline(series.workers, color="black", linestyle="--", linewidth=1,
                   label=f"workers ({series.workers})")
        ax.legend(fontsize=8, loc="lower right")
    busy = "" if series.busy_fraction is None else f" (workers busy {series.busy_fraction:.0%})"
    ax.set_title(f"Trials running at once over time{busy}")
    ax.set_xlabel(f"wall-clock time since the search started ({unit})")
    ax.set_ylabel("trials running")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(series.peak, series.workers or 0) + 0.5)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def learning_curves(search: load.Search, incumbent: load.Run | None, path: Path) -> Path | None:
    """Validation error against training seconds for every run with a learning curve."""
    colors = _budget_colors(search.budgets)
    fig = _figure()
    ax = fig.add_subplot()
    drawn = 0
    for run in search.runs:
        points = [(p.get("train_seconds"), p.get("validation_error"))
                  for p in run.info.get("learning_curve") or [] if isinstance(p, dict)]
        points = [(x, y) for x, y in points
                  if isinstance(x, (int, float)) and isinstance(y, (int, float))]
        if not points:
            continue
        best = run is incumbent
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="." if len(xs) < 20 else None, color="black" if best
                else colors[run.budget], linewidth=2.2 if best else 0.9, alpha=1 if best else 0.6,
                zorder=3 if best else 2)
        drawn += 1
    if not drawn:
        return None
    for budget in search.budgets:
        ax.plot([], [], color=colors[budget], label=f"budget {correlation.fmt_budget(budget)}")
    if incumbent is not None:
        ax.plot([], [], color="black", linewidth=2.2, label=f"incumbent {incumbent.config_id}")
    if search.budgets[-1] / search.budgets[0] >= 10:
        ax.set_xscale("log")
    ax.set_xlabel("measured training time (s)")
    ax.set_ylabel("validation error")
    ax.set_title(f"Learning curves of {drawn} runs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def picks(search: load.Search, path: Path) -> Path:
    """Losses of random and model-based configurations side by side, per budget."""
    kinds = {"random": ("tab:gray", -0.18), "model-based": ("tab:red", 0.18),
             "unknown": ("tab:blue", 0.0)}
    rng = np.random.default_rng(0)  # jitter only; fixed so reports are reproducible
    fig = _figure()
    ax = fig.add_subplot()
    seen: set[str] = set()
    for index, budget in enumerate(search.budgets):
        for run in search.runs_on(budget):
            if run.loss is None:
                continue
            config = search.configs.get(run.config_id)
            pick = None if config is None else config.model_based
            kind = "unknown" if pick is None else ("model-based" if pick else "random")
            color, offset = kinds[kind]
            ax.scatter(index + offset + rng.uniform(-0.07, 0.07), run.loss, color=color, s=16,
                       alpha=0.8, label=None if kind in seen else kind)
            seen.add(kind)
    for row in trajectory.pick_summaries(search):
        if row.median is not None:
            color, offset = kinds[row.kind]
            x = search.budgets.index(row.budget) + offset
            ax.hlines(row.median, x - 0.12, x + 0.12, color=color, linewidth=2.5)
    ax.set_xticks(range(len(search.budgets)),
                  [correlation.fmt_budget(b) for b in search.budgets])
    ax.set_xlabel("budget (training seconds)")
    ax.set_ylabel("loss (validation error)")
    ax.set_title("Model-based vs random configurations (bars: medians)")
    if seen:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def comparison(rows: Sequence[compare.Row], path: Path) -> Path | None:
    """Validation and test error of the incumbent and the baselines, in percent."""
    rows = [r for r in rows if r.validation_error is not None or r.test_error is not None]
    if not rows:
        return None
    y = np.arange(len(rows))
    fig = _figure(7.5, 1.0 + 0.6 * len(rows) + 1.0)
    ax = fig.add_subplot()
    # A missing error draws no bar (NaN), rather than a bar at zero that reads as perfect.
    val = [100 * r.validation_error if r.validation_error is not None else math.nan for r in rows]
    test = [100 * r.test_error if r.test_error is not None else math.nan for r in rows]
    ax.barh(y - 0.2, val, height=0.38, color="tab:blue", label="validation error")
    ax.barh(y + 0.2, test, height=0.38, color="tab:orange", label="test error")
    labels = [f"{r.name}\n({correlation.fmt_budget(r.budget)})" if r.budget else r.name
              for r in rows]
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("error (%)")
    ax.set_title("Incumbent vs baselines trained by the same pipeline")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
