"""The live progress view of ``nas-bohb search``, and the summaries it prints.

On a terminal a small block (brackets, running trials, best so far) is redrawn in place
under the scrolling log; elsewhere (CI logs, pipes) a plain progress line is printed
whenever something changed. Log records go through :class:`ViewHandler` so the block
never tears a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from controller.engine.types import Incumbent, Progress

if TYPE_CHECKING:
    from controller.local.executor import LocalExecutor, RunningTrial


def duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``; ``4000`` -> ``"1h06m"``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def incumbent_line(incumbent: Incumbent | None) -> str:
    if incumbent is None:
        return "no successful trial yet"
    test = f", test error {incumbent.test_error:.4f}" if incumbent.test_error is not None else ""
    return (f"{incumbent.config_id} at {incumbent.budget:g} s: validation error "
            f"{incumbent.loss:.4f}{test}")


def bracket_lines(progress: Progress) -> list[str]:
    lines = []
    for b in progress.active_brackets:
        rungs = []
        for r in b.rungs:
            running = f" ({r.running} running)" if r.running else ""
            rungs.append(f"{r.budget:g} s {r.done}/{r.total}{running}")
        lines.append(f"iteration {b.iteration} (bracket {b.bracket}): " + " | ".join(rungs))
    return lines


def headline(name: str, progress: Progress) -> str:
    planned = progress.iterations_planned
    iterations = (f"{progress.iterations_done}/{planned} iterations" if planned is not None
                  else f"{progress.iterations_done} iterations")
    return (f"search {name}: {progress.condition.type.lower()}, {iterations} done, "
            f"{progress.trials_finished} trials finished ({progress.trials_failed} failed), "
            f"{len(progress.running)} running, {duration(progress.elapsed_seconds)} elapsed")


def running_line(running: list[RunningTrial], now: float) -> str:
    if not running:
        return "running: none"
    parts = [f"{r.trial_id} ({r.budget:g} s budget, {duration(now - r.started_at)} so far)"
             for r in running]
    return "running: " + ", ".join(parts)


class LiveView:
    """Redraws a status block on a TTY; prints a line per change elsewhere."""

    def __init__(self, stream: TextIO, name: str, tty: bool | None = None) -> None:
        self.stream = stream
        self.name = name
        self.tty = stream.isatty() if tty is None else tty
        self._drawn = 0
        self._block: list[str] = []
        self._last_plain = ""
        self._last_plain_time = 0.0
        self._lock = threading.RLock()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if self.tty and self._block:
            self.stream.write("\n".join(self._block) + "\n")
            self._drawn = len(self._block)
        self.stream.flush()

    def write_log(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            self._draw()

    def update(self, executor: LocalExecutor) -> None:
        progress = executor.progress()
        if self.tty:
            block = [headline(self.name, progress), *bracket_lines(progress),
                     running_line(executor.running(), time.time()),
                     "best so far: " + incumbent_line(progress.incumbent)]
            with self._lock:
                self._clear()
                self._block = block
                self._draw()
            return
        # Without a terminal: a line when the best or the iteration count changes, and at
        # most every minute otherwise, so logs stay readable.
        key = f"{progress.iterations_done} {incumbent_line(progress.incumbent)}"
        now = time.monotonic()
        if key != self._last_plain or now - self._last_plain_time >= 60:
            self._last_plain, self._last_plain_time = key, now
            self.write_log(headline(self.name, progress) + "; best "
                           + incumbent_line(progress.incumbent))

    def close(self) -> None:
        with self._lock:
            self._clear()
            self._block = []
            self.stream.flush()


class ViewHandler(logging.Handler):
    """A logging handler that writes through a :class:`LiveView`."""

    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.view.write_log(self.format(record))
        except Exception:  # Logging must never raise into the search.
            self.handleError(record)


def summary_lines(name: str, progress: Progress, baselines: list[dict[str, Any]],
                  run_dir: str) -> list[str]:
    """The final summary: outcome, incumbent with its errors and configuration, budget."""
    c = progress.condition
    lines = [
        f"Search {name} {c.type.lower()} ({c.reason}): {c.message}.",
        f"Trials: {progress.trials_finished} finished, {progress.trials_failed} failed, "
        f"{progress.releases} re-run after infrastructure failures, "
        f"{progress.abandoned} abandoned; {progress.iterations_done} iterations done.",
        f"Budget spent: {progress.budget_spent_seconds:,.0f} budget seconds "
        f"({progress.train_seconds:,.0f} s measured training) in "
        f"{duration(progress.elapsed_seconds)} of search time.",
    ]
    inc = progress.incumbent
    if inc is None:
        lines.append("Incumbent: none (no trial succeeded).")
    else:
        test = f"{inc.test_error:.4f}" if inc.test_error is not None else "n/a"
        lines.append(f"Incumbent: configuration {inc.config_id} (trial {inc.trial_id}) at "
                     f"{inc.budget:g} s: validation error {inc.loss:.4f}, test error {test}.")
        width = max(len(k) for k in inc.config)
        for key, value in inc.config.items():
            shown = f"{value:.6g}" if isinstance(value, float) else str(value)
            lines.append(f"  {key:<{width}}  {shown}")
    for b in baselines:
        record = b.get("record") or {}
        if b.get("status") == "ok":
            lines.append(f"Baseline {b['name']} at {b['budget']:g} s: validation error "
                         f"{record.get('validation_error', float('nan')):.4f}, test error "
                         f"{record.get('test_error', float('nan')):.4f}.")
        else:
            lines.append(f"Baseline {b['name']}: {b.get('status')} ({b.get('message')}).")
    lines.append(f"Run directory: {run_dir} (ledger.jsonl, configs.json, results.json, "
                 "trials/).")
    return lines
