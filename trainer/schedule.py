"""The learning-rate schedule and the clock it runs on: SGDR over measured training seconds.

Zela et al. (2018) anneal the learning rate with SGDR (Loshchilov & Hutter 2017, arXiv
1608.03983): cosine decay from the configuration's ``learning_rate`` to zero, restarted with
periods that double (T_mul = 2). The clock is not epochs but measured training seconds, since
budgets are seconds, and the first period is chosen so that the budget ends exactly at the end
of a cycle. The paper's table for its budgets:

======  ==========================  ======
budget  periods                     cycles
======  ==========================  ======
400     400                         1
1200    400 + 800                   2
3600    514.3 x (1 + 2 + 4)         3
10800   720 x (1 + 2 + 4 + 8)       4
======  ==========================  ======

Rule that reproduces it for any budget: the number of cycles is the largest ``n`` whose first
period ``budget / (2**n - 1)`` is at least ``min_period`` (400 s, the paper's smallest budget),
and at least one. Budgets under ``3 * min_period`` (all CPU demos and tests) get one cycle.

Only training compute counts on the clock; :class:`MeasuredClock` is paused while data loads,
the network is built, warm-up steps run, and the model is evaluated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

PAPER_MIN_PERIOD = 400.0


def sgdr_cycles(budget: float, min_period: float = PAPER_MIN_PERIOD) -> int:
    """The number of SGDR cycles for ``budget`` seconds (see the module's table)."""
    if not (budget > 0 and min_period > 0):
        raise ValueError(f"budget and min_period must be positive, got {budget}, {min_period}")
    n = 1
    # Relative slack so that 1200 / 3 == 400 counts as "at least 400" despite rounding.
    while budget / (2 ** (n + 1) - 1) >= min_period * (1 - 1e-9):
        n += 1
    return n


@dataclass(frozen=True)
class SGDR:
    """Cosine annealing with warm restarts, T_mul = 2, ending at ``budget`` seconds."""

    base_lr: float
    budget: float
    min_period: float = PAPER_MIN_PERIOD
    eta_min: float = 0.0

    @property
    def cycles(self) -> int:
        return sgdr_cycles(self.budget, self.min_period)

    @property
    def first_period(self) -> float:
        return self.budget / (2**self.cycles - 1)

    def periods(self) -> list[float]:
        """The cycle lengths in seconds; they sum to the budget."""
        return [self.first_period * 2**i for i in range(self.cycles)]

    def lr(self, seconds: float) -> float:
        """The learning rate after ``seconds`` of training (clamped to ``[0, budget]``)."""
        # Past the budget (the step that overshoots it) the rate stays at its final value.
        t = min(max(seconds, 0.0), self.budget)
        period = self.first_period
        # Walk the doubling cycles; the last one ends exactly at the budget.
        for _ in range(self.cycles - 1):
            if t < period:
                break
            t -= period
            period *= 2
        t = min(t, period)
        cosine = (1 + math.cos(math.pi * t / period)) / 2
        return self.eta_min + (self.base_lr - self.eta_min) * cosine


class Clock(Protocol):
    """Counts training seconds: only between :meth:`start` and :meth:`stop`."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def tick(self) -> None:
        """Called after every training step."""

    def elapsed(self) -> float: ...


class MeasuredClock:
    """Wall-clock seconds spent between ``start`` and ``stop``, summed.

    ``sync`` waits for the device's queued work (``torch.cuda.synchronize``), so that a stop
    counts the steps the host has launched but the GPU has not yet finished.
    """

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self._sync = sync
        self._total = 0.0
        self._since: float | None = None

    def start(self) -> None:
        if self._since is None:
            # Work queued before the start (evaluation, warm-up) must not count.
            self._sync()
            self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self._sync()
            self._total += time.perf_counter() - self._since
            self._since = None

    def tick(self) -> None:
        pass

    def elapsed(self) -> float:
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self._total + running


class StepClock:
    """A fixed cost per step instead of measured time: same seed, same run, on any machine.

    For reproducibility checks and tests; budgets then mean ``steps x seconds_per_step``.
    """

    def __init__(self, seconds_per_step: float) -> None:
        if not seconds_per_step > 0:
            raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step}")
        self.seconds_per_step = seconds_per_step
        self.steps = 0
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        self._running = False

    def tick(self) -> None:
        if self._running:
            self.steps += 1

    def elapsed(self) -> float:
        return self.steps * self.seconds_per_step
