"""The local executor: runs a search's trials as trainer processes on this machine.

It is the engine's simplest driver. One loop fills free slots with ``next_trial()`` and
waits on a queue that receives two kinds of news: a trainer ended (from the runner's
watcher threads) and the sampler has a new proposal (the engine's ``on_ready``). Nothing
in the loop blocks on the model or on a process, so a free slot is refilled as soon as
the engine has something for it.

The run directory holds the ledger (``ledger.jsonl``, the source of truth), one folder
per trial, hpbandster's ``configs.json``/``results.json``, ``baselines.json`` and
``search.log``. Starting the same command again continues the search: the engine replays
the ledger, and trials that were running are re-attached (their trainer survived) or
issued again. A lock file keeps two controllers off one directory.

.. note::
   Ctrl-C (SIGINT) or SIGTERM stops the trainers and exits; their trials run again on the
   next start. ``kill -9`` of the controller leaves trainers running, to be re-attached.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.engine import Engine, JsonlLedger, Progress, TrialRequest, hpbandster_io
from controller.local.devices import Slot
from controller.local.runner import Verdict, write_json_atomic
from controller.spec import SearchSpec

logger = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = ".lock"
# Seconds between rewrites of the derived result files (hpbandster's, baselines.json).
_FILES_EVERY = 2.0


class RunDirectoryBusy(RuntimeError):
    """Another controller holds the run directory."""


class Runner(Protocol):
    """Starts trials and reports verdicts through the callback it was built with."""

    def start(self, request: TrialRequest, slot: Slot) -> Any: ...

    def reattach(self, request: TrialRequest, slots: list[Slot]) -> Any: ...

    def stop_all(self, reason: str) -> None: ...


@dataclass(frozen=True)
class RunningTrial:
    """What a progress view shows about a running trial."""

    trial_id: str
    budget: float
    started_at: float
    where: str


class _Stop:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Ready:
    pass


class RunLock:
    """An exclusive ``flock`` on the run directory's lock file, holding our pid."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryBusy(f"{self.path.parent} is in use by another nas-bohb "
                                   f"process (pid {holder(self.path.parent) or '?'})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder(run_dir: Path) -> int | None:
    """The pid of the controller holding ``run_dir``, or ``None`` if none does."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = path.read_text().strip()
        return int(text) if text.isdigit() else -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class LocalExecutor:
    """Drives an :class:`Engine` with a :class:`Runner` over a fixed set of slots."""

    def __init__(self, spec: SearchSpec, run_dir: Path, slots: list[Slot],
                 make_runner: Callable[[Callable[[Verdict], None]], Runner], *,
                 prefetch: bool = True, on_progress: Callable[[LocalExecutor], None] | None
                 = None, tick_seconds: float = 1.0, ledger_fsync: bool = True) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.slots = slots
        self.on_progress = on_progress
        self.tick_seconds = tick_seconds
        self._events: queue.Queue[Verdict | _Stop | _Ready] = queue.Queue()
        self.runner = make_runner(self._events.put)
        self._prefetch = prefetch
        self._ledger_fsync = ledger_fsync
        self._busy: dict[int, str] = {}  # slot index -> trial id
        self._running: dict[str, RunningTrial] = {}
        self._stopping: str | None = None
        self._lock = RunLock(run_dir)
        self.engine: Engine | None = None
        self.dispatch_seconds = 0.0  # Time spent in next_trial/record_result (benchmark).
        self.dispatches = 0

    # --- control from other threads (signal handlers) --------------------------------

    def stop(self, reason: str) -> None:
        """Ask the loop to stop the trainers and return (thread- and signal-safe)."""
        self._events.put(_Stop(reason))

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> Engine:
        """Run the search until it is over or stopped; returns the (closed) engine."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            ledger = JsonlLedger(str(self.run_dir / LEDGER_FILE), fsync=self._ledger_fsync)
            self.engine = Engine(self.spec, ledger, prefetch=self._prefetch,
                                 on_ready=lambda: self._events.put(_Ready()))
            try:
                self._reattach()
                self._write_files()
                self._loop()
            finally:
                self.engine.close()
                ledger.close()
                self._write_files()
            return self.engine
        finally:
            self._lock.release()

    def _reattach(self) -> None:
        assert self.engine is not None
        for request in self.engine.unfinished():
            result = self.runner.reattach(request, self.slots)
            if isinstance(result, Verdict):
                self._apply(result, reattached=True)
            else:
                self._occupy(request, result)

    def _loop(self) -> None:
        assert self.engine is not None
        engine = self.engine
        last_progress = last_files = 0.0
        dirty = False
        while True:
            if self._stopping is None:
                self._fill()
            if not self._running and (self._stopping is not None or engine.finished):
                return
            try:
                event = self._events.get(timeout=self.tick_seconds)
            except queue.Empty:
                event = None
            changed = False
            while event is not None:
                if isinstance(event, Verdict):
                    self._apply(event)
                    changed = True
                elif isinstance(event, _Stop) and self._stopping is None:
                    self._stopping = event.reason
                    logger.warning("Stopping the search (%s); %d running trials will run "
                                   "again on the next start.", event.reason, len(self._running))
                    self.runner.stop_all(event.reason)
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    event = None
            # The result files are derived: rewritten at most every few seconds, and at exit.
            now = time.monotonic()
            dirty = dirty or changed
            if dirty and now - last_files >= _FILES_EVERY:
                self._write_files()
                dirty, last_files = False, now
            if self.on_progress is not None and (changed or now - last_progress >= 1.0):
                last_progress = now
                self.on_progress(self)

    def _fill(self) -> None:
        assert self.engine is not None
        while len(self._busy) < len(self.slots):
            started = time.perf_counter()
            request = self.engine.next_trial()
            self.dispatch_seconds += time.perf_counter() - started
            if request is None:
                return
            self.dispatches += 1
            slot = next(s for s in self.slots if s.index not in self._busy)
            try:
                handle = self.runner.start(request, slot)
            except OSError as exc:
                logger.error("Trial %s could not be started (%s); releasing it.",
                             request.trial_id, exc)
                self.engine.release(request.trial_id, f"could not start: {exc}")
                self.stop(f"trials cannot be started: {exc}")
                return
            self._occupy(request, handle, slot)

    def _occupy(self, request: TrialRequest, handle: Any, slot: Slot | None = None) -> None:
        slot = slot or getattr(handle, "slot", None) or self.slots[0]
        index = slot.index
        if index in self._busy:  # A re-attached trial whose slot is taken: any free one.
            index = next((s.index for s in self.slots if s.index not in self._busy), index)
        self._busy[index] = request.trial_id
        started_at = getattr(handle, "started_at", time.time())
        self._running[request.trial_id] = RunningTrial(request.trial_id, request.budget,
                                                       started_at, slot.describe())

    def _apply(self, verdict: Verdict, reattached: bool = False) -> None:
        assert self.engine is not None
        started = time.perf_counter()
        for index, trial_id in list(self._busy.items()):
            if trial_id == verdict.trial_id:
                del self._busy[index]
        self._running.pop(verdict.trial_id, None)
        if verdict.outcome is not None:
            self.engine.record_result(verdict.trial_id, verdict.outcome)
        else:
            self.engine.release(verdict.trial_id, verdict.release_reason or "unknown",
                                counts=verdict.counts)
        self.dispatch_seconds += time.perf_counter() - started

    # --- outputs -----------------------------------------------------------------------

    def running(self) -> list[RunningTrial]:
        return sorted(self._running.values(), key=lambda r: r.started_at)

    def progress(self) -> Progress:
        assert self.engine is not None
        return self.engine.progress()

    def _write_files(self) -> None:
        if self.engine is None:
            return
        try:
            hpbandster_io.write_files(self.engine, self.run_dir)
            baselines = [
                {"name": r.trial_id.removeprefix("baseline-"), "config": r.config,
                 "budget": r.budget, "record": dict(r.outcome.record or {}) or None,
                 "status": r.outcome.status, "message": r.outcome.message}
                for r in self.engine.baseline_results()
            ]
            if baselines or self.spec.baselines:
                write_json_atomic(self.run_dir / "baselines.json", baselines)
        except (OSError, TypeError, ValueError) as exc:
            logger.error("Could not write the result files in %s: %s", self.run_dir, exc)


def read_baselines(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "baselines.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else []

