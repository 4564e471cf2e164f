"""The incumbent against hand-designed baselines trained by the same pipeline.

Zela et al. (2018) compare the best network found with ResNet-18 and Shake-Shake
variants trained by the same pipeline for the same time, by parameter count, validation
and test error. A nas-bohb search names such baselines in its spec and records their
training in ``baselines.json``; this module puts them in one table with the incumbent.

.. note::
   The incumbent is the best run on the largest budget (see
   :func:`controller.analysis.trajectory.best_run`); baselines may have been trained on a
   different budget, shown in the table. Errors come from the trainer record (``info``);
   for runs written by other tools without ``validation_error``, the loss stands in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.analysis import load

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One line of the comparison table; errors are fractions in [0, 1] or None."""

    name: str
    kind: str  # "incumbent" or "baseline"
    budget: float | None
    n_params: int | None
    validation_error: float | None
    test_error: float | None
    train_seconds: float | None
    status: str
    config: Mapping[str, Any] = field(default_factory=dict)


def _num(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    # Booleans are ints to Python but never a measurement here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def comparison_rows(
    search: load.Search, incumbent: load.Run | None, notes: list[str]
) -> list[Row]:
    """The incumbent first, then every baseline in the order of ``baselines.json``."""
    rows: list[Row] = []
    # The incumbent's numbers come from its own trainer record, like the baselines'.
    if incumbent is not None:
        info = incumbent.info
        config = search.configs.get(incumbent.config_id)
        n_params = _num(info, "n_params")
        val = _num(info, "validation_error")
        rows.append(Row(
            name=f"incumbent {incumbent.config_id}", kind="incumbent", budget=incumbent.budget,
            n_params=None if n_params is None else int(n_params),
            validation_error=val if val is not None else incumbent.loss,
            test_error=_num(info, "test_error"), train_seconds=_num(info, "train_seconds"),
            status=incumbent.status, config=dict(config.values) if config else {},
        ))

    # A baseline not trained yet still gets a row, so the table shows what is missing.
    for baseline in search.baselines:
        record = baseline.record or {}
        n_params = _num(record, "n_params")
        status = record.get("status") if isinstance(record.get("status"), str) else None
        rows.append(Row(
            name=baseline.name, kind="baseline",
            budget=baseline.budget if baseline.budget is not None
            else _num(record, "budget_seconds"),
            n_params=None if n_params is None else int(n_params),
            validation_error=_num(record, "validation_error"),
            test_error=_num(record, "test_error"), train_seconds=_num(record, "train_seconds"),
            status=status or ("not run" if baseline.record is None else "unknown"),
            config=dict(baseline.config),
        ))
        if baseline.record is None:
            notes.append(f"Baseline {baseline.name!r} has no training record yet.")

    if not search.baselines:
        notes.append(
            "No baselines.json in the source: the comparison shows the incumbent alone "
            "(name baselines in the search spec to train them by the same pipeline)."
        )
    return rows
