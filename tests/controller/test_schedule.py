"""The Hyperband schedule against the published bracket table and hpbandster's rules."""

from __future__ import annotations

import pytest

from controller.engine import schedule


def test_brackets_match_the_papers_table() -> None:
    # Zela et al. (2018), bracket table for budgets 400..10800 s, eta 3.
    published = {
        3: ((27, 9, 3, 1), (400, 1200, 3600, 10800), 43_200),
        2: ((9, 3, 1), (1200, 3600, 10800), 32_400),
        1: ((6, 2), (3600, 10800), 43_200),
        0: ((4,), (10800,), 43_200),
    }
    plan = schedule.plan(400, 10800, 3, 4)
    assert [b.s for b in plan] == [3, 2, 1, 0]
    for b in plan:
        sizes, budgets, gpu_seconds = published[b.s]
        assert b.num_configs == sizes
        assert b.budgets == pytest.approx(budgets)
        assert b.total_budget == pytest.approx(gpu_seconds)


def test_a_round_of_the_paper_costs_45_gpu_hours_and_32_iterations_8_rounds() -> None:
    plan = schedule.plan(400, 10800, 3, 32)
    assert sum(b.total_budget for b in plan[:4]) / 3600 == pytest.approx(45.0)
    assert sum(b.total_budget for b in plan) / 3600 == pytest.approx(360.0)
    assert [b.s for b in plan[4:8]] == [3, 2, 1, 0]


def test_exact_powers_keep_every_budget_where_hpbandsters_float_drops_one() -> None:
    # hpbandster: -int(log(1/243)/log(3)) + 1 == 5; the exact count is 6.
    assert schedule.budgets(1, 243, 3) == (1, 3, 9, 27, 81, 243)
    assert schedule.num_budgets(0.1, 0.9, 3) == 3


def test_budgets_that_are_not_a_power_apart_start_above_min() -> None:
    assert schedule.budgets(10, 100, 3) == pytest.approx((100 / 9, 100 / 3, 100))


@pytest.mark.parametrize(
    ("min_budget", "max_budget", "eta", "sizes"),
    [
        (1, 9, 3, [(9, 3, 1), (3, 1), (3,)]),
        (1, 8, 2, [(8, 4, 2, 1), (4, 2, 1), (4, 2), (4,)]),
        (10, 90, 3, [(9, 3, 1), (3, 1), (3,)]),
    ],
)
def test_first_rung_uses_hpbandsters_floor(min_budget: float, max_budget: float, eta: int,
                                           sizes: list[tuple[int, ...]]) -> None:
    plan = schedule.plan(min_budget, max_budget, eta, len(sizes))
    assert [b.num_configs for b in plan] == sizes


def test_budget_indices_count_from_the_smallest_budget() -> None:
    b = schedule.bracket(1, 400, 10800, 3)
    assert b.budget_indices == (1, 2, 3)


@pytest.mark.parametrize(("low", "high", "eta"), [(9, 9, 3), (10, 1, 3), (0, 9, 3), (1, 9, 1)])
def test_impossible_budgets_are_refused(low: float, high: float, eta: int) -> None:
    with pytest.raises(ValueError):
        schedule.budgets(low, high, eta)
