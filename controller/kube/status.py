"""The ``JointSearch`` status: its layout, what trainers may write into it, and patches.

Layout (all camelCase, never NaN or infinity)::

    status:
      phase: Pending | Running | Succeeded | Failed
      reason, message, observedGeneration, startedAt, completedAt
      conditions: [{type: Running|Succeeded|Failed|Invalid, status, reason, message,
                    lastTransitionTime}]
      trialsTotal, trialsDone, trialsRunning, trialsSucceeded, trialsFailed, progress ("7/21")
      bestLoss                       # the incumbent's validation error
      incumbent: {configId, trialId, budget, validationError, testError, config}
      parallelTrialCount, ledger: {configMaps, events}
      results:                       # one line per finished trial, the latest 200 and the
                                     # incumbent's (resultsOmitted counts the others)
        "0-0-3-b1": "Succeeded outcome=ok budget=1200 val=0.0912 test=0.0955 train=1201.3
                     dispatch=0.214"
        "0-0-4-b0": "Failed outcome=crashed budget=400 dispatch=0.180 message=the trainer
                     exited with code 1 (Error): ..."
      active:                        # one line per trial that has not ended
        "1-0-2-b0": "Running budget=400 attempt=1 progress=45% dispatch=0.102"
      trials:                        # the trainers' inbox: each pod merge-patches its own
        "1-0-2-b0":                  # entry; the operator reads and then removes it
          progress: {epoch, trainSeconds, budgetSeconds, trainLoss, lr, validationError}
          result: {...}              # the trainer's record, moved into the ledger

Why lines of text: every write of a custom resource costs the API server time in
proportion to the number of fields it holds (it decodes, validates and tracks the owner
of each one). Measured on the 1.20 test cluster, a one-field patch of a status holding
1,000 finished trials took about 970 ms when each trial was a mapping of eight fields,
and 60 ms when each was one string (6 ms for an empty status). The full record of every
trial is in the ledger ConfigMaps (:mod:`.ledger`, :mod:`.export`); here it is a summary
that :func:`parse_line` reads back, and a 1,000-trial search needs about 100 KB.

Trainer pods write with JSON merge patches on ``status.trials.<trialId>``. RBAC limits
them to their own search, not to their own entry, so everything read from the inbox is
checked here before the operator believes it (:func:`parse_result`,
:func:`parse_progress`); anything wrong is reported as a :class:`ReportProblem` and
ignored with an Event. A trainer also leaves its result in its container's termination
message (``{"trialId": ..., "result": {...}}``), which the operator reads from the pod
of a Job that ended without a result in the status; :func:`parse_termination_message`
checks it the same way.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

#: Trainer record statuses (``docs/architecture.md``).
RECORD_STATUSES: Final = ("ok", "diverged", "out_of_memory", "error")
#: Keys of a trial entry that trainer pods write; the rest belong to the operator.
TRAINER_KEYS: Final = ("progress", "result")
#: Keys of a trial entry the operator writes.
OPERATOR_KEYS: Final = (
    "configId", "budget", "attempt", "phase", "job", "outcome", "validationError",
    "testError", "trainSeconds", "dispatchSeconds", "message",
)

#: The most of a container's termination message the kubelet keeps, in bytes.
MAX_TERMINATION_MESSAGE_BYTES: Final = 4096

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
RETRYING, CANCELLED = "Retrying", "Cancelled"
TERMINAL_PHASES: Final = (SUCCEEDED, FAILED)


def now_iso() -> str:
    """The current UTC time as Kubernetes writes it (``2024-05-01T12:00:00Z``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``, tuples as lists, numpy as Python."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        return json_safe(item())
    return str(value)


def finite_or_none(value: Any, digits: int = 6) -> float | None:
    """A rounded finite float, or ``None`` for anything else (NaN, inf, strings, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(float(value), digits) if math.isfinite(value) else None


def fingerprint(value: Any) -> str:
    """A short, stable hash of a JSON value (to recognise a result seen before)."""
    text = json.dumps(json_safe(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


# --- what trainers write ------------------------------------------------------------------


@dataclass(frozen=True)
class ReportProblem:
    """Why something a trainer wrote was not believed."""

    reason: str
    message: str


@dataclass(frozen=True)
class ReportedResult:
    """A checked trainer result: the record, its attempt (if given) and a fingerprint."""

    record: dict[str, Any]
    attempt: int | None
    fingerprint: str
    reported_at: float | None

    @property
    def status(self) -> str:
        return str(self.record["status"])

    @property
    def validation_error(self) -> float | None:
        return finite_or_none(self.record.get("validation_error"))

    @property
    def test_error(self) -> float | None:
        return finite_or_none(self.record.get("test_error"))


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(
        value)


def _attempt_of(raw: Mapping[str, Any], where: str) -> int | ReportProblem | None:
    attempt = raw.get("attempt")
    if attempt is None:
        return None
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        return ReportProblem("InvalidReport", f"{where}.attempt must be a positive integer, "
                             f"got {attempt!r}")
    return attempt


def parse_result(raw: Any) -> ReportedResult | ReportProblem:
    """Check a trainer's ``result`` entry against the record contract."""
    if not isinstance(raw, Mapping):
        return ReportProblem("InvalidReport", f"result must be a mapping, got {_kind(raw)}")
    status = raw.get("status")
    if status not in RECORD_STATUSES:
        return ReportProblem("InvalidReport", f"result.status must be one of "
                             f"{', '.join(RECORD_STATUSES)}, got {status!r}")
    for key in ("validation_error", "test_error"):
        value = raw.get(key)
        if value is None:
            continue
        if not _is_number(value) or not 0 <= value <= 1:
            return ReportProblem("InvalidReport",
                                 f"result.{key} must be a fraction in [0, 1] or null, got "
                                 f"{value!r}")
    for key in ("budget_seconds", "train_seconds", "wall_seconds", "epochs", "steps",
                "n_params", "train_loss", "validation_loss", "reported_at"):
        value = raw.get(key)
        if value is not None and not _is_number(value):
            return ReportProblem("InvalidReport",
                                 f"result.{key} must be a number or null, got {value!r}")
    for key, kind in (("config", Mapping), ("learning_curve", list), ("message", str)):
        value = raw.get(key)
        if value is not None and not isinstance(value, kind):
            return ReportProblem("InvalidReport", f"result.{key} has the wrong type "
                                 f"({_kind(value)})")
    attempt = _attempt_of(raw, "result")
    if isinstance(attempt, ReportProblem):
        return attempt
    record = json_safe(dict(raw))
    reported = raw.get("reported_at")
    stamp = float(reported) if isinstance(reported, (int, float)) and _is_number(
        reported) else None
    return ReportedResult(record=record, attempt=attempt, fingerprint=fingerprint(record),
                          reported_at=stamp)


def parse_termination_message(text: Any, trial_id: str
                              ) -> ReportedResult | ReportProblem | None:
    """Check a trainer's termination message, ``{"trialId": ..., "result": {...}}``.

    ``None`` when ``text`` is no such message at all: empty, or the last lines of a
    failed trainer's log that ``FallbackToLogsOnError`` puts there when the trainer wrote
    nothing; there is nothing to believe and nothing to warn about. A message of that
    form must name ``trial_id``, fit in :data:`MAX_TERMINATION_MESSAGE_BYTES`, and hold a
    result that :func:`parse_result` accepts; otherwise it is a :class:`ReportProblem`.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, Mapping) or "trialId" not in raw:
        return None
    size = len(text.encode())
    if size > MAX_TERMINATION_MESSAGE_BYTES:
        return ReportProblem("InvalidTerminationMessage", f"the termination message has "
                             f"{size} bytes, more than {MAX_TERMINATION_MESSAGE_BYTES}")
    if raw["trialId"] != trial_id:
        return ReportProblem("InvalidTerminationMessage", f"the termination message is for "
                             f"trial {str(raw['trialId'])[:100]!r}")
    result = parse_result(raw.get("result"))
    if isinstance(result, ReportProblem):
        return ReportProblem("InvalidTerminationMessage",
                             f"the termination message's {result.message}")
    return result


@dataclass(frozen=True)
class ReportedProgress:
    """A checked progress entry."""

    fraction: float | None  # trainSeconds / budgetSeconds, when both are known.
    attempt: int | None


def parse_progress(raw: Any) -> ReportedProgress | ReportProblem:
    """Check a trainer's ``progress`` entry (numbers or nulls only)."""
    if not isinstance(raw, Mapping):
        return ReportProblem("InvalidProgress", f"progress must be a mapping, got {_kind(raw)}")
    for key in ("epoch", "trainSeconds", "budgetSeconds", "trainLoss", "lr",
                "validationError", "reportedAt"):
        value = raw.get(key)
        if value is not None and not _is_number(value):
            return ReportProblem("InvalidProgress",
                                 f"progress.{key} must be a number or null, got {value!r}")
    attempt = _attempt_of(raw, "progress")
    if isinstance(attempt, ReportProblem):
        return attempt
    spent, budget = raw.get("trainSeconds"), raw.get("budgetSeconds")
    fraction = None
    if spent is not None and budget:
        fraction = max(0.0, min(1.0, float(spent) / float(budget)))
    return ReportedProgress(fraction=fraction, attempt=attempt)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --- conditions and patches ---------------------------------------------------------------


def with_condition(conditions: list[dict[str, Any]] | None, type_: str, status: bool,
                   reason: str, message: str) -> list[dict[str, Any]]:
    """``conditions`` with one condition set; its transition time moves only on a change."""
    result = [dict(c) for c in conditions or [] if isinstance(c, Mapping)]
    flag = "True" if status else "False"
    for condition in result:
        if condition.get("type") == type_:
            if condition.get("status") != flag:
                condition["lastTransitionTime"] = now_iso()
            condition.update(status=flag, reason=reason, message=message)
            return result
    result.append({"type": type_, "status": flag, "reason": reason, "message": message,
                   "lastTransitionTime": now_iso()})
    return result


def merge_patch(observed: Mapping[str, Any] | None, desired: Mapping[str, Any]
                ) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that makes ``observed`` agree with ``desired``.

    Only keys named in ``desired`` are considered; a ``None`` there deletes the key.
    Mappings are compared key by key, everything else (lists included) as a whole.
    """
    observed = observed or {}
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = observed.get(key)
        if want is None:
            if key in observed:
                patch[key] = None
        elif isinstance(want, Mapping) and isinstance(have, Mapping):
            inner = merge_patch(have, want)
            if inner:
                patch[key] = inner
        elif have != want or key not in observed:
            patch[key] = want
    return patch


# --- the lines of ``results`` and ``active`` ---------------------------------------------


def _num(value: Any, digits: str) -> str | None:
    number = finite_or_none(value)
    return None if number is None else format(number, digits)


def trial_line(entry: Mapping[str, Any], *, progress: float | None = None) -> str:
    """One trial as a line: ``Phase key=value ... [message=free text]``."""
    parts = [str(entry.get("phase") or PENDING)]
    if entry.get("outcome"):
        parts.append(f"outcome={entry['outcome']}")
    budget = _num(entry.get("budget"), "g")
    if budget is not None:
        parts.append(f"budget={budget}")
    if entry.get("attempt") and int(entry["attempt"]) > 1:
        parts.append(f"attempt={int(entry['attempt'])}")
    for key, name, digits in (("validationError", "val", ".6g"), ("testError", "test", ".6g"),
                              ("trainSeconds", "train", ".1f")):
        value = _num(entry.get(key), digits)
        if value is not None:
            parts.append(f"{name}={value}")
    if progress is not None:
        parts.append(f"progress={round(100 * progress)}%")
    dispatch = _num(entry.get("dispatchSeconds"), ".3f")
    if dispatch is not None:
        parts.append(f"dispatch={dispatch}")
    if entry.get("message"):
        parts.append(f"message={' '.join(str(entry['message']).split())[:300]}")
    return " ".join(parts)


def parse_line(line: str) -> dict[str, Any]:
    """A line of :func:`trial_line` back as a mapping (numbers as floats, ``message`` last)."""
    head, _, message = line.partition(" message=")
    tokens = head.split()
    parsed: dict[str, Any] = {"phase": tokens[0] if tokens else ""}
    for token in tokens[1:]:
        key, _, value = token.partition("=")
        if key in ("outcome",):
            parsed[key] = value
        elif key == "progress":
            parsed[key] = float(value.rstrip("%")) / 100
        else:
            try:
                parsed[key] = float(value)
            except ValueError:
                parsed[key] = value
    if message:
        parsed["message"] = message
    return parsed


def status_bytes(status: Mapping[str, Any]) -> int:
    """Size of the status as the API server stores it (compact JSON)."""
    return len(json.dumps(status, separators=(",", ":")))
