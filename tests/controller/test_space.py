"""The search space: presets, categorical and conditional parameters, plain trainer configs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

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


# --- validation without ConfigSpace agrees with ConfigSpace --------------------------------

_PARAMS = (
    spec_mod.ParameterSpec("res_branches_1", "categorical", choices=(1, 2, 4)),
    spec_mod.ParameterSpec("length", "int", low=0, high=20),
    spec_mod.ParameterSpec("death_rate", "float", low=0.0, high=1.0, default=0.0),
    spec_mod.ParameterSpec("momentum", "float", low=0.1, high=0.9),
    spec_mod.ParameterSpec("initial_filters", "int", low=8, high=32, log=True),
)
_NAMES = [p.name for p in _PARAMS]
#: Mostly values each parameter can take, and one it cannot.
_LEGAL: dict[str, list[float]] = {
    "res_branches_1": [1, 2, 4, 3], "length": [0, 5, 10, 20, 2.5], "death_rate": [0, 0.5, 1, 1.5],
    "momentum": [0.1, 0.5, 0.9, 0.05], "initial_filters": [8, 16, 32, 40],
}


@st.composite
def _conditions(draw: st.DrawFn) -> spec_mod.ConditionSpec:
    child, parent = draw(st.permutations(_NAMES))[:2]
    op = draw(st.sampled_from(["equals", "in", "greaterThan", "lessThan"]))
    values = st.sampled_from(_LEGAL[parent])
    value = tuple(draw(st.lists(values, min_size=1, max_size=3))) if op == "in" \
        else draw(values)
    return spec_mod.ConditionSpec(child, parent, op, value)


@st.composite
def _forbidden(draw: st.DrawFn) -> spec_mod.ForbiddenSpec:
    names = draw(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=2, unique=True))
    clauses = []
    for name in names:
        values = st.sampled_from(_LEGAL[name])
        if draw(st.booleans()):
            clauses.append(spec_mod.ForbiddenClause(name, "equals", draw(values)))
        else:
            listed = tuple(draw(st.lists(values, min_size=1, max_size=3)))
            clauses.append(spec_mod.ForbiddenClause(name, "in", listed))
    return spec_mod.ForbiddenSpec(tuple(clauses))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_conditions(), max_size=3), st.lists(_forbidden(), max_size=2))
def test_a_space_accepted_without_configspace_is_one_configspace_builds_as_checked(
    conditions: list[spec_mod.ConditionSpec], forbidden: list[spec_mod.ForbiddenSpec],
) -> None:
    plain = spec_mod.SearchSpaceSpec(parameters=_PARAMS)
    full = spec_mod.SearchSpaceSpec(parameters=_PARAMS, conditions=tuple(conditions),
                                    forbidden=tuple(forbidden))
    resolved = space_mod.build(plain).parameters
    try:  # ConfigSpace's own verdict, built eagerly with none of our checks.
        reference: Any = space_mod._configspace(resolved, full, 0)
    except Exception:
        reference = None
    try:
        ours: space_mod.SearchSpace | None = space_mod.build(full, 0)
    except spec_mod.SpecError:
        ours = None
    event("ConfigSpace refuses" if reference is None else
          "both accept" if ours is not None else "only our checks refuse")
    if reference is None:
        assert ours is None, "a space ConfigSpace refuses passed validation"
    if ours is not None:
        # Same default configuration, inactive parameters included.
        by_name = {p.name: p for p in ours.parameters}
        expected = space_mod._default_configuration(full, by_name)
        got = dict(ours.configspace.get_default_configuration())
        assert set(got) == set(expected)
        assert all(float(got[k]) == pytest.approx(float(v)) for k, v in expected.items())


def test_the_operator_process_loads_neither_configspace_nor_scipy_even_while_sampling() -> None:
    probe = (
        "import sys, time\n"
        "import controller.kube.handlers, controller.kube.runner, controller.metrics\n"
        "from controller import spec\n"
        "from controller.engine import Engine, MemoryLedger\n"
        "s = spec.load_spec({'budgets': {'min': 1, 'max': 9}, 'maxIterations': 1})\n"
        "engine = Engine(s, MemoryLedger())  # BOHB's model in its process, as the operator's\n"
        "deadline = time.monotonic() + 120\n"
        "while engine.next_trial() is None and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "engine.close()\n"
        "print(engine.progress().trials_started,\n"
        "      sorted(m for m in ('ConfigSpace', 'scipy', 'numpy', 'pandas', 'hpbandster')\n"
        "             if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    # A trial was sampled (in the model process), and the operator's own process stayed
    # without the model's libraries: they are about 150 MB there.
    assert out == "1 []"


def test_a_forbidden_clause_that_covers_every_value_is_refused_as_such() -> None:
    space = small_space(BRANCHES, LR, forbidden=[{"all": [{"name": "res_branches_1",
                                                           "in": [1, 2, 4]}]}])
    with pytest.raises(spec_mod.SpecError, match="forbids every value of 'res_branches_1'") \
            as info:
        _build(space)
    assert info.value.field == "spec.searchSpace.forbidden[0]"
