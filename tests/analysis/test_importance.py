"""fANOVA per budget: the adapter recovers known answers and analyses Optuna's own forest."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from controller.analysis import importance, load, space
from tests.analysis import factories

SEEDS = 2


def _load(folder: Path) -> tuple[load.Search, space.ResolvedSpace]:
    search = load.load_search(folder)
    notes: list[str] = []
    declared = space.read_declared_space(folder, notes)
    resolved = space.resolve_space([c.values for c in search.configs.values()], declared, notes)
    return search, resolved


def test_the_dominant_log_scaled_parameter_ranks_first(tmp_path: Path) -> None:
    folder = factories.synthetic_search(tmp_path / "run", n=40, budgets=(10.0,))
    search, resolved = _load(folder)

    result = importance.budget_importance(search, resolved, 10.0, seeds=SEEDS)

    assert result.n == 40
    assert result.individual[0].name == "learning_rate"
    assert result.individual[0].mean > 0.7
    assert all(i.mean < 0.1 for i in result.individual[1:])
    assert [i.mean for i in result.individual] == sorted(
        (i.mean for i in result.individual), reverse=True)


def test_a_pure_interaction_is_the_top_pair_and_no_single_parameter(tmp_path: Path) -> None:
    def interaction(config: factories.Config, budget: float, rng: np.random.Generator) -> float:
        # A saddle in (momentum, alpha): neither alone changes the loss on average.
        return (config["momentum"] - 0.495) * (config["alpha"] - 0.5) * 4 \
            + 0.001 * rng.standard_normal()

    folder = factories.synthetic_search(tmp_path / "run", n=60, budgets=(10.0,),
                                        loss=interaction, seed=1)
    search, resolved = _load(folder)

    result = importance.budget_importance(search, resolved, 10.0, seeds=SEEDS)

    top = result.pairs[0]
    assert {top.first, top.second} == {"momentum", "alpha"}
    assert top.mean > 0.3
    assert top.mean > max(i.mean for i in result.individual)


def test_log_scaled_parameters_are_encoded_in_log10_space(tmp_path: Path) -> None:
    folder = factories.synthetic_search(tmp_path / "run", n=8, budgets=(10.0,))
    search, resolved = _load(folder)

    design = importance.build_design(search.runs, search.configs, resolved)

    lr = design.distributions["learning_rate"]
    assert isinstance(lr, FloatDistribution) and not lr.log
    assert (lr.low, lr.high) == pytest.approx((-3.0, 0.0))
    batch = design.distributions["batch_size"]  # an int, log-scaled: a float in log space
    assert isinstance(batch, FloatDistribution)
    assert (batch.low, batch.high) == pytest.approx((math.log10(32), math.log10(128)))
    assert isinstance(design.distributions["res_branches_1"], IntDistribution)
    for run, row in zip(search.runs, design.rows, strict=True):
        raw = search.configs[run.config_id].values["learning_rate"]
        assert row["learning_rate"] == pytest.approx(math.log10(raw))


def _mixed_space_search(tmp_path: Path) -> tuple[load.Search, space.ResolvedSpace]:
    """A categorical, an int, a log float, and a conditional float inactive half the time."""
    def sample(rng: np.random.Generator) -> factories.Config:
        config: factories.Config = {
            "optimizer": str(rng.choice(["sgd", "adam", "rmsprop"])),
            "depth": int(rng.integers(1, 9)),
            "learning_rate": float(10 ** rng.uniform(-3, 0)),
        }
        if config["optimizer"] == "sgd":
            config["momentum"] = float(rng.uniform(0, 1))
        return config

    def loss(config: factories.Config, budget: float, rng: np.random.Generator) -> float:
        base = {"sgd": 0.2, "adam": 0.5, "rmsprop": 0.6}[config["optimizer"]]
        return base + 0.3 * config.get("momentum", 0.0) + 0.01 * config["depth"] \
            + 0.01 * rng.standard_normal()

    folder = factories.synthetic_search(tmp_path / "run", n=50, budgets=(10.0,), loss=loss,
                                        sample=sample, spec=None)
    return _load(folder)


def test_pair_terms_come_from_the_same_forest_as_optunas_importances(tmp_path: Path) -> None:
    search, resolved = _mixed_space_search(tmp_path)
    design = importance.build_design(search.runs, search.configs, resolved)

    optuna_values, _pairs, mains = importance._one_seed(design, seed=7)

    # The pair code computes the single terms too; they must equal Optuna's to float noise.
    assert mains == pytest.approx([optuna_values[n] for n in design.names], abs=1e-9)


def test_inactive_conditional_and_categorical_parameters_are_analysed(tmp_path: Path) -> None:
    search, resolved = _mixed_space_search(tmp_path)
    design = importance.build_design(search.runs, search.configs, resolved)

    assert design.inactive == ["momentum"]
    momentum = design.distributions["momentum"]
    seen = [c.values["momentum"] for c in search.configs.values() if "momentum" in c.values]
    # No spec: the observed range, widened 10 % downwards to hold the inactive sentinel.
    sentinel = min(seen) - 0.1 * (max(seen) - min(seen))
    assert isinstance(momentum, FloatDistribution)
    assert (momentum.low, momentum.high) == pytest.approx((sentinel, max(seen)))
    assert isinstance(design.distributions["optimizer"], CategoricalDistribution)
    inactive_rows = [r for run, r in zip(search.runs, design.rows, strict=True)
                     if "momentum" not in search.configs[run.config_id].values]
    assert inactive_rows and all(r["momentum"] == momentum.low for r in inactive_rows)

    result = importance.budget_importance(search, resolved, 10.0, seeds=SEEDS)
    assert result.inactive == ["momentum"]
    assert result.individual[0].name == "optimizer"
    assert {i.name for i in result.individual} == {"optimizer", "depth", "learning_rate",
                                                   "momentum"}


def test_a_budget_with_too_few_runs_is_skipped_with_a_note(tmp_path: Path) -> None:
    folder = factories.synthetic_search(tmp_path / "run", n=4, budgets=(10.0,))
    search, resolved = _load(folder)

    result = importance.budget_importance(search, resolved, 10.0, seeds=SEEDS)

    assert result.individual == [] and result.pairs == []
    assert any("only 4 successful run(s)" in n for n in result.notes)


def test_equal_losses_give_a_note_not_an_error(tmp_path: Path) -> None:
    folder = factories.synthetic_search(tmp_path / "run", n=8, budgets=(10.0,),
                                        loss=lambda c, b, r: 0.5)
    search, resolved = _load(folder)

    result = importance.budget_importance(search, resolved, 10.0, seeds=SEEDS)

    assert result.individual == []
    assert any("all losses are equal" in n for n in result.notes)
