"""How parameters are analysed: declared by ConfigSpace or the spec, else inferred."""

from __future__ import annotations

from pathlib import Path

import ConfigSpace as CS

from controller.analysis import space


def _resolve(folder: Path, configs: list[dict[str, object]]) -> tuple[space.ResolvedSpace,
                                                                        list[str]]:
    notes: list[str] = []
    declared = space.read_declared_space(folder, notes)
    return space.resolve_space(configs, declared, notes), notes


def test_configspace_json_declares_kinds_ranges_and_constants(tmp_path: Path) -> None:
    cs = CS.ConfigurationSpace()
    cs.add([
        CS.UniformIntegerHyperparameter("blocks", 1, 16, log=True),
        CS.CategoricalHyperparameter("optimizer", ["sgd", "adam"]),
        CS.Constant("alpha", 0.0),
    ])
    cs.to_json(tmp_path / "configspace.json")

    resolved, notes = _resolve(tmp_path, [{"blocks": 2, "optimizer": "sgd", "alpha": 0.0},
                                          {"blocks": 3, "optimizer": "sgd", "alpha": 0.0}])

    assert resolved.params["blocks"] == space.ParamSpace("blocks", "int", 1, 16, True)
    assert resolved.params["optimizer"].choices == ("sgd", "adam")
    assert resolved.constants == ["alpha"]
    assert notes == []


def test_the_spec_narrows_the_papers_preset(tmp_path: Path) -> None:
    (tmp_path / "search.yaml").write_text(
        "spec:\n  parallelTrialCount: 3\n  searchSpace:\n    parameters:\n"
        "      - {name: learning_rate, type: float, low: 0.01, high: 0.5, log: true}\n"
        "      - {name: length, type: constant, value: 0}\n")
    notes: list[str] = []

    declared = space.read_declared_space(tmp_path, notes)

    assert declared.workers == 3 and declared.origin == "search.yaml"
    assert declared.params["learning_rate"] == space.ParamSpace(
        "learning_rate", "float", 0.01, 0.5, True)
    assert declared.params["weight_decay"].log is True  # from the paper's table
    assert "length" in declared.constants and "length" not in declared.params


def test_observed_values_outside_the_declared_range_widen_it_with_a_note(
    tmp_path: Path,
) -> None:
    (tmp_path / "spec.yaml").write_text(
        "spec:\n  searchSpace:\n    preset: none\n    parameters:\n"
        "      - {name: momentum, type: float, low: 0.1, high: 0.9}\n")

    resolved, notes = _resolve(tmp_path, [{"momentum": 0.05}, {"momentum": 0.5}])

    assert (resolved.params["momentum"].low, resolved.params["momentum"].high) == (0.05, 0.9)
    assert any("'momentum'" in n and "widened" in n for n in notes)


def test_without_a_declaration_the_trainers_table_gives_log_scales(tmp_path: Path) -> None:
    resolved, notes = _resolve(tmp_path, [
        {"learning_rate": 0.01, "depth": 2, "act": "relu", "fixed": 1.0},
        {"learning_rate": 0.3, "depth": 5, "act": "gelu", "fixed": 1.0},
    ])

    assert resolved.params["learning_rate"] == space.ParamSpace(
        "learning_rate", "float", 0.01, 0.3, True)
    assert resolved.params["depth"] == space.ParamSpace("depth", "int", 2, 5, False)
    assert resolved.params["act"].kind == "categorical"
    assert resolved.constants == ["fixed"]
    assert any("No search-space description found" in n for n in notes)
