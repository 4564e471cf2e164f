"""The shapes the engine hands out and takes back: requests, outcomes, progress.

They are frozen dataclasses of plain Python values, so an executor can serialise them as
they are (the local executor writes them to disk, the operator to a resource status).
:class:`TrialOutcome` also knows how to read the trainer's result record (see
``docs/architecture.md``), the one format both executors receive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

TrialKind = Literal["bohb", "baseline"]
OutcomeStatus = Literal[
    "ok", "diverged", "out_of_memory", "error", "crashed", "overrun", "invalid_config",
    "abandoned",
]
_TRAINER_STATUSES = ("ok", "diverged", "out_of_memory", "error")
_FAILURE_STATUSES = ("diverged", "out_of_memory", "error", "crashed", "overrun",
                     "invalid_config", "abandoned")


@dataclass(frozen=True)
class Proposal:
    """A configuration proposed by BOHB's model: ConfigSpace values, plain Python types.

    Defined here, not next to the model, so that code handling proposals (the sampler, a
    model process's parent) never loads the model's libraries.
    """

    values: dict[str, int | float]
    model_based: bool


@dataclass(frozen=True)
class TrialRequest:
    """One trial to run: a configuration at a budget, with everything the trainer needs."""

    trial_id: str
    config_id: str | None
    kind: TrialKind
    iteration: int
    bracket: int
    budget: float
    budget_index: int
    attempt: int
    config: dict[str, int | float]
    seed: int


def _finite_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended. ``loss`` is what BOHB's model sees."""

    status: OutcomeStatus
    validation_error: float | None = None
    test_error: float | None = None
    message: str = ""
    record: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.validation_error is not None

    @property
    def loss(self) -> float:
        """Validation error for a successful run, ``+inf`` for any failed one (as in BOHB)."""
        if self.ok and self.validation_error is not None:
            return self.validation_error
        return math.inf

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrialOutcome:
        """Read a trainer result record; a malformed one is a crashed run."""
        status = record.get("status")
        if status not in _TRAINER_STATUSES:
            return cls("crashed", message=f"result record has an unknown status {status!r}",
                       record=dict(record))
        validation = _finite_or_none(record.get("validation_error"))
        if status == "ok" and validation is None:
            return cls("crashed", message="result record says ok but has no finite "
                       "validation_error", record=dict(record))
        message = record.get("message")
        return cls(
            status=status,
            validation_error=validation if status == "ok" else None,
            test_error=_finite_or_none(record.get("test_error")) if status == "ok" else None,
            message=message if isinstance(message, str) else "",
            record=dict(record),
        )

    @classmethod
    def failure(cls, status: OutcomeStatus, message: str,
                record: Mapping[str, Any] | None = None) -> TrialOutcome:
        """A run that ended without a usable record (crash, overrun, invalid config)."""
        if status not in _FAILURE_STATUSES:
            raise ValueError(f"{status!r} is not a failure status")
        return cls(status, message=message, record=dict(record) if record else None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "validation_error": self.validation_error,
            "test_error": self.test_error,
            "message": self.message,
            "record": dict(self.record) if self.record is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialOutcome:
        return cls(
            status=data["status"],
            validation_error=data.get("validation_error"),
            test_error=data.get("test_error"),
            message=data.get("message") or "",
            record=data.get("record"),
        )


@dataclass(frozen=True)
class Condition:
    """The search's state, in Katib's vocabulary: Running, Succeeded or Failed."""

    type: Literal["Running", "Succeeded", "Failed"]
    reason: str
    message: str


@dataclass(frozen=True)
class TrialResult:
    """A finished trial as the engine recorded it."""

    trial_id: str
    config_id: str | None
    kind: TrialKind
    iteration: int
    budget: float
    budget_index: int
    attempt: int
    config: dict[str, int | float]
    outcome: TrialOutcome
    submitted: float
    started: float
    finished: float


@dataclass(frozen=True)
class Incumbent:
    """The best configuration so far: lowest loss on the largest budget with a result."""

    config_id: str
    trial_id: str
    budget: float
    loss: float
    test_error: float | None
    config: dict[str, int | float]


@dataclass(frozen=True)
class RungProgress:
    budget: float
    total: int
    done: int
    running: int


@dataclass(frozen=True)
class BracketProgress:
    iteration: int
    bracket: int
    rung: int
    rungs: tuple[RungProgress, ...]


@dataclass(frozen=True)
class Progress:
    """A summary for progress views and status fields (all plain values)."""

    condition: Condition
    iterations_planned: int | None
    iterations_started: int
    iterations_done: int
    active_brackets: tuple[BracketProgress, ...]
    running: tuple[str, ...]
    trials_started: int
    trials_finished: int
    trials_failed: int
    releases: int
    abandoned: int
    baselines_done: int
    baselines_total: int
    incumbent: Incumbent | None
    budget_spent_seconds: float
    train_seconds: float
    elapsed_seconds: float
    model_budgets: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
