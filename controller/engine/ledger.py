"""The append-only ledger: every decision of a search, in order, as the source of truth.

The engine never keeps state that the ledger cannot rebuild. Each decision (a
configuration sampled, a trial started, finished or released) is appended *before* the
engine acts on it, so killing the controller at any moment and replaying the ledger
yields the same search: no finished result lost, no trial issued twice.

Storage is pluggable through :class:`Ledger`: :class:`JsonlLedger` is one fsync'd JSON
line per event in a file (the local executor); the Kubernetes operator stores events in
its own objects. Events must be plain JSON (no NaN or infinity, no numpy scalars):
:func:`check_plain` enforces that on every append, so such a value is a loud bug here
rather than an unreadable ledger later.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)


class LedgerError(RuntimeError):
    """A ledger that cannot be read or does not fit the search replaying it."""


@runtime_checkable
class Ledger(Protocol):
    """Where a search's events live; ``append`` is durable when it returns."""

    def append(self, event: Mapping[str, Any]) -> None: ...

    def read_all(self) -> list[dict[str, Any]]: ...


class BatchLedger(Ledger, Protocol):
    """A ledger that can also make several events durable at once (optional)."""

    def append_many(self, events: list[Mapping[str, Any]]) -> None: ...


def check_plain(value: object, path: str = "event") -> None:
    """Raise ``TypeError`` unless ``value`` is plain JSON data made of exact builtin types."""
    kind = type(value)
    if value is None or kind in (str, bool, int):
        return
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise TypeError(f"{path}: non-finite float {value!r} cannot be stored as JSON")
        return
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise TypeError(f"{path}: key {key!r} is {type(key).__name__}, not str")
            check_plain(item, f"{path}.{key}")
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):  # type: ignore[arg-type]
            check_plain(item, f"{path}[{i}]")
        return
    raise TypeError(f"{path}: {value!r} is {kind.__module__}.{kind.__name__}, not a plain "
                    "JSON type")


def encode(event: Mapping[str, Any]) -> str:
    """One event as a compact JSON line (without the newline), after :func:`check_plain`."""
    data = dict(event)
    check_plain(data)
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


class MemoryLedger:
    """A ledger in a list: for tests, benchmarks and callers that persist elsewhere."""

    def __init__(self, events: list[dict[str, Any]] | None = None) -> None:
        self.events: list[dict[str, Any]] = list(events or [])
        self._lock = threading.Lock()

    def append(self, event: Mapping[str, Any]) -> None:
        self.append_many([event])

    def append_many(self, events: list[Mapping[str, Any]]) -> None:
        lines = [encode(event) for event in events]
        with self._lock:
            self.events.extend(json.loads(line) for line in lines)

    def read_all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self.events]


class JsonlLedger:
    """One JSON object per line, appended and fsync'd; a torn last line is dropped.

    A process killed mid-write can leave a last line without its newline. Opening the
    ledger truncates such a tail (after logging it), so the next append starts cleanly.
    A malformed line anywhere else is corruption and raises :class:`LedgerError`.
    """

    def __init__(self, path: str, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._repair()

    def _repair(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as handle:
            data = handle.read()
        end = data.rfind(b"\n") + 1
        if end == len(data):
            return
        tail = data[end:]
        logger.warning("Ledger %s ends with a torn line of %d bytes (a write was "
                       "interrupted); dropping it.", self.path, len(tail))
        with open(self.path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, event: Mapping[str, Any]) -> None:
        self.append_many([event])

    def append_many(self, events: list[Mapping[str, Any]]) -> None:
        """Write the events' lines in one ``write`` and one ``fsync``."""
        data = "".join(encode(event) + "\n" for event in events).encode()
        with self._lock:
            if self._fd is None:
                # O_APPEND makes every write land at the end, even with another writer.
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def read_all(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with self._lock, open(self.path, "rb") as handle:
            data = handle.read()
        lines = data.split(b"\n")
        # Whatever follows the last newline is a torn write (the file is being appended to,
        # or was cut short): not an event yet.
        events: list[dict[str, Any]] = []
        for number, raw in enumerate(lines[:-1], start=1):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise LedgerError(f"{self.path}:{number}: not a JSON line ({exc})") from exc
            if not isinstance(event, dict) or "event" not in event:
                raise LedgerError(f"{self.path}:{number}: not an event object")
            events.append(event)
        return events
