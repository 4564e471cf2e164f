"""Keeping BOHB's model off the dispatch path: configurations are sampled ahead.

A model-based proposal costs tens to hundreds of milliseconds (hpbandster draws
``num_samples`` candidates and evaluates two KDEs on each). hpbandster's master samples
when a worker asks, so the worker waits that long every time. Here a background thread
keeps a small buffer of proposals (one per parallel trial) and absorbs finished results
into the model, so :meth:`PrefetchSampler.take` only pops from a list.

Freshness: a buffered proposal may predate the last few results (at most about one per
parallel trial), much as in hpbandster's master with several workers, where proposals
are drawn while other results are in flight; one result among dozens barely moves a
KDE, and re-sampling for every result would spend the model's CPU time where it is
scarcest. A proposal is *stale* only when the model has since gained a KDE on another
budget (notably the first one, which turns prior samples into model-based ones); stale
proposals are replaced one at a time, but still handed out when they are all there is:
a free worker never waits for the model.

:class:`InlineSampler` samples on demand instead, for single-threaded callers and tests
that need reproducible sequences.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from controller.engine.types import Proposal
from controller.space import Value

logger = logging.getLogger(__name__)


class Model(Protocol):
    """BOHB's model, in this process (:class:`~controller.engine.model.BohbModel`) or in a
    child process (:class:`~controller.engine.model_server.ModelProcess`)."""

    observations: int

    @property
    def model_budgets(self) -> list[float]: ...

    def observe(self, values: Mapping[str, Value], budget: float, loss: float) -> None: ...

    def propose(self) -> Proposal: ...

    def reseed(self, seed: int) -> None: ...


class Sampler(Protocol):
    """Hands out proposals and feeds results to the model."""

    def take(self) -> Proposal | None: ...

    def observe(self, values: Mapping[str, Value], budget: float, loss: float) -> None: ...

    def set_target(self, size: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class SamplerStats:
    """Where the model's time goes (for the overhead benchmark and logs)."""

    proposals: int = 0
    proposal_seconds: float = 0.0
    model_proposals: int = 0
    model_proposal_seconds: float = 0.0
    observations: int = 0
    observe_seconds: float = 0.0
    empty_takes: int = 0
    stale_takes: int = 0

    def proposed(self, proposal: Proposal, seconds: float) -> None:
        self.proposals += 1
        self.proposal_seconds += seconds
        if proposal.model_based:
            self.model_proposals += 1
            self.model_proposal_seconds += seconds


class InlineSampler:
    """Samples in the caller's thread; deterministic for a given seed and call order."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.stats = SamplerStats()

    def take(self) -> Proposal | None:
        started = time.perf_counter()
        proposal = self.model.propose()
        self.stats.proposed(proposal, time.perf_counter() - started)
        return proposal

    def observe(self, values: Mapping[str, Value], budget: float, loss: float) -> None:
        started = time.perf_counter()
        self.model.observe(values, budget, loss)
        self.stats.observations += 1
        self.stats.observe_seconds += time.perf_counter() - started

    def set_target(self, size: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _Buffered:
    proposal: Proposal
    level: int  # How many budgets had a KDE when it was drawn.


class PrefetchSampler:
    """A background thread that owns the model, absorbs results and samples ahead."""

    def __init__(self, model: Model, target: int = 1,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.model = model
        self.stats = SamplerStats()
        self._target = max(1, target)
        self._on_ready = on_ready
        self._cond = threading.Condition()
        self._buffer: list[_Buffered] = []
        self._pending: list[tuple[dict[str, Value], float, float]] = []
        self._level = 0
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="bohb-sampler", daemon=True)
        self._thread.start()

    # --- caller side -------------------------------------------------------------------

    def take(self) -> Proposal | None:
        """The freshest buffered proposal, or ``None`` if the buffer is empty."""
        with self._cond:
            if not self._buffer:
                self.stats.empty_takes += 1
                return None
            best = max(range(len(self._buffer)), key=lambda i: self._buffer[i].level)
            item = self._buffer.pop(best)
            if item.level < self._level:
                self.stats.stale_takes += 1
            self._cond.notify_all()
            return item.proposal

    def observe(self, values: Mapping[str, Value], budget: float, loss: float) -> None:
        with self._cond:
            self._pending.append((dict(values), budget, loss))
            self._cond.notify_all()

    def set_target(self, size: int) -> None:
        with self._cond:
            self._target = max(1, size)
            self._cond.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every result is absorbed and the buffer is full and fresh (tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy or self._wants_work_locked():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # --- sampler thread ----------------------------------------------------------------

    def _wants_work_locked(self) -> bool:
        if len(self._buffer) < self._target:
            return True
        return any(item.level < self._level for item in self._buffer)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._pending and not self._wants_work_locked():
                    self._cond.wait()
                if self._stop:
                    return
                pending, self._pending = self._pending, []
                self._busy = True
            try:
                self._work(pending)
            except Exception:  # The model must not die silently; the buffer stays usable.
                logger.exception("The BOHB sampler failed; retrying in a second.")
                time.sleep(1.0)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _work(self, pending: list[tuple[dict[str, Value], float, float]]) -> None:
        # Absorb results first, so the next proposal uses the newest model.
        if pending:
            started = time.perf_counter()
            for values, budget, loss in pending:
                self.model.observe(values, budget, loss)
            self.stats.observations += len(pending)
            self.stats.observe_seconds += time.perf_counter() - started
        with self._cond:
            if self._stop or not self._wants_work_locked():
                return
        started = time.perf_counter()
        proposal = self.model.propose()
        self.stats.proposed(proposal, time.perf_counter() - started)
        level = len(self.model.model_budgets)
        with self._cond:
            self._level = max(self._level, level)
            if len(self._buffer) >= self._target:
                # Replace the stalest proposal rather than growing the buffer.
                oldest = min(range(len(self._buffer)), key=lambda i: self._buffer[i].level)
                self._buffer.pop(oldest)
            self._buffer.append(_Buffered(proposal, level))
            self._cond.notify_all()
        if self._on_ready is not None:
            self._on_ready()
