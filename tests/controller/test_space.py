"""The search space: presets, categorical and conditional parameters, plain trainer configs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import yaml

from controller import space as space_mod
from controller import spec as spec_mod
from tests.controller.factories import LR, MOMENTUM, small_space
from trainer import params as trainer_params

BRANCHES = {"name": "res_branches_1", "type": "categorical", "choices": [1, 2, 4]}
DEATH = {"name": "death_rate", "type": "float", "low": 0.0, "high": 1.0, "default": 0.0}
CONDITIONAL = small_space(
    BRANCHES, DEATH, LR,
    conditions=[{"child": "death_rate", "parent": "res_branches_1", "equals": 1}],
    forbidden=[{"all": [{"name": "res_branches_1", "equals": 4},
                        {"name": "learning_rate", "in": [1.0]}]}],
)


def _build(space: dict[str, object], seed: int = 0) -> space_mod.SearchSpace:
    return space_mod.build(spec_mod.load_spec({"budgets": {"min": 1, "max": 9},
                                               "maxIterations": 1,
                                               "searchSpace": space}).search_space, seed)


def _exactly_plain(config: Mapping[str, object]) -> bool:
    return all(type(v) in (int, float) for v in config.values())


def test_paper_preset_is_the_17_dimensions_of_the_trainer() -> None:
    space = _build({"preset": "paper"})
    assert space.searched_names == trainer_params.NAMES
    assert space.dimensions == 17
    hp: Any = space.configspace["widen_factor_1"]
    assert (hp.lower, hp.upper, hp.log) == (0.5, 8.0, True)


def test_override_replaces_a_preset_entry_whole() -> None:
    space = _build({"preset": "paper", "parameters": [
        {"name": "batch_size", "type": "int", "low": 64, "high": 128},
        {"name": "alpha", "type": "constant", "value": 0.2},
    ]})
    batch: Any = space.configspace["batch_size"]
    assert batch.log is False
    assert "alpha" not in space.searched_names
    assert space.trainer_config(space.configspace.sample_configuration())["alpha"] == 0.2


def test_sampled_configurations_become_plain_complete_trainer_configs() -> None:
    space = _build(CONDITIONAL, seed=1)
    for _ in range(50):
        sampled = space.configspace.sample_configuration()
        config = space.trainer_config(sampled)
        assert set(config) == set(trainer_params.NAMES)
        assert _exactly_plain(config)
        assert config["res_branches_1"] in (1, 2, 4)
        json.dumps(config, allow_nan=False)
        yaml.safe_dump(config)  # safe_dump refuses numpy scalars


def test_numpy_values_from_configspace_are_refused_by_yaml_but_not_after_plain() -> None:
    space = _build(CONDITIONAL, seed=2)
    raw = dict(space.configspace.sample_configuration())
    assert any(isinstance(v, np.generic) for v in raw.values())
    with pytest.raises(yaml.representer.RepresenterError):
        yaml.safe_dump(raw)
    assert _exactly_plain(space.plain(raw))


def test_inactive_conditional_parameter_gets_its_default() -> None:
    space = _build(CONDITIONAL, seed=3)
    seen_inactive = seen_active = False
    for _ in range(60):
        sampled = dict(space.configspace.sample_configuration())
        config = space.trainer_config(sampled)
        if sampled["res_branches_1"] == 1:
            seen_active = True
            assert config["death_rate"] == sampled["death_rate"]
        else:
            seen_inactive = True
            assert "death_rate" not in sampled
            assert config["death_rate"] == 0.0
    assert seen_active and seen_inactive


def test_forbidden_combination_is_never_sampled() -> None:
    space = _build(small_space(
        BRANCHES, {"name": "batch_size", "type": "categorical", "choices": [32, 64]},
        forbidden=[{"all": [{"name": "res_branches_1", "in": [2, 4]},
                            {"name": "batch_size", "equals": 64}]}]), seed=4)
    for _ in range(100):
        config = space.trainer_config(space.configspace.sample_configuration())
        assert not (config["res_branches_1"] in (2, 4) and config["batch_size"] == 64)


def test_defaults_are_configspace_middles_or_off() -> None:
    space = _build({"preset": "paper"})
    defaults = {p.name: p.default for p in space.parameters}
    assert defaults["alpha"] == 0.0 and defaults["length"] == 0 and defaults["death_rate"] == 0.0
    assert defaults["learning_rate"] == pytest.approx(10 ** -1.5)
    assert defaults["initial_filters"] == 16


def test_ledger_values_convert_back_to_a_configuration() -> None:
    space = _build(small_space(LR, MOMENTUM), seed=5)
    plain = space.plain(space.configspace.sample_configuration())
    again = space.to_configuration(plain)
    assert space.plain(again) == plain
