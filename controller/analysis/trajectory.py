"""How a search unfolded in wall-clock time: incumbents, concurrency, and how picks fared.

BOHB is an anytime method (Falkner et al. 2018): the question users ask is how good the
best configuration is after a given wall-clock time, per budget and overall, and whether
the workers were kept busy. This module turns the runs' timestamps into those series.

The overall incumbent follows hpbandster's ``Result.get_incumbent_trajectory`` with its
defaults (``all_budgets=True``, ``bigger_is_better=True``, ``non_decreasing_budget=True``):
a finished run becomes the incumbent when its budget is larger than the incumbent's, or
when it is on the same budget with a lower loss; runs on smaller budgets never do.

.. note::
   Times are seconds since the first timestamp of the search. A run without ``started`` or
   ``finished`` (a record cut short) is left out of the concurrency series.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

from controller.analysis import load

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """The incumbent from ``time`` on: its loss, budget and configuration."""

    time: float
    loss: float
    budget: float
    config_id: str


@dataclass(frozen=True)
class Concurrency:
    """Number of runs in flight over time, as a step function starting at ``times[0]``."""

    times: list[float]
    running: list[int]
    peak: int
    workers: int | None  # declared parallelism, when the spec says
    busy_fraction: float | None  # worker-seconds used / (workers x span)
    span: float


@dataclass(frozen=True)
class PickSummary:
    """How configurations of one pick kind did on one budget."""

    budget: float
    kind: str  # "model-based", "random" or "unknown"
    n: int
    n_ok: int
    median: float | None
    best: float | None


def _finished_ok(search: load.Search) -> list[load.Run]:
    runs = [r for r in search.runs if r.loss is not None and r.finished is not None]
    return sorted(runs, key=lambda r: (r.finished, r.budget))


def incumbent_per_budget(search: load.Search) -> dict[float, list[Step]]:
    """Best loss so far on each budget, one step per improvement."""
    steps: dict[float, list[Step]] = {b: [] for b in search.budgets}
    # Runs in finishing order: a step is drawn only when a budget's best improves.
    for run in _finished_ok(search):
        assert run.loss is not None and run.finished is not None
        trail = steps[run.budget]
        if not trail or run.loss < trail[-1].loss:
            trail.append(Step(run.finished, run.loss, run.budget, run.config_id))
    return steps


def incumbent_overall(search: load.Search) -> list[Step]:
    """The incumbent over all budgets, by hpbandster's rule (see the module docstring)."""
    steps: list[Step] = []
    for run in _finished_ok(search):
        assert run.loss is not None and run.finished is not None
        if steps:
            current = steps[-1]
            if run.budget < current.budget:
                continue
            if run.budget == current.budget and run.loss >= current.loss:
                continue
        steps.append(Step(run.finished, run.loss, run.budget, run.config_id))
    return steps


def concurrency(search: load.Search, workers: int | None) -> Concurrency | None:
    """Runs in flight over time; None when no run has both a start and an end time."""
    timed = [r for r in search.runs if r.started is not None and r.finished is not None]
    if not timed:
        return None
    events: list[tuple[float, int]] = []
    used = 0.0
    for run in timed:
        assert run.started is not None and run.finished is not None
        events += [(run.started, 1), (run.finished, -1)]
        used += run.finished - run.started
    # At equal times a run ends before the next starts: a reused worker is not two.
    events.sort(key=lambda e: (e[0], e[1]))

    times, running, level = [events[0][0]], [0], 0
    for t, change in events:
        level += change
        if t == times[-1]:
            running[-1] = level
        else:
            times.append(t)
            running.append(level)
    peak = max(running)
    span = times[-1] - times[0]
    # Without a declared worker count, the peak concurrency stands in for it.
    slots = workers or peak
    busy = used / (slots * span) if span > 0 and slots > 0 else None
    return Concurrency(times, running, peak, workers, busy, span)


def pick_summaries(search: load.Search) -> list[PickSummary]:
    """Per budget and pick kind: runs, successes, median and best loss."""
    out: list[PickSummary] = []
    for budget in search.budgets:
        groups: dict[str, list[load.Run]] = {}
        for run in search.runs_on(budget):
            config = search.configs.get(run.config_id)
            pick = None if config is None else config.model_based
            kind = "unknown" if pick is None else ("model-based" if pick else "random")
            groups.setdefault(kind, []).append(run)
        for kind in ("random", "model-based", "unknown"):
            runs = groups.get(kind, [])
            if not runs:
                continue
            losses = [r.loss for r in runs if r.loss is not None]
            out.append(PickSummary(
                budget, kind, len(runs), len(losses),
                statistics.median(losses) if losses else None, min(losses) if losses else None,
            ))
    return out


def best_run(search: load.Search, notes: list[str]) -> load.Run | None:
    """The incumbent: lowest loss on the largest budget that has a successful run."""
    # Largest budget first; a search still running may not have finished one there yet.
    for budget in reversed(search.budgets):
        ok = [r for r in search.runs_on(budget) if r.loss is not None]
        if ok:
            if budget != search.budgets[-1]:
                notes.append(
                    f"No successful run on the largest budget ({search.budgets[-1]:g} s) "
                    f"yet; the incumbent is the best run on {budget:g} s."
                )
            return min(ok, key=lambda r: (r.loss, r.config_id))
    return None
