"""Trajectories over wall-clock time: incumbents, concurrency, picks, the final incumbent."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from controller.analysis import load, trajectory
from tests.analysis import factories


def _search(tmp_path: Path, runs: list[tuple[int, float, float | None, float, float]],
            model_based: Collection[int] = ()) -> load.Search:
    """Runs as (config index, budget, loss, start, end); configurations named 0-0-index."""
    ids = sorted({k for k, *_ in runs})
    factories.write_search(
        tmp_path, [((0, 0, k), {"x": k}, {"model_based_pick": k in model_based}) for k in ids],
        [factories.result_line((0, 0, k), b, loss, start, end) for k, b, loss, start, end in runs],
        spec=None)
    return load.load_search(tmp_path)


def test_the_overall_incumbent_moves_to_larger_budgets_and_never_back(tmp_path: Path) -> None:
    search = _search(tmp_path, [
        (0, 10.0, 0.5, 0, 10), (1, 10.0, 0.4, 0, 11), (0, 30.0, 0.45, 11, 41),
        (2, 10.0, 0.1, 41, 51), (1, 30.0, 0.35, 41, 71), (3, 30.0, None, 71, 80),
    ])

    steps = trajectory.incumbent_overall(search)

    # Times are relative to the first submission (0.5 s before the first start).
    assert [(s.config_id, s.budget, s.loss, s.time) for s in steps] == [
        ("0-0-0", 10.0, 0.5, 10.5), ("0-0-1", 10.0, 0.4, 11.5), ("0-0-0", 30.0, 0.45, 41.5),
        ("0-0-1", 30.0, 0.35, 71.5)]
    per_budget = trajectory.incumbent_per_budget(search)
    assert [s.loss for s in per_budget[10.0]] == [0.5, 0.4, 0.1]
    assert [s.loss for s in per_budget[30.0]] == [0.45, 0.35]


def test_concurrency_shows_idle_workers(tmp_path: Path) -> None:
    # Two workers; between 10 s and 20 s only one trial runs.
    search = _search(tmp_path, [(0, 10.0, 0.5, 0, 10), (1, 10.0, 0.4, 0, 20),
                                (2, 10.0, 0.3, 20, 30), (3, 10.0, 0.2, 20, 30)])

    series = trajectory.concurrency(search, workers=2)

    assert series is not None
    assert series.peak == 2
    assert series.running == [2, 1, 2, 0]
    assert series.times == pytest.approx([0.5, 10.5, 20.5, 30.5])
    # 50 worker-seconds used of 2 workers x 30 s.
    assert series.busy_fraction == pytest.approx(50 / 60)


def test_a_worker_reused_at_the_same_instant_is_not_counted_twice(tmp_path: Path) -> None:
    search = _search(tmp_path, [(0, 10.0, 0.5, 0, 10), (1, 10.0, 0.4, 10, 20)])

    series = trajectory.concurrency(search, workers=None)

    assert series is not None and series.peak == 1
    assert series.busy_fraction == pytest.approx(1.0)


def test_pick_summaries_split_model_based_from_random(tmp_path: Path) -> None:
    search = _search(tmp_path, [(0, 10.0, 0.5, 0, 1), (1, 10.0, 0.3, 0, 1),
                                (2, 10.0, 0.2, 0, 1), (3, 10.0, None, 0, 1)],
                     model_based={2, 3})

    rows = {r.kind: r for r in trajectory.pick_summaries(search)}

    assert (rows["random"].n, rows["random"].n_ok, rows["random"].median) == (2, 2, 0.4)
    assert (rows["model-based"].n, rows["model-based"].n_ok, rows["model-based"].best) == \
        (2, 1, 0.2)


def test_the_incumbent_falls_back_to_a_smaller_budget_with_a_note(tmp_path: Path) -> None:
    search = _search(tmp_path, [(0, 10.0, 0.5, 0, 1), (1, 10.0, 0.3, 0, 1),
                                (1, 30.0, None, 1, 2)])
    notes: list[str] = []

    best = trajectory.best_run(search, notes)

    assert best is not None and (best.config_id, best.budget) == ("0-0-1", 10.0)
    assert any("No successful run on the largest budget (30 s)" in n for n in notes)
