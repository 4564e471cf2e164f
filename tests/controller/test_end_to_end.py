"""A real search: `nas-bohb search` with the real trainer on real CIFAR-10, tiny budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controller.factories import CONSTANTS

ROOT = Path(__file__).resolve().parents[2]
LOCAL_DATA = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
OFFICIAL = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a")


@pytest.mark.slow
def test_real_search_finishes_with_an_incumbent_and_hpbandster_files(tmp_path: Path) -> None:
    data = ["--data", str(LOCAL_DATA)] if LOCAL_DATA.exists() else \
        ["--data", OFFICIAL[0], "--data-md5", OFFICIAL[1]]
    searched: list[dict[str, Any]] = [
        {"name": "learning_rate", "type": "float", "low": 0.01, "high": 0.5, "log": True},
        {"name": "res_branches_1", "type": "categorical", "choices": [1, 2]},
        {"name": "death_rate", "type": "float", "low": 0.0, "high": 0.5, "default": 0.0},
    ]
    constants = [{"name": k, "type": "constant", "value": v} for k, v in CONSTANTS.items()
                 if k not in {p["name"] for p in searched}]
    document = {
        "apiVersion": "nas-bohb.io/v1alpha1", "kind": "JointSearch",
        "metadata": {"name": "e2e"},
        "spec": {
            # Budgets 3 and 9 s: one bracket of 3 trials at 3 s and the best at 9 s.
            "budgets": {"min": 3, "max": 9, "eta": 3},
            "maxIterations": 1,
            "parallelTrialCount": 2,
            "seed": 7,
            "searchSpace": {
                "preset": "none", "parameters": searched + constants,
                "conditions": [{"child": "death_rate", "parent": "res_branches_1", "equals": 1}],
            },
            "trainer": {"device": "cpu", "threads": 1},
        },
    }
    spec_file = tmp_path / "e2e.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli", "search", str(spec_file), "--out",
         str(run_dir), *data],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Incumbent: configuration" in done.stdout
    results = [json.loads(line) for line in (run_dir / "results.json").read_text().splitlines()]
    assert len(results) == 4
    assert {r[1] for r in results} == {3.0, 9.0}
    for _, budget, _, result, exception in results:
        assert exception is None, exception
        record = result["info"]
        assert record["status"] == "ok" and 0 <= record["validation_error"] <= 1
        assert record["train_seconds"] == pytest.approx(budget, rel=0.2)
        assert record["n_params"] > 0 and record["test_error"] is not None
    assert (run_dir / "ledger.jsonl").exists() and (run_dir / "configs.json").exists()
