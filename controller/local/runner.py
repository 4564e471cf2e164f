"""Trials as trainer subprocesses: start, watch, time out, kill and re-attach.

Each trial gets a folder ``trials/<trial id>/`` in the run directory holding
``config.json`` (the 17 parameters), ``request.json`` (the engine's request),
``process.json`` (pid, attempt, start time, deadline, command), ``trainer.log`` (stdout
and stderr of every attempt, appended) and, once the trainer is done, ``result.json``.

Trainers start in their own session (process group). A ``kill -9`` of the controller
therefore leaves them running; the next controller finds them through ``process.json``
and watches them to the end instead of starting them again. A trainer is judged by how
it ended (see ``docs/architecture.md`` for its exit codes):

========================================  ==============================================
exit 0 with a record                      the record's status (ok, diverged, out of memory,
                                          error)
exit 0 without a readable record, exit 1  crashed (loss +inf for the model)
exit 2                                    invalid_config (loss +inf; logged as an error)
killed by us after its deadline           overrun (loss +inf)
killed by a signal not sent by us         released: an infrastructure failure, retried
re-attached process gone, no record       released
========================================  ==============================================

The deadline is ``budget x overrunFactor + startupAllowanceSeconds`` of wall time.

.. note::
   The kernel's out-of-memory killer sends SIGKILL, which looks like an outside kill: such
   a trial is retried and, after the engine's attempt limit, abandoned (not shown to the
   model). A trainer exit 1 caused by a failed dataset download also counts as a crash.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller.engine import TrialOutcome, TrialRequest
from controller.local.devices import Slot
from controller.spec import SearchSpec

logger = logging.getLogger(__name__)

# Seconds between SIGTERM and SIGKILL when we stop a trainer.
_KILL_GRACE = 10.0
# How often a re-attached process (not our child) is checked.
_ADOPTED_POLL = 0.5
_LOG_TAIL = 1500


@dataclass(frozen=True)
class Verdict:
    """How a trial ended: an outcome for the engine, or a reason to release it."""

    trial_id: str
    attempt: int
    outcome: TrialOutcome | None = None
    release_reason: str | None = None
    counts: bool = True  # Whether a release counts towards abandoning the trial.


@dataclass(frozen=True)
class DataSource:
    """What the trainer is told about the dataset."""

    data: str | None = None
    md5: str | None = None
    cache_dir: str | None = None


class TrialHandle:
    """A running trainer, our child or adopted after a restart."""

    def __init__(self, request: TrialRequest, slot: Slot, pid: int, started_at: float,
                 deadline: float, popen: subprocess.Popen[bytes] | None) -> None:
        self.request = request
        self.slot = slot
        self.pid = pid
        self.started_at = started_at
        self.deadline = deadline
        self.popen = popen
        self.stop_reason: str | None = None  # "overrun" or a shutdown reason, once we kill it
        self.lock = threading.Lock()

    @property
    def trial_id(self) -> str:
        return self.request.trial_id

    @property
    def adopted(self) -> bool:
        return self.popen is None


def trial_dir(run_dir: Path, trial_id: str) -> Path:
    return run_dir / "trials" / trial_id


def write_json_atomic(path: Path, payload: Any) -> None:
    """Strict JSON to a temporary file, fsync'd, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _LOG_TAIL))
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` still runs the trainer whose command line contains ``marker``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                return False  # A zombie: finished, waiting for a parent that is gone.
            return marker in (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
    return True


def _find(marker: str) -> int | None:
    """A live process whose command line contains ``marker`` (Linux ``/proc``), if any."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace") and \
                        _alive(int(entry.name), marker):
                    return int(entry.name)
            except OSError:
                continue
    return None


class SubprocessRunner:
    """Starts trainers as subprocesses and reports each one's :class:`Verdict`."""

    def __init__(self, spec: SearchSpec, run_dir: Path, data: DataSource,
                 notify: Callable[[Verdict], None]) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.data = data
        self.notify = notify
        self.handles: dict[str, TrialHandle] = {}
        self._lock = threading.Lock()

    # --- starting ----------------------------------------------------------------------

    def command(self, request: TrialRequest, slot: Slot, folder: Path) -> list[str]:
        trainer = self.spec.trainer
        base = list(trainer.command) if trainer.command else [sys.executable, "-m", "trainer"]
        args = [
            "--config", str(folder / "config.json"),
            "--budget", f"{request.budget:g}",
            "--output", str(folder / "result.json"),
            "--seed", str(request.seed),
            "--device", slot.device,
            "--threads", str(slot.threads),
        ]
        if self.data.data:
            args += ["--data", self.data.data]
        if self.data.md5:
            args += ["--data-md5", self.data.md5]
        if self.data.cache_dir:
            args += ["--cache-dir", self.data.cache_dir]
        return base + args + list(trainer.extra_args)

    def timeout(self, budget: float) -> float:
        trainer = self.spec.trainer
        return budget * trainer.overrun_factor + trainer.startup_allowance_seconds

    def start(self, request: TrialRequest, slot: Slot) -> TrialHandle:
        """Launch the trainer for ``request`` on ``slot`` and watch it in a thread."""
        folder = trial_dir(self.run_dir, request.trial_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").unlink(missing_ok=True)  # A stale record is not this attempt's.
        write_json_atomic(folder / "config.json", request.config)
        write_json_atomic(folder / "request.json", asdict(request))
        command = self.command(request, slot, folder)
        env = {**os.environ, **slot.env}
        started_at = time.time()
        deadline = started_at + self.timeout(request.budget)
        with open(folder / "trainer.log", "ab") as log:
            log.write(f"--- attempt {request.attempt} on {slot.describe()}: "
                      f"{' '.join(command)}\n".encode())
            log.flush()
            popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        write_json_atomic(folder / "process.json", {
            "pid": popen.pid, "attempt": request.attempt, "slot": slot.index,
            "started_at": started_at, "deadline": deadline, "command": command,
        })
        handle = TrialHandle(request, slot, popen.pid, started_at, deadline, popen)
        with self._lock:
            self.handles[request.trial_id] = handle
        threading.Thread(target=self._watch_child, args=(handle,), daemon=True,
                         name=f"watch-{request.trial_id}").start()
        logger.debug("Trial %s: trainer pid %d started on %s.", request.trial_id, popen.pid,
                     slot.describe())
        return handle

    # --- re-attaching ------------------------------------------------------------------

    def reattach(self, request: TrialRequest, slots: list[Slot]) -> TrialHandle | Verdict:
        """After a restart: a finished record, a live trainer to watch, or a release."""
        folder = trial_dir(self.run_dir, request.trial_id)
        record = _read_record(folder / "result.json")
        if record is not None:
            return Verdict(request.trial_id, request.attempt, TrialOutcome.from_record(record))
        info = _read_record(folder / "process.json")
        marker = str(folder / "result.json")
        if info is None or info.get("attempt") != request.attempt:
            # The controller died between starting the trainer and noting its pid, or before
            # starting it at all: look for the trainer by its command line.
            pid = _find(marker)
            if pid is None:
                return Verdict(request.trial_id, request.attempt, release_reason=(
                    "the controller stopped before the trainer started"), counts=False)
            now = time.time()
            info = {"pid": pid, "slot": 0, "started_at": now,
                    "deadline": now + self.timeout(request.budget)}
        pid = int(info["pid"])
        if not _alive(pid, marker):
            # It may have written its record between the two checks above.
            record = _read_record(folder / "result.json")
            if record is not None:
                return Verdict(request.trial_id, request.attempt,
                               TrialOutcome.from_record(record))
            return Verdict(request.trial_id, request.attempt, release_reason=(
                "the trainer ended while the controller was down and left no record"))
        index = int(info.get("slot", 0))
        slot = slots[index] if 0 <= index < len(slots) else slots[0]
        handle = TrialHandle(request, slot, pid, float(info["started_at"]),
                             float(info["deadline"]), None)
        with self._lock:
            self.handles[request.trial_id] = handle
        threading.Thread(target=self._watch_adopted, args=(handle,), daemon=True,
                         name=f"adopt-{request.trial_id}").start()
        logger.info("Trial %s at %g s: re-attached to its running trainer (pid %d).",
                    request.trial_id, request.budget, pid)
        return handle

    # --- stopping ----------------------------------------------------------------------

    def kill(self, handle: TrialHandle, reason: str) -> None:
        """Stop a trainer's whole process group: SIGTERM, then SIGKILL after a grace."""
        with handle.lock:
            if handle.stop_reason is None:
                handle.stop_reason = reason
        threading.Thread(target=self._terminate, args=(handle,), daemon=True).start()

    def _terminate(self, handle: TrialHandle) -> None:
        for sig, wait in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(handle.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if not self._running(handle):
                    return
                time.sleep(0.1)

    def _running(self, handle: TrialHandle) -> bool:
        if handle.popen is not None:
            return handle.popen.poll() is None
        folder = trial_dir(self.run_dir, handle.trial_id)
        return _alive(handle.pid, str(folder / "result.json"))

    def stop_all(self, reason: str) -> None:
        with self._lock:
            handles = list(self.handles.values())
        for handle in handles:
            self.kill(handle, reason)

    # --- watching ----------------------------------------------------------------------

    def _watch_child(self, handle: TrialHandle) -> None:
        assert handle.popen is not None
        try:
            code = handle.popen.wait(timeout=max(0.05, handle.deadline - time.time()))
        except subprocess.TimeoutExpired:
            logger.warning("Trial %s at %g s overran its deadline of %.0f s; killing it.",
                           handle.trial_id, handle.request.budget,
                           handle.deadline - handle.started_at)
            self.kill(handle, "overrun")
            code = handle.popen.wait()
        self._finish(handle, code)

    def _watch_adopted(self, handle: TrialHandle) -> None:
        while self._running(handle):
            if time.time() > handle.deadline and handle.stop_reason is None:
                logger.warning("Trial %s at %g s overran its deadline; killing it.",
                               handle.trial_id, handle.request.budget)
                self.kill(handle, "overrun")
            time.sleep(_ADOPTED_POLL)
        self._finish(handle, None)

    def _finish(self, handle: TrialHandle, code: int | None) -> None:
        with self._lock:
            self.handles.pop(handle.trial_id, None)
        self.notify(self.judge(handle, code))

    def judge(self, handle: TrialHandle, code: int | None) -> Verdict:
        """The verdict for a trainer that ended with ``code`` (``None``: not our child)."""
        request = handle.request
        folder = trial_dir(self.run_dir, request.trial_id)
        record = _read_record(folder / "result.json")
        reason = handle.stop_reason

        def verdict(outcome: TrialOutcome | None = None, release: str | None = None) -> Verdict:
            return Verdict(request.trial_id, request.attempt, outcome, release)

        if reason == "overrun":
            return verdict(TrialOutcome.failure(
                "overrun", f"still running {self.timeout(request.budget):.0f} s after its "
                f"start (budget {request.budget:g} s); killed", record))
        if reason is not None and record is None:
            # We stopped it (the search was interrupted): not the trial's fault.
            return Verdict(request.trial_id, request.attempt, release_reason=reason,
                           counts=False)
        if record is not None and code in (0, None):
            return verdict(TrialOutcome.from_record(record))
        log_tail = _tail(folder / "trainer.log")
        if code is None:
            return verdict(release="the re-attached trainer ended without a record")
        if code == 0:
            return verdict(TrialOutcome.failure("crashed", "exit 0 without a readable record"))
        if code == 2:
            logger.error("Trial %s: the trainer refused its arguments: %s", request.trial_id,
                         _last_line(log_tail))
            return verdict(TrialOutcome.failure("invalid_config", _last_line(log_tail)))
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ \
                else str(-code)
            return verdict(release=f"killed from outside by {name}")
        return verdict(TrialOutcome.failure(
            "crashed", f"exit code {code}: {_last_line(log_tail) or 'no output'}"))
