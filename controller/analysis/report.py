"""Write the report folder: ``report.md``, PNG plots, CSV tables and ``summary.json``.

This is the one entry point that runs every analysis on a search read from a folder. Each
section is computed on its own: a section that cannot run (too little data, a damaged
record) adds a note and the rest of the report is still written, because a report on a
search that is still running is as useful as one on a finished search.

``summary.json`` never holds NaN or infinity (``null`` instead) and is written with
``allow_nan=False`` so a violation fails loudly in tests rather than silently in a reader.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import controller
from controller.analysis import (
    compare,
    correlation,
    importance,
    load,
    plots,
    space,
    trajectory,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
_TOP_PAIRS = 10
_TOP_TABLE = 10


@dataclass
class Report:
    """What was written, and the notes and warnings a reader must see."""

    out_dir: Path
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def analyze(
    folder: Path, out_dir: Path, *, source: str | None = None,
    seeds: int = importance.DEFAULT_SEEDS,
) -> Report:
    """Analyse the search in ``folder`` and write the report into ``out_dir``.

    Raises :class:`controller.analysis.AnalysisError` only when ``folder`` holds nothing to
    read; every other defect becomes a note in the report.
    """
    search = load.load_search(folder, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir, {}, notes=list(search.notes))
    notes = report.notes

    # How each parameter is analysed: from configspace.json or the spec, else the data.
    declared = space.read_declared_space(folder, notes)
    resolved = space.resolve_space([c.values for c in search.configs.values()], declared, notes)
    files = report.files

    def guarded(section: str, compute: Callable[[], T]) -> T | None:
        """Run one section; a failure becomes a note instead of ending the report."""
        try:
            return compute()
        except Exception as exc:  # a damaged record must not cost the whole report
            logger.debug("Section %s failed.", section, exc_info=True)
            notes.append(f"The {section} section could not be computed: "
                         f"{type(exc).__name__}: {exc}.")
            return None

    files.append(_write_runs_csv(search, out_dir / "runs.csv"))

    # Budget correlation.
    corr = guarded("budget correlation", lambda: correlation.budget_correlations(search))
    if corr is not None:
        notes.extend(corr.notes)
        report.warnings.extend(corr.warnings)
        files.append(_write_csv(out_dir / "budget_correlation.csv",
                                ["budget_low", "budget_high", "n", "rho", "p", "adjacent"],
                                [[p.low, p.high, p.n, p.rho, p.p, p.adjacent]
                                 for p in corr.pairs]))
        if len(corr.budgets) >= 2:
            _add(files, guarded("correlation heatmap", lambda: plots.correlation_heatmap(
                corr, out_dir / "budget_correlation.png")))

    # Importance per budget.
    importances: list[importance.BudgetImportance] = []
    for budget in search.budgets:
        found = guarded(f"importance on {correlation.fmt_budget(budget)}", functools.partial(
            importance.budget_importance, search, resolved, budget, seeds))
        if found is not None:
            importances.append(found)
            notes.extend(found.notes)
            if found.individual:
                _add(files, guarded("importance plot", functools.partial(
                    plots.importance_bars, found,
                    out_dir / f"importance_{_budget_slug(found.budget)}.png")))
    if importances:
        files.append(_write_csv(
            out_dir / "importance.csv", ["budget", "rank", "parameter", "mean", "std", "n"],
            [[b.budget, k + 1, i.name, i.mean, i.std, b.n]
             for b in importances for k, i in enumerate(b.individual)]))
        files.append(_write_csv(
            out_dir / "importance_pairs.csv",
            ["budget", "rank", "first", "second", "mean", "std", "n"],
            [[b.budget, k + 1, p.first, p.second, p.mean, p.std, b.n]
             for b in importances for k, p in enumerate(b.pairs)]))

    # Trajectories and time.
    per_budget = trajectory.incumbent_per_budget(search)
    overall = trajectory.incumbent_overall(search)
    end = max((r.finished for r in search.runs if r.finished is not None), default=0.0)
    files.append(_write_csv(
        out_dir / "incumbent_trajectory.csv",
        ["scope", "time_s", "loss", "budget", "config_id"],
        [["overall", s.time, s.loss, s.budget, s.config_id] for s in overall]
        + [[f"budget {b:g}", s.time, s.loss, s.budget, s.config_id]
           for b, steps in sorted(per_budget.items()) for s in steps]))
    if overall:
        _add(files, guarded("incumbent plot", lambda: plots.incumbent_trajectory(
            per_budget, overall, end, out_dir / "incumbent_trajectory.png")))
    if any(r.finished is not None for r in search.runs):
        _add(files, guarded("losses plot", lambda: plots.losses_over_time(
            search, out_dir / "losses_over_time.png")))
    else:
        notes.append("No run has a finishing time; the plots over time are left out.")

    conc = trajectory.concurrency(search, declared.workers)
    if conc is not None:
        files.append(_write_csv(out_dir / "concurrency.csv", ["time_s", "running"],
                                list(zip(conc.times, conc.running, strict=True))))
        _add(files, guarded("concurrency plot", lambda: plots.concurrency(
            conc, out_dir / "concurrency.png")))

    best = trajectory.best_run(search, notes)
    curves = guarded("learning curves", lambda: plots.learning_curves(
        search, best, out_dir / "learning_curves.png"))
    if curves is None and search.runs:
        notes.append("No run carries a learning curve (info.learning_curve); "
                     "the learning-curve plot is left out.")
    _add(files, curves)

    picks = trajectory.pick_summaries(search)
    if any(r.loss is not None for r in search.runs):
        _add(files, guarded("pick plot", lambda: plots.picks(search, out_dir / "picks.png")))

    # Comparison with the baselines.
    rows = compare.comparison_rows(search, best, notes)
    files.append(_write_csv(
        out_dir / "comparison.csv",
        ["name", "kind", "budget", "n_params", "validation_error", "test_error",
         "train_seconds", "status"],
        [[r.name, r.kind, r.budget, r.n_params, r.validation_error, r.test_error,
          r.train_seconds, r.status] for r in rows]))
    _add(files, guarded("comparison plot", lambda: plots.comparison(
        rows, out_dir / "comparison.png")))

    # summary.json and report.md last, so they can list every file written before them.
    report.summary = _summary(search, resolved, corr, importances, overall, conc, picks, rows,
                              report)
    summary_path = out_dir / SUMMARY_FILE
    summary_path.write_text(json.dumps(report.summary, indent=2, allow_nan=False) + "\n",
                            encoding="utf-8")
    files.append(summary_path)
    report_path = out_dir / REPORT_FILE
    files.append(report_path)
    report_path.write_text(_markdown(search, resolved, corr, importances, per_budget, overall,
                                     conc, picks, rows, report), encoding="utf-8")
    logger.info("Search %s: report written to %s with %d note(s) and %d warning(s).",
                search.source, report_path, len(notes), len(report.warnings))
    return report


def _add(files: list[Path], path: Path | None) -> None:
    if path is not None:
        files.append(path)


def _budget_slug(budget: float) -> str:
    return f"{budget:g}s".replace(".", "p")


def clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)
    if callable(item):  # numpy scalar
        value = item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    return str(value)


def _cell(value: Any) -> str:
    value = clean(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([_cell(v) for v in row] for row in rows)
    return path


def _write_runs_csv(search: load.Search, path: Path) -> Path:
    names = sorted({n for c in search.configs.values() for n in c.values})
    rows = []
    for r in sorted(search.runs, key=lambda r: (r.finished is None, r.finished or 0.0)):
        config = search.configs.get(r.config_id)
        values = config.values if config else {}
        rows.append([
            r.config_id, r.budget, r.status, r.loss, r.info.get("validation_error"),
            r.info.get("test_error"), r.info.get("train_seconds"), r.submitted, r.started,
            r.finished, None if config is None else config.model_based, r.message,
        ] + [values.get(n) for n in names])
    return _write_csv(path, ["config_id", "budget", "status", "loss", "validation_error",
                             "test_error", "train_seconds", "submitted_s", "started_s",
                             "finished_s", "model_based", "message", *names], rows)


def _summary(
    search: load.Search, resolved: space.ResolvedSpace, corr: correlation.Correlations | None,
    importances: list[importance.BudgetImportance], overall: list[trajectory.Step],
    conc: trajectory.Concurrency | None, picks: list[trajectory.PickSummary],
    rows: list[compare.Row], report: Report,
) -> dict[str, Any]:
    failed = [r for r in search.runs if r.loss is None]
    summary = {
        "source": search.source,
        "nas_bohb_version": controller.__version__,
        "budgets": search.budgets,
        "counts": {
            "configurations": len(search.configs),
            "runs": len(search.runs),
            "failed_runs": len(failed),
            "per_budget": [
                {"budget": b, "runs": len(search.runs_on(b)),
                 "failed": sum(r.loss is None for r in search.runs_on(b))}
                for b in search.budgets],
        },
        "warnings": report.warnings,
        "notes": report.notes,
        "budget_correlation": {
            "method": "spearman",
            "weak_threshold": correlation.WEAK_RHO,
            "min_n_to_judge": correlation.MIN_N_TO_JUDGE,
            "pairs": [] if corr is None else [
                {"budgets": [p.low, p.high], "rho": p.rho, "p": p.p, "n": p.n,
                 "adjacent": p.adjacent, "weak": p.weak} for p in corr.pairs],
        },
        "importance": {
            "method": "fANOVA (optuna FanovaImportanceEvaluator) + exact pairwise terms",
            "unit": "fraction of loss variance",
            "constants": resolved.constants,
            "log_scaled": sorted(n for n, p in resolved.params.items() if p.log),
            "per_budget": [
                {"budget": b.budget, "n": b.n, "seeds": b.seeds, "inactive": b.inactive,
                 "individual": [{"parameter": i.name, "mean": i.mean, "std": i.std}
                                for i in b.individual],
                 "pairs": [{"parameters": [p.first, p.second], "mean": p.mean, "std": p.std}
                           for p in b.pairs[:_TOP_PAIRS]],
                 "notes": b.notes}
                for b in importances],
        },
        "incumbent_trajectory": [
            {"time_s": s.time, "loss": s.loss, "budget": s.budget, "config_id": s.config_id}
            for s in overall],
        "concurrency": None if conc is None else {
            "peak": conc.peak, "workers": conc.workers, "busy_fraction": conc.busy_fraction,
            "span_s": conc.span},
        "picks": [{"budget": p.budget, "kind": p.kind, "runs": p.n, "successful": p.n_ok,
                   "median_loss": p.median, "best_loss": p.best} for p in picks],
        "comparison": [
            {"name": r.name, "kind": r.kind, "budget": r.budget, "n_params": r.n_params,
             "validation_error": r.validation_error, "test_error": r.test_error,
             "train_seconds": r.train_seconds, "status": r.status, "config": r.config}
            for r in rows],
        "files": sorted(p.name for p in report.files),
    }
    cleaned: dict[str, Any] = clean(summary)
    return cleaned


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _f(value: float | None, fmt: str = ".4f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, fmt)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _image(out: list[str], report: Report, name: str, alt: str) -> None:
    if any(p.name == name for p in report.files):
        out.append(f"![{alt}]({name})\n")


def _markdown(
    search: load.Search, resolved: space.ResolvedSpace, corr: correlation.Correlations | None,
    importances: list[importance.BudgetImportance],
    per_budget: dict[float, list[trajectory.Step]], overall: list[trajectory.Step],
    conc: trajectory.Concurrency | None, picks: list[trajectory.PickSummary],
    rows: list[compare.Row], report: Report,
) -> str:
    fb = correlation.fmt_budget
    failed = sum(r.loss is None for r in search.runs)
    out = [f"# Search analysis: {search.source}\n",
           f"{len(search.configs)} configurations, {len(search.runs)} finished runs "
           f"({failed} failed) on {len(search.budgets)} budget(s): "
           f"{', '.join(fb(b) for b in search.budgets) or 'none'}. "
           f"Written by `nas-bohb analyze` {controller.__version__}.\n"]
    if report.warnings:
        out.append("## Warnings\n")
        out += [f"- **{w}**" for w in report.warnings]
        out.append("")
    if report.notes:
        out.append("## Notes on the input\n")
        out += [f"- {n}" for n in report.notes]
        out.append("")

    out.append("## Budgets\n")
    out.append(_table(["budget", "runs", "successful", "failed", "best loss", "median loss"], [
        [fb(b), len(rs), len(ok), len(rs) - len(ok), _f(min(ok, default=None)),
         _f(statistics.median(ok) if ok else None)]
        for b in search.budgets
        for rs in [search.runs_on(b)]
        for ok in [[r.loss for r in rs if r.loss is not None]]]))

    out.append("## Budget rank correlation\n")
    out.append(f"Spearman's rho between the losses of configurations evaluated successfully on "
               f"both budgets. Adjacent budgets below rho = {correlation.WEAK_RHO} (judged "
               f"from n >= {correlation.MIN_N_TO_JUDGE}) get the paper's warning.\n")
    if corr is not None and corr.pairs:
        out.append(_table(["budgets", "n", "rho", "p", "adjacent"], [
            [f"{fb(p.low)} vs {fb(p.high)}", p.n, _f(p.rho, ".3f"), _f(p.p, ".3g"),
             "yes" if p.adjacent else ""] for p in corr.pairs]))
        _image(out, report, "budget_correlation.png", "budget correlation heatmap")
    else:
        out.append("No pair of budgets to correlate.\n")

    out.append("## Parameter importance (fANOVA)\n")
    out.append("Fraction of the loss variance explained on each budget (mean ± std over "
               "forest seeds); log-scaled parameters analysed in log space. "
               f"Constant parameters: {', '.join(resolved.constants) or 'none'}.\n")
    for b in importances:
        if not b.individual:
            continue
        out.append(f"### Budget {fb(b.budget)} ({b.n} runs)\n")
        if b.inactive:
            out.append(f"Inactive in some runs (sentinel value): {', '.join(b.inactive)}.\n")
        out.append(_table(["rank", "parameter", "importance"], [
            [k + 1, i.name, f"{i.mean:.3f} ± {i.std:.3f}"]
            for k, i in enumerate(b.individual[:_TOP_TABLE])]))
        if b.pairs:
            out.append(_table(["rank", "pair", "interaction"], [
                [k + 1, f"{p.first} x {p.second}", f"{p.mean:.3f} ± {p.std:.3f}"]
                for k, p in enumerate(b.pairs[:5])]))
        _image(out, report, f"importance_{_budget_slug(b.budget)}.png",
               f"importance on {fb(b.budget)}")

    out.append("## Over time\n")
    if overall:
        out.append(_table(["time (s)", "incumbent loss", "budget", "configuration"], [
            [f"{s.time:.0f}", _f(s.loss), fb(s.budget), s.config_id] for s in overall]))
    _image(out, report, "incumbent_trajectory.png", "incumbent over time")
    _image(out, report, "losses_over_time.png", "losses over time")
    if conc is not None:
        busy = "n/a" if conc.busy_fraction is None else f"{conc.busy_fraction:.0%}"
        out.append(f"At most {conc.peak} trials ran at once"
                   f"{f' ({conc.workers} workers declared)' if conc.workers else ''}; "
                   f"workers were busy {busy} of the {conc.span:.0f} s between the first start "
                   "and the last finish.\n")
    _image(out, report, "concurrency.png", "trials running over time")
    _image(out, report, "learning_curves.png", "learning curves")

    out.append("## Model-based vs random configurations\n")
    if picks:
        out.append(_table(["budget", "pick", "runs", "successful", "median loss", "best loss"], [
            [fb(p.budget), p.kind, p.n, p.n_ok, _f(p.median), _f(p.best)] for p in picks]))
    _image(out, report, "picks.png", "model-based vs random picks")

    out.append("## Incumbent vs baselines\n")
    if rows:
        out.append(_table(
            ["name", "budget", "params (M)", "validation error (%)", "test error (%)",
             "train time (s)", "status"],
            [[r.name, fb(r.budget) if r.budget else "n/a",
              "n/a" if r.n_params is None else f"{r.n_params / 1e6:.2f}",
              _pct(r.validation_error), _pct(r.test_error), _f(r.train_seconds, ".0f"),
              r.status] for r in rows]))
        if rows[0].kind == "incumbent" and rows[0].config:
            out.append("Incumbent configuration:\n\n```json\n"
                       + json.dumps(clean(rows[0].config), indent=2, sort_keys=True)
                       + "\n```\n")
    else:
        out.append("No successful run yet, and no baselines.\n")
    _image(out, report, "comparison.png", "incumbent vs baselines")

    out.append("## Files\n")
    out += [f"- `{p.name}`" for p in sorted(report.files, key=lambda p: p.name)]
    return "\n".join(out) + "\n"
