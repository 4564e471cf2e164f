"""Budget rank correlation: engineered budgets give the known rho, and the warning follows it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from controller.analysis import correlation, load
from tests.analysis import factories


def _quality(config: factories.Config) -> float:
    """A smooth function of the configuration that the budgets share (or not)."""
    return (math.log10(config["learning_rate"]) + 1.5) ** 2 + config["momentum"]


def correlated(config: factories.Config, budget: float, rng: np.random.Generator) -> float:
    return _quality(config) / budget ** 0.1 + 0.01 * rng.standard_normal()


def independent(config: factories.Config, budget: float, rng: np.random.Generator) -> float:
    # The smallest budget sees the shared quality; larger budgets see unrelated noise.
    return _quality(config) if budget == 10.0 else float(rng.uniform(0, 1))


def _search(tmp_path: Path, loss: factories.LossFn, n: int = 30) -> load.Search:
    return load.load_search(factories.synthetic_search(tmp_path / "run", n=n, loss=loss, seed=3))


def test_correlated_budgets_give_high_rho_and_no_warning(tmp_path: Path) -> None:
    result = correlation.budget_correlations(_search(tmp_path, correlated))

    assert [(p.low, p.high) for p in result.pairs] == [(10, 30), (10, 90), (30, 90)]
    for pair in result.pairs:
        assert pair.n == 30
        assert pair.rho is not None and pair.rho > 0.9
        assert pair.p is not None and pair.p < 1e-6
    assert result.warnings == []


def test_independent_adjacent_budgets_give_low_rho_and_the_papers_warning(
    tmp_path: Path,
) -> None:
    result = correlation.budget_correlations(_search(tmp_path, independent))

    pair = result.pair(10.0, 30.0)
    assert pair is not None and pair.rho is not None
    assert abs(pair.rho) < correlation.WEAK_RHO
    assert pair.weak is True
    assert any("10 s and 30 s" in w and "weakly" in w for w in result.warnings)


def test_failed_runs_are_left_out_of_the_pairs(tmp_path: Path) -> None:
    def fails_on_large_budget(config: factories.Config, budget: float,
                              rng: np.random.Generator) -> float | None:
        # Configurations with a high momentum diverge on the largest budget only.
        if budget == 90.0 and config["momentum"] > 0.5:
            return None
        return correlated(config, budget, rng)

    search = _search(tmp_path, fails_on_large_budget)
    result = correlation.budget_correlations(search)

    ok_on_90 = sum(r.loss is not None for r in search.runs_on(90.0))
    assert 0 < ok_on_90 < 30
    pair = result.pair(30.0, 90.0)
    assert pair is not None and pair.n == ok_on_90
    assert pair.rho is not None and pair.rho > 0.9


def test_too_few_shared_configurations_give_a_note_not_a_warning(tmp_path: Path) -> None:
    result = correlation.budget_correlations(_search(tmp_path, independent, n=4))

    assert result.warnings == []
    assert all(p.weak is None for p in result.pairs)
    assert any("only 4 configuration(s) finished on both" in n for n in result.notes)


def test_rho_is_none_below_three_shared_configurations(tmp_path: Path) -> None:
    result = correlation.budget_correlations(_search(tmp_path, correlated, n=2))

    assert all(p.n == 2 and p.rho is None and p.p is None for p in result.pairs)


@pytest.mark.parametrize("budgets", [(10.0,), ()], ids=["one-budget", "no-budget"])
def test_fewer_than_two_budgets_give_a_note(tmp_path: Path, budgets: tuple[float, ...]) -> None:
    folder = factories.synthetic_search(tmp_path / "run", n=6, budgets=budgets)
    result = correlation.budget_correlations(load.load_search(folder))

    assert result.pairs == []
    assert any("at least two budgets" in n for n in result.notes)
