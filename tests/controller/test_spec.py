"""Spec validation: good specs load, bad ones are refused naming the field, before any run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import spec as spec_mod
from tests.controller.factories import CONSTANTS, LR, MOMENTUM, small_space, spec_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _with(path: str, value: Any) -> dict[str, Any]:
    """``spec_dict()`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    data = spec_dict()
    keys = path.split(".")
    target = data
    for key in keys[:-1]:
        target = target[key] if not key.isdigit() else target[int(key)]  # type: ignore[index]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


def _space(*params: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return spec_dict(searchSpace=small_space(*params, **kw))


BAD_SPECS = [
    pytest.param(_with("budgets.min", 9), "spec.budgets.min", "smaller than max", id="min-eq-max"),
    pytest.param(_with("budgets.min", 20), "spec.budgets.min", "smaller than max",
                 id="min-gt-max"),
    pytest.param(_with("budgets.eta", 1), "spec.budgets.eta", "at least 2", id="eta-1"),
    pytest.param(_with("budgets.eta", 2.5), "spec.budgets.eta", "integer", id="eta-float"),
    pytest.param(_with("budgets.max", ...), "spec.budgets.max", "required", id="no-max"),
    pytest.param(_with("budgets.min", -1), "spec.budgets.min", "positive", id="negative-min"),
    pytest.param(_with("budgets.min", "ten"), "spec.budgets.min", "number", id="string-min"),
    pytest.param(_with("budgets.speed", 3), "spec.budgets.speed", "unknown field",
                 id="unknown-budget-key"),
    pytest.param(_with("paralelTrialCount", 2), "spec.paralelTrialCount", "unknown field",
                 id="typo-top-level"),
    pytest.param(_with("parallelTrialCount", 0), "spec.parallelTrialCount", "at least 1",
                 id="no-parallelism"),
    pytest.param(_with("maxIterations", ...), "spec.maxIterations", "at least one of",
                 id="no-stop-criterion"),
    pytest.param(_with("bohb", {"topNPercent": 0}), "spec.bohb.topNPercent", "between 1 and 99",
                 id="top-n-0"),
    pytest.param(_with("bohb", {"randomFraction": 2}), "spec.bohb.randomFraction",
                 "between 0 and 1", id="random-fraction"),
    pytest.param(_with("bohb", {"minPointsInModel": 2}), "spec.bohb.minPointsInModel",
                 "dimensions + 1 = 3", id="too-few-points"),
    pytest.param(_with("bohb", {"kernel": "gauss"}), "spec.bohb.kernel", "unknown field",
                 id="unknown-bohb-key"),
    pytest.param(_with("dataset", {"md5": "xyz"}), "spec.dataset.md5", "32 hexadecimal",
                 id="bad-md5"),
    pytest.param(_with("trainer", {"device": "tpu"}), "spec.trainer.device",
                 "auto, cpu or cuda", id="bad-device"),
    pytest.param(_with("trainer", {"overrunFactor": 0.5}), "spec.trainer.overrunFactor",
                 "at least 1", id="overrun-below-1"),
    pytest.param(_with("searchSpace.preset", "resnet"), "spec.searchSpace.preset",
                 "paper or none", id="bad-preset"),
    pytest.param(_space(LR, {"name": "dropout", "type": "float", "low": 0, "high": 1}),
                 "spec.searchSpace.parameters[1].name", "unknown parameter 'dropout'",
                 id="unknown-parameter"),
    pytest.param(spec_dict(searchSpace={"preset": "none", "parameters": [LR]}),
                 "spec.searchSpace.parameters", "missing: nr_residual_blocks_1",
                 id="incomplete-space"),
    pytest.param(spec_dict(searchSpace=small_space()), "spec.searchSpace.parameters",
                 "the space is empty", id="empty-space"),
    pytest.param(_space({**LR, "high": 2.0}), "spec.searchSpace.parameters[0].high",
                 "outside its range [0.001, 1]", id="out-of-range-high"),
    pytest.param(_space({**LR, "low": 0.5, "high": 0.1}), "spec.searchSpace.parameters[0].low",
                 "smaller than high", id="low-above-high"),
    pytest.param(_space({"name": "momentum", "type": "float", "low": 0, "high": 0.9,
                         "log": True}),
                 "spec.searchSpace.parameters[0].log", "needs low > 0", id="log-of-zero"),
    pytest.param(_space({"name": "batch_size", "type": "float", "low": 32, "high": 64}),
                 "spec.searchSpace.parameters[0].type", "is int", id="float-for-int"),
    pytest.param(_space({"name": "batch_size", "type": "int", "low": 32.5, "high": 64}),
                 "spec.searchSpace.parameters[0].low", "must be an integer", id="fractional-int"),
    pytest.param(_space({"name": "res_branches_1", "type": "categorical", "choices": [1, 9]}),
                 "spec.searchSpace.parameters[0].choices[1]", "outside its range",
                 id="choice-out-of-range"),
    pytest.param(_space({"name": "res_branches_1", "type": "categorical", "choices": []}),
                 "spec.searchSpace.parameters[0].choices", "at least one", id="no-choices"),
    pytest.param(_space({"name": "res_branches_1", "type": "categorical", "choices": [1, 2],
                         "default": 3}),
                 "spec.searchSpace.parameters[0].default", "one of the choices",
                 id="default-not-a-choice"),
    pytest.param(_space({"name": "res_branches_1", "type": "categorical", "choices": [1, 2],
                         "low": 1}),
                 "spec.searchSpace.parameters[0].low", "does not apply", id="low-on-categorical"),
    pytest.param(_space({"name": "alpha", "type": "constant", "value": 3}),
                 "spec.searchSpace.parameters[0].value", "outside its range",
                 id="constant-out-of-range"),
    pytest.param(_space(LR, LR), "spec.searchSpace.parameters[1].name", "duplicate",
                 id="duplicate-parameter"),
    pytest.param(_space(LR, MOMENTUM, conditions=[{"child": "momentum",
                                                   "parent": "learning_rate", "equals": 0.1}]),
                 "spec.searchSpace.conditions[0].equals", "continuous", id="equals-on-float"),
    pytest.param(_space(LR, MOMENTUM, conditions=[{"child": "momentum",
                                                   "parent": "learning_rate",
                                                   "greaterThan": 1.0}]),
                 "spec.searchSpace.conditions[0].greaterThan", "never true",
                 id="condition-never-true"),
    pytest.param(_space(LR, MOMENTUM, conditions=[{"child": "momentum", "parent": "alpha",
                                                   "greaterThan": 0.5}]),
                 "spec.searchSpace.conditions[0].parent", "is a constant",
                 id="condition-on-constant"),
    pytest.param(_space(LR, MOMENTUM, conditions=[{"child": "momentum",
                                                   "parent": "learning_rate"}]),
                 "spec.searchSpace.conditions[0]", "exactly one of", id="condition-without-op"),
    pytest.param(_space({"name": "res_branches_1", "type": "categorical", "choices": [1, 2]},
                        {"name": "res_branches_2", "type": "categorical", "choices": [1, 2]},
                        conditions=[
                            {"child": "res_branches_1", "parent": "res_branches_2", "equals": 1},
                            {"child": "res_branches_2", "parent": "res_branches_1", "equals": 1},
                        ]),
                 "spec.searchSpace.conditions[1]", "contradictory condition",
                 id="cyclic-conditions"),
    pytest.param(_space({"name": "res_branches_1", "type": "categorical", "choices": [1, 2]},
                        LR, forbidden=[{"all": [{"name": "res_branches_1", "equals": 1}]}]),
                 "spec.searchSpace.forbidden[0]", "forbids the default",
                 id="forbidden-default"),
    pytest.param(_space({"name": "res_branches_1", "type": "categorical", "choices": [1, 2]},
                        LR, forbidden=[{"all": [{"name": "res_branches_1", "equals": 3}]}]),
                 "spec.searchSpace.forbidden[0].all[0].equals", "not a value",
                 id="forbidden-impossible-value"),
    pytest.param(_with("baselines", [{"name": "Resnet_18", "config": CONSTANTS}]),
                 "spec.baselines[0].name", "DNS label", id="baseline-bad-name"),
    pytest.param(_with("baselines", [{"name": "r18", "config": {**CONSTANTS, "alpha": 2}}]),
                 "spec.baselines[0].config.alpha", "outside its range",
                 id="baseline-out-of-range"),
    pytest.param(_with("baselines", [{"name": "r18", "config": {"alpha": 0.1}}]),
                 "spec.baselines[0].config", "missing", id="baseline-incomplete"),
]


@pytest.mark.parametrize(("document", "field", "message"), BAD_SPECS)
def test_bad_spec_is_refused_naming_the_field(document: dict[str, Any], field: str,
                                              message: str) -> None:
    with pytest.raises(spec_mod.SpecError) as caught:
        spec_mod.load_spec(document)
    assert caught.value.field.startswith(field), str(caught.value)
    assert message in str(caught.value)


def test_whole_document_and_bare_spec_load_the_same_search() -> None:
    bare = spec_dict()
    document = {"apiVersion": spec_mod.API_VERSION, "kind": spec_mod.KIND,
                "metadata": {"name": "demo"}, "spec": bare, "status": {"phase": "x"}}
    a, b = spec_mod.load_spec(bare), spec_mod.load_spec(document)
    assert a.fingerprint() == b.fingerprint()
    assert b.name == "demo"


@pytest.mark.parametrize(("key", "value", "field"), [
    ("kind", "Experiment", "kind"),
    ("apiVersion", "kubeflow.org/v1beta1", "apiVersion"),
    ("extra", 1, "extra"),
])
def test_bad_document_envelope_is_refused(key: str, value: Any, field: str) -> None:
    document = {"apiVersion": spec_mod.API_VERSION, "kind": spec_mod.KIND, "spec": spec_dict()}
    document[key] = value
    with pytest.raises(spec_mod.SpecError) as caught:
        spec_mod.load_spec(document)
    assert caught.value.field == field


def test_normalised_spec_loads_back_to_the_same_fingerprint() -> None:
    loaded = spec_mod.load_spec(spec_dict(baselines=[{"name": "r18", "config": CONSTANTS}],
                                          trialTemplate={"anything": [1, 2]}))
    again = spec_mod.load_spec(loaded.to_dict())
    assert again == loaded


def test_trial_template_is_kept_opaque() -> None:
    template = {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}
    assert spec_mod.load_spec(spec_dict(trialTemplate=template)).trial_template == template


def test_yaml_exponent_without_dot_is_read_as_a_number() -> None:
    text = yaml.safe_dump(spec_dict()) + "bohb: {minBandwidth: 1e-3}\n"
    assert spec_mod.load_text(text).bohb.min_bandwidth == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ["quick-search.yaml", "paper-search.yaml"])
def test_shipped_examples_are_valid(name: str) -> None:
    loaded = spec_mod.load_file(str(EXAMPLES / name))
    assert loaded.budgets.max > loaded.budgets.min


def test_paper_example_has_the_papers_exact_settings() -> None:
    paper = spec_mod.load_file(str(EXAMPLES / "paper-search.yaml"))
    assert (paper.budgets.min, paper.budgets.max, paper.budgets.eta) == (400, 10800, 3)
    assert paper.max_iterations == 32
    assert paper.parallel_trial_count == 10
    assert paper.bohb == spec_mod.BohbSpec()
    assert paper.search_space.preset == "paper" and not paper.search_space.parameters
