"""Small factories for synthetic searches in hpbandster's file format, with known answers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Config = dict[str, Any]
LossFn = Callable[[Config, float, np.random.Generator], float | None]

# A small slice of the paper's space: one log-scaled float, one log-scaled int, linear ones.
SPACE_YAML = """\
apiVersion: nas-bohb.io/v1alpha1
kind: JointSearch
metadata: {name: synthetic}
spec:
  budgets: {min: 10, max: 90, eta: 3}
  parallelTrialCount: 2
  searchSpace:
    parameters:
      - {name: learning_rate, type: float, low: 0.001, high: 1, log: true}
      - {name: batch_size, type: int, low: 32, high: 128, log: true}
      - {name: momentum, type: float, low: 0.0, high: 0.99}
      - {name: alpha, type: float, low: 0.0, high: 1.0}
      - {name: res_branches_1, type: int, low: 1, high: 5}
"""


def sample_config(rng: np.random.Generator) -> Config:
    """A configuration of :data:`SPACE_YAML`, log-scaled parameters sampled in log space."""
    return {
        "learning_rate": float(10 ** rng.uniform(-3, 0)),
        "batch_size": round(2 ** rng.uniform(5, 7)),
        "momentum": float(rng.uniform(0, 0.99)),
        "alpha": float(rng.uniform(0, 1)),
        "res_branches_1": int(rng.integers(1, 6)),
    }


def lr_dominates(config: Config, budget: float, rng: np.random.Generator) -> float:
    """Loss driven by log10(learning_rate) alone, plus a little noise."""
    return 0.1 + 0.08 * (math.log10(config["learning_rate"]) + 1.5) ** 2 \
        + 0.002 * rng.standard_normal()


def trainer_record(loss: float | None, budget: float, status: str = "ok") -> dict[str, Any]:
    """The trainer's result record (docs/architecture.md) for one run."""
    epochs = 4
    curve = [] if loss is None else [
        {"epoch": e + 1, "train_seconds": budget * (e + 1) / epochs, "lr": 0.1,
         "train_loss": 2.0 / (e + 1), "validation_error": loss + 0.3 * (epochs - e - 1) / epochs}
        for e in range(epochs)]
    return {
        "status": status, "validation_error": loss,
        "test_error": None if loss is None else loss + 0.01,
        "train_seconds": budget, "n_params": 250_000, "learning_curve": curve,
        "message": None if status == "ok" else "diverged",
    }


def write_search(
    folder: Path,
    configs: Sequence[tuple[Sequence[int], Config, Mapping[str, Any]]],
    results: Sequence[Sequence[Any]],
    spec: str | None = SPACE_YAML,
    baselines: list[dict[str, Any]] | None = None,
) -> Path:
    """Write configs.json/results.json (one JSON value per line) and optional extras."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "configs.json").open("w") as fh:
        for cid, config, info in configs:
            fh.write(json.dumps([list(cid), config, dict(info)]) + "\n")
    with (folder / "results.json").open("w") as fh:
        for line in results:
            fh.write(json.dumps(list(line)) + "\n")
    if spec is not None:
        (folder / "spec.yaml").write_text(spec)
    if baselines is not None:
        (folder / "baselines.json").write_text(json.dumps(baselines))
    return folder


def result_line(
    cid: Sequence[int], budget: float, loss: float | None, start: float, end: float,
    info: Mapping[str, Any] | None = None, exception: str | None = None,
) -> list[Any]:
    """One results.json line: id, budget, timestamps, result (or None), exception."""
    stamps = {"submitted": start - 0.5, "started": start, "finished": end}
    result = None if exception else {"loss": loss, "info": dict(info or {})}
    return [list(cid), budget, stamps, result, exception]


def synthetic_search(
    folder: Path,
    *,
    n: int,
    budgets: Sequence[float] = (10.0, 30.0, 90.0),
    loss: LossFn = lr_dominates,
    seed: int = 0,
    workers: int = 2,
    promote: int | None = None,
    sample: Callable[[np.random.Generator], Config] = sample_config,
    spec: str | None = SPACE_YAML,
    baselines: list[dict[str, Any]] | None = None,
    t0: float = 1_700_000_000.0,
) -> Path:
    """``n`` configurations run on every budget (or the best 1/``promote`` promoted).

    Runs are scheduled on ``workers`` slots back to back, each lasting its budget; a
    loss of None (or NaN) from ``loss`` makes a failed run. The second half of the
    configurations are marked model-based picks.
    """
    rng = np.random.default_rng(seed)
    configs = [((0, 0, k), sample(rng), {"model_based_pick": k >= n // 2}) for k in range(n)]
    free = [t0] * workers
    results = []
    alive = list(range(n))
    for budget in budgets:
        scored = []
        for k in alive:
            value = loss(configs[k][1], budget, rng)
            slot = int(np.argmin(free))
            start, end = free[slot], free[slot] + budget
            free[slot] = end
            ok = value is not None and math.isfinite(value)
            info = trainer_record(value if ok else None, budget, "ok" if ok else "diverged")
            results.append(result_line(configs[k][0], budget, value, start, end, info))
            scored.append((value if ok else math.inf, k))
        if promote:
            alive = [k for _, k in sorted(scored)[: max(1, len(scored) // promote)]]
    return write_search(folder, configs, results, spec=spec, baselines=baselines)
