"""Small factories for the controller tests: specs, spaces and a scripted objective."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

from controller import spec as spec_mod
from controller.engine import TrialOutcome, TrialRequest

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")

# Every trainer parameter fixed except the ones a test searches.
CONSTANTS: dict[str, int | float] = {
    "nr_residual_blocks_1": 1, "nr_residual_blocks_2": 1, "nr_residual_blocks_3": 1,
    "initial_filters": 8, "widen_factor_1": 1.0, "widen_factor_2": 1.0, "widen_factor_3": 1.0,
    "res_branches_1": 1, "res_branches_2": 1, "res_branches_3": 1, "learning_rate": 0.1,
    "batch_size": 64, "weight_decay": 1e-4, "momentum": 0.9, "alpha": 0.0, "length": 0,
    "death_rate": 0.0,
}


def small_space(*searched: dict[str, Any], conditions: list[dict[str, Any]] | None = None,
                forbidden: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ``preset: none`` space: the given parameters searched, every other one constant."""
    names = {p["name"] for p in searched}
    parameters = [dict(p) for p in searched] + [
        {"name": k, "type": "constant", "value": v} for k, v in CONSTANTS.items()
        if k not in names
    ]
    space: dict[str, Any] = {"preset": "none", "parameters": parameters}
    if conditions:
        space["conditions"] = conditions
    if forbidden:
        space["forbidden"] = forbidden
    return space


LR = {"name": "learning_rate", "type": "float", "low": 0.001, "high": 1.0, "log": True}
MOMENTUM = {"name": "momentum", "type": "float", "low": 0.1, "high": 0.99}


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """A valid bare spec (budgets 1..9, eta 3, a two-dimensional space), with overrides."""
    base: dict[str, Any] = {
        "budgets": {"min": 1, "max": 9, "eta": 3},
        "maxIterations": 4,
        "parallelTrialCount": 2,
        "seed": 3,
        "searchSpace": small_space(LR, MOMENTUM),
    }
    base.update(copy.deepcopy(overrides))
    return base


def make_spec(**overrides: Any) -> spec_mod.SearchSpec:
    return spec_mod.load_spec(spec_dict(**overrides))


def objective(request: TrialRequest) -> float:
    """A smooth validation error: best near learning rate 0.1, better with more budget."""
    lr = float(request.config["learning_rate"])
    return min(1.0, abs(math.log10(lr) + 1.0) / 3 + 0.5 / (request.budget + 1.0))


def ok(request: TrialRequest) -> TrialOutcome:
    error = objective(request)
    return TrialOutcome.from_record({"status": "ok", "validation_error": error,
                                     "test_error": error + 0.01, "train_seconds": request.budget})


def fake_trainer_command() -> list[str]:
    return [sys.executable, str(FAKE_TRAINER)]
