"""The BOHB engine: Hyperband brackets driven by BOHB's model, rebuilt from a ledger.

This replaces hpbandster's ``Master`` and ``SuccessiveHalving`` iteration (Falkner, Klein
and Hutter, ICML 2018; Li et al., JMLR 2018) with a passive object that executors poll:
``next_trial()`` says what to start, ``record_result()`` and ``release()`` say how it
went. It follows the reference master where it matters for results:

- Several iterations are active at once. When every active bracket waits on stragglers,
  the next iteration starts, so no worker idles (hpbandster's ``active_iterations``).
- A rung is complete when all its slots have a finished run. The best
  ``num_configs[r + 1]`` *successful* runs advance (failed runs never do); ties go to the
  configuration sampled first. Slots left empty because too few runs succeeded are
  filled with new samples at the higher budget, as hpbandster does.
- Failed runs (crash, divergence, out of memory, overrun) are loss ``+inf`` for the
  model. Infrastructure failures (``release()``) are never shown to it: the trial is
  issued again, up to :data:`MAX_ATTEMPTS` times, then abandoned (still not shown to the
  model, never promoted, counted as failed).

Where it deviates: configurations are sampled ahead in a background thread
(:mod:`controller.engine.sampler`), so a proposal may predate the last few results; and
every decision goes to the ledger first (:mod:`controller.engine.ledger`), so the engine
can be rebuilt by replay at any point. Promotions are not logged: they are recomputed
from results, deterministically.

.. note::
   ``timeLimitSeconds`` counts the time of controller sessions, from each session's start
   to its last recorded event; the time the controller was down does not count, nor the
   tail of a session that was killed after its last event. Trials already running when a
   limit is reached are allowed to finish.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from controller import __version__
from controller import space as space_mod
from controller.engine import schedule
from controller.engine.ledger import Ledger, LedgerError
from controller.engine.sampler import InlineSampler, PrefetchSampler, Sampler
from controller.engine.types import (
    BracketProgress,
    Condition,
    Incumbent,
    Progress,
    Proposal,
    RungProgress,
    TrialKind,
    TrialOutcome,
    TrialRequest,
    TrialResult,
)
from controller.spec import SearchSpec

if TYPE_CHECKING:
    from controller.engine.sampler import Model

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""How often a trial is issued before infrastructure failures abandon it."""


@dataclass
class _Config:
    config_id: str
    iteration: int
    stage: int
    index: int
    values: dict[str, int | float]
    trainer_config: dict[str, int | float]
    model_based: bool


@dataclass
class _Trial:
    trial_id: str
    config_id: str | None
    kind: TrialKind
    iteration: int
    bracket: int
    budget: float
    budget_index: int
    config: dict[str, int | float]
    seed: int
    state: str = "queued"  # queued | running | finished | abandoned
    attempt: int = 0
    releases: int = 0
    failed_attempts: int = 0  # Releases that count towards abandoning the trial.
    outcome: TrialOutcome | None = None
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    finish_order: int = -1


@dataclass
class _Iteration:
    bracket: schedule.Bracket
    rung: int = 0
    slots: list[list[str]] = field(default_factory=list)
    done: bool = False

    @property
    def index(self) -> int:
        return self.bracket.iteration


def _config_id(iteration: int, stage: int, index: int) -> str:
    return f"{iteration}-{stage}-{index}"


def _first_difference(old: object, new: object, path: str) -> str | None:
    """The dotted path of the first place where two plain JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return path
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if old == new else path


class Engine:
    """Hyperband + BOHB over a search spec, with every decision in ``ledger``.

    Building an engine replays the ledger; see ``docs/engine.md`` for the API contract.
    """

    def __init__(self, spec: SearchSpec, ledger: Ledger, *, prefetch: bool = True,
                 on_ready: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time, model: bool = True) -> None:
        self.spec = spec
        self.ledger = ledger
        self.clock = clock
        self.space = space_mod.build(spec.search_space, seed=spec.seed)
        b = spec.budgets
        self.budgets = schedule.budgets(b.min, b.max, b.eta)
        self._lock = threading.RLock()
        self._iterations: list[_Iteration] = []
        self._configs: dict[str, _Config] = {}
        self._trials: dict[str, _Trial] = {}
        self._finish_counter = 0
        self._sessions: list[tuple[float, float]] = []  # (start, last event) per session
        self._finished_logged = False
        self._deferred: list[dict[str, Any]] = []
        self._model: Model | None = None
        if model and prefetch:
            # The model runs in a child process: its CPU time must not hold our GIL.
            from controller.engine.model_server import ModelProcess

            self._model = ModelProcess(spec.to_dict(), spec.seed)
        elif model:
            # hpbandster pulls in statsmodels: imported only when a model is wanted.
            from controller.engine.model import BohbModel

            self._model = BohbModel(self.space, spec.bohb, spec.seed)
        self._sampler: Sampler | None = None
        for baseline in spec.baselines:
            self._add_baseline(baseline.name, space_mod.check_baseline(
                baseline.config, f"spec.baselines.{baseline.name}"))

        events = ledger.read_all()
        if events:
            self._replay(events)
            self._append({"event": "session_started"})
            if self._model is not None:
                # The seed alone would replay the first session's random proposals: derive
                # this session's streams from the seed and the ledger's length instead.
                self._model.reseed(self._seed(f"session/{len(events)}"))
        else:
            self._append({"event": "search_started", "spec": spec.to_dict(),
                          "name": spec.name, "fingerprint": spec.fingerprint(),
                          "version": __version__})
        if self._model is not None:
            if prefetch:
                self._sampler = PrefetchSampler(self._model, spec.parallel_trial_count,
                                                on_ready)
            else:
                self._sampler = InlineSampler(self._model)

    # --- public API --------------------------------------------------------------------

    def next_trial(self) -> TrialRequest | None:
        """The next trial to start (already in the ledger), or ``None`` for now."""
        with self._lock:
            if self._sampler is None:
                raise RuntimeError("this engine was built without a model (read-only)")
            if self._blocked_reason() is not None:
                self._check_finished()
                return None
            waiting_for_sample = False
            for it in self._active_iterations():
                trial, waiting = self._next_in(it)
                waiting_for_sample = waiting_for_sample or waiting
                if trial is not None:
                    return self._start(trial)
            if not waiting_for_sample and self._may_open_iteration():
                it = self._open_iteration(len(self._iterations))
                trial, waiting_for_sample = self._next_in(it)
                if trial is not None:
                    return self._start(trial)
            if not waiting_for_sample:
                for trial in self._trials.values():
                    if trial.kind == "baseline" and trial.state == "queued":
                        return self._start(trial)
            self._check_finished()
            return None

    def record_result(self, trial_id: str, outcome: TrialOutcome) -> None:
        """A trial ended with a record or a failure of its own (loss +inf for the model)."""
        with self._lock:
            trial = self._trials.get(trial_id)
            if trial is None:
                raise KeyError(f"unknown trial {trial_id!r}")
            if trial.state in ("finished", "abandoned"):
                logger.warning("Trial %s already has a result; ignoring a second one.",
                               trial_id)
                return
            self._append({"event": "finished", "trial_id": trial_id,
                          "outcome": outcome.to_dict()})
            if outcome.ok:
                logger.info("Trial %s at %s finished: validation error %.4f.", trial_id,
                            _seconds(trial.budget), outcome.loss)
            else:
                logger.info("Trial %s at %s failed (%s): %s", trial_id, _seconds(trial.budget),
                            outcome.status, outcome.message or "no message")
            self._apply_finished(trial, outcome, live=True)
            self._check_finished()

    def release(self, trial_id: str, reason: str, *, counts: bool = True) -> None:
        """An infrastructure failure: issue the trial again; the model never sees it.

        ``counts=False`` for stops that are nobody's failure (the controller was
        interrupted): those never lead to the trial being abandoned.
        """
        with self._lock:
            trial = self._trials.get(trial_id)
            if trial is None:
                raise KeyError(f"unknown trial {trial_id!r}")
            if trial.state != "running":
                logger.warning("Trial %s is %s, not running; ignoring its release.",
                               trial_id, trial.state)
                return
            abandoned = counts and trial.failed_attempts + 1 >= MAX_ATTEMPTS
            self._append({"event": "released", "trial_id": trial_id, "attempt": trial.attempt,
                          "reason": reason, "counts": counts, "abandoned": abandoned})
            self._apply_released(trial, counts, abandoned)
            if abandoned:
                logger.warning("Trial %s at %s was lost %d times (last: %s); abandoning it.",
                               trial_id, _seconds(trial.budget), trial.failed_attempts, reason)
            else:
                logger.info("Trial %s at %s was released (%s); it will run again.",
                            trial_id, _seconds(trial.budget), reason)
            self._check_finished()

    def unfinished(self) -> list[TrialRequest]:
        """Trials started and not yet finished or released: to re-attach or re-run."""
        with self._lock:
            return [self._request(t) for t in self._trials.values() if t.state == "running"]

    running = unfinished

    @property
    def finished(self) -> bool:
        """Whether the search is over (nothing running and nothing left to start)."""
        with self._lock:
            return self._check_finished()

    def condition(self) -> Condition:
        with self._lock:
            return self._condition()

    def incumbent(self) -> Incumbent | None:
        """Lowest loss on the largest budget that has a successful run (hpbandster's rule)."""
        with self._lock:
            done = [t for t in self._bohb_trials() if t.outcome is not None and t.outcome.ok]
            if not done:
                return None
            top = max(t.budget for t in done)
            best = min((t for t in done if t.budget == top),
                       key=lambda t: (t.outcome.loss if t.outcome else math.inf,
                                      t.finish_order))
            assert best.outcome is not None and best.config_id is not None
            return Incumbent(config_id=best.config_id, trial_id=best.trial_id,
                             budget=best.budget, loss=best.outcome.loss,
                             test_error=best.outcome.test_error, config=dict(best.config))

    def results(self) -> list[TrialResult]:
        """Finished BOHB trials, in the order they finished."""
        with self._lock:
            return self._results("bohb")

    def baseline_results(self) -> list[TrialResult]:
        with self._lock:
            return self._results("baseline")

    def progress(self) -> Progress:
        with self._lock:
            bohb = list(self._bohb_trials())
            finished = [t for t in bohb if t.state in ("finished", "abandoned")]
            brackets = []
            for it in self._active_iterations():
                rungs = []
                for r, (n, budget) in enumerate(zip(it.bracket.num_configs, it.bracket.budgets,
                                                    strict=True)):
                    ids = it.slots[r] if r < len(it.slots) else []
                    states = [self._trials[i].state for i in ids]
                    rungs.append(RungProgress(
                        budget=budget, total=n,
                        done=sum(s in ("finished", "abandoned") for s in states),
                        running=states.count("running")))
                brackets.append(BracketProgress(iteration=it.index, bracket=it.bracket.s,
                                                rung=it.rung, rungs=tuple(rungs)))
            records = [t.outcome.record for t in self._trials.values()
                       if t.outcome is not None and t.outcome.record]
            return Progress(
                condition=self._condition(),
                iterations_planned=self.spec.max_iterations,
                iterations_started=len(self._iterations),
                iterations_done=sum(it.done for it in self._iterations),
                active_brackets=tuple(brackets),
                running=tuple(t.trial_id for t in self._trials.values()
                              if t.state == "running"),
                trials_started=sum(t.attempt > 0 for t in bohb),
                trials_finished=len(finished),
                trials_failed=self._failures(),
                releases=sum(t.releases for t in self._trials.values()),
                abandoned=sum(t.state == "abandoned" for t in self._trials.values()),
                baselines_done=sum(t.kind == "baseline" and t.state in ("finished", "abandoned")
                                   for t in self._trials.values()),
                baselines_total=len(self.spec.baselines),
                incumbent=self.incumbent(),
                budget_spent_seconds=sum(t.budget for t in self._trials.values()
                                         if t.state == "finished"),
                train_seconds=sum(float(r.get("train_seconds") or 0.0) for r in records
                                  if isinstance(r.get("train_seconds"), (int, float))),
                elapsed_seconds=self._elapsed(),
                model_budgets=tuple(self._model.model_budgets) if self._model else (),
            )

    def sampler_stats(self) -> Any:
        """The sampler's counters (proposals, seconds spent), or ``None`` without a model."""
        return getattr(self._sampler, "stats", None)

    def hpbandster_configs(self) -> list[list[Any]]:
        """Lines of hpbandster's ``configs.json``: ``[[i, s, k], config, info]``."""
        with self._lock:
            return [[[c.iteration, c.stage, c.index], dict(c.values),
                     {"model_based_pick": c.model_based}] for c in self._configs.values()]

    def hpbandster_results(self) -> list[list[Any]]:
        """Lines of hpbandster's ``results.json``: id, budget, times, result, exception.

        A failed run has ``result`` null and the reason as ``exception``, as hpbandster
        logs crashed jobs (JSON has no infinity).
        """
        with self._lock:
            lines: list[list[Any]] = []
            for r in self._results("bohb"):
                assert r.config_id is not None
                c = self._configs[r.config_id]
                stamps = {"submitted": r.submitted, "started": r.started,
                          "finished": r.finished}
                if r.outcome.ok:
                    result: Any = {"loss": r.outcome.loss, "info": dict(r.outcome.record or {})}
                    exception = None
                else:
                    result = None
                    exception = f"{r.outcome.status}: {r.outcome.message}".rstrip(": ")
                lines.append([[c.iteration, c.stage, c.index], r.budget, stamps, result,
                              exception])
            return lines

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the sampler has absorbed all results and filled its buffer (tests)."""
        sampler = self._sampler
        if isinstance(sampler, PrefetchSampler):
            return sampler.wait_idle(timeout)
        return True

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
        close_model = getattr(self._model, "close", None)
        if close_model is not None:
            close_model()

    # --- scheduling --------------------------------------------------------------------

    def _active_iterations(self) -> list[_Iteration]:
        return [it for it in self._iterations if not it.done]

    def _may_open_iteration(self) -> bool:
        limit = self.spec.max_iterations
        return limit is None or len(self._iterations) < limit

    def _open_iteration(self, index: int) -> _Iteration:
        while len(self._iterations) <= index:
            b = self.spec.budgets
            plan = schedule.bracket(len(self._iterations), b.min, b.max, b.eta)
            self._iterations.append(_Iteration(plan, slots=[[] for _ in plan.num_configs]))
        return self._iterations[index]

    def _next_in(self, it: _Iteration) -> tuple[_Trial | None, bool]:
        """A trial of ``it`` to start now, and whether ``it`` waits for a proposal."""
        ids = it.slots[it.rung]
        for trial_id in ids:
            trial = self._trials[trial_id]
            if trial.state == "queued" and self._may_start(trial):
                return trial, False
        if len(ids) < it.bracket.num_configs[it.rung] and self._may_start(None):
            assert self._sampler is not None
            proposal = self._sampler.take()
            if proposal is None:
                return None, True
            return self._sample_into(it, proposal), False
        return None, False

    def _sample_into(self, it: _Iteration, proposal: Proposal) -> _Trial:
        stage = it.rung
        index = len(it.slots[stage])
        config_id = _config_id(it.index, stage, index)
        trainer_config = self.space.trainer_config(proposal.values)
        # Written together with the trial's "started" event, which always follows.
        self._deferred.append({
            "event": "sampled", "config_id": config_id, "iteration": it.index,
            "budget": it.bracket.budgets[stage], "config": proposal.values,
            "trainer_config": trainer_config,
            "info": {"model_based_pick": proposal.model_based},
        })
        self._apply_sampled(config_id, it.index, stage, index, proposal.values,
                            proposal.model_based)
        logger.debug("Configuration %s sampled for %s (%s).", config_id,
                     _seconds(it.bracket.budgets[stage]),
                     "model" if proposal.model_based else "random")
        return self._trials[self._trial_id(config_id, it.bracket.budget_indices[stage])]

    def _start(self, trial: _Trial) -> TrialRequest:
        attempt = trial.attempt + 1
        deferred, self._deferred = self._deferred, []
        self._append(*deferred, {"event": "started", "trial_id": trial.trial_id,
                                 "config_id": trial.config_id, "kind": trial.kind,
                                 "budget": trial.budget, "attempt": attempt})
        self._apply_started(trial, attempt)
        logger.info("Trial %s at %s started (attempt %d).", trial.trial_id,
                    _seconds(trial.budget), attempt)
        return self._request(trial)

    def _may_start(self, trial: _Trial | None) -> bool:
        """Whether a trial (``None``: a new one) may start under ``maxTrialCount``."""
        if trial is not None and (trial.attempt > 0 or trial.kind == "baseline"):
            return True
        return not self._trial_limit_reached()

    def _blocked_reason(self) -> str | None:
        """Why no trial at all may start any more, if a limit says so."""
        failed_limit = self.spec.max_failed_trial_count
        if failed_limit is not None and self._failures() > failed_limit:
            return "MaxFailedTrialCountExceeded"
        limit = self.spec.time_limit_seconds
        if limit is not None and self._elapsed() >= limit:
            return "TimeLimitReached"
        return None

    def _nothing_left(self) -> bool:
        """Whether, with nothing running and limits aside, no trial could start again."""
        if any(t.state == "queued" and self._may_start(t) for t in self._trials.values()):
            return False
        for it in self._active_iterations():
            if len(it.slots[it.rung]) < it.bracket.num_configs[it.rung] and \
                    self._may_start(None):
                return False
        return not (self._may_open_iteration() and self._may_start(None))

    def _trial_limit_reached(self) -> bool:
        limit = self.spec.max_trial_count
        return limit is not None and sum(t.attempt > 0 for t in self._bohb_trials()) >= limit

    def _condition(self) -> Condition:
        failures = self._failures()
        running = any(t.state == "running" for t in self._trials.values())
        blocked = self._blocked_reason()
        if blocked == "MaxFailedTrialCountExceeded":
            return Condition("Running" if running else "Failed", blocked,
                             f"{failures} trials failed, more than maxFailedTrialCount "
                             f"{self.spec.max_failed_trial_count}")
        if running:
            return Condition("Running", "TrialsRunning", "trials are running")
        if blocked == "TimeLimitReached":
            return self._ended(blocked, f"the time limit of "
                               f"{self.spec.time_limit_seconds:g} s was reached")
        if self._nothing_left():
            if self._trial_limit_reached():
                return self._ended("MaxTrialCountReached",
                                   f"{self.spec.max_trial_count} trials were started")
            count = len(self._iterations)
            return self._ended("MaxIterationsReached", f"all {count} iteration"
                               f"{'' if count == 1 else 's'} finished")
        return Condition("Running", "Searching", "the search is running")

    def _ended(self, reason: str, message: str) -> Condition:
        """A search that ran to its end succeeded only if some trial did."""
        if any(t.outcome is not None and t.outcome.ok for t in self._bohb_trials()):
            return Condition("Succeeded", reason, message)
        return Condition("Failed", "NoSuccessfulTrial",
                         f"{message}, but no trial succeeded: every one failed")

    def _check_finished(self) -> bool:
        condition = self._condition()
        over = condition.type != "Running"
        if over and not self._finished_logged:
            self._finished_logged = True
            self._append({"event": "search_finished", "condition": {
                "type": condition.type, "reason": condition.reason,
                "message": condition.message}})
            logger.info("The search is over (%s): %s.", condition.reason, condition.message)
        return over

    # --- state transitions, shared by live calls and replay ----------------------------

    def _trial_id(self, config_id: str, budget_index: int) -> str:
        return f"{config_id}-b{budget_index}"

    def _seed(self, key: str) -> int:
        return zlib.crc32(f"{self.spec.seed}/{key}".encode()) & 0x7FFFFFFF

    def _add_baseline(self, name: str, config: dict[str, int | float]) -> None:
        trial_id = f"baseline-{name}"
        self._trials[trial_id] = _Trial(
            trial_id=trial_id, config_id=None, kind="baseline", iteration=-1, bracket=-1,
            budget=self.budgets[-1], budget_index=len(self.budgets) - 1, config=config,
            seed=self._seed(trial_id))

    def _apply_sampled(self, config_id: str, iteration: int, stage: int, index: int,
                       values: Mapping[str, int | float], model_based: bool) -> None:
        it = self._open_iteration(iteration)
        if stage != it.rung or index != len(it.slots[stage]):
            raise LedgerError(f"configuration {config_id} does not fit iteration {iteration} "
                              f"(rung {it.rung}, {len(it.slots[it.rung])} slots filled)")
        plain = self.space.plain(values)
        self._configs[config_id] = _Config(config_id, iteration, stage, index, plain,
                                           self.space.trainer_config(plain), model_based)
        self._queue(it, config_id, stage)

    def _queue(self, it: _Iteration, config_id: str, rung: int) -> None:
        budget_index = it.bracket.budget_indices[rung]
        trial_id = self._trial_id(config_id, budget_index)
        self._trials[trial_id] = _Trial(
            trial_id=trial_id, config_id=config_id, kind="bohb", iteration=it.index,
            bracket=it.bracket.s, budget=it.bracket.budgets[rung], budget_index=budget_index,
            config=self._configs[config_id].trainer_config, seed=self._seed(config_id))
        it.slots[rung].append(trial_id)

    def _apply_started(self, trial: _Trial, attempt: int) -> None:
        if trial.state != "queued":
            raise LedgerError(f"trial {trial.trial_id} started while {trial.state}")
        now = self._last_time
        trial.state = "running"
        trial.attempt = attempt
        trial.started = now
        if trial.submitted is None:
            trial.submitted = now

    def _apply_finished(self, trial: _Trial, outcome: TrialOutcome, live: bool) -> None:
        trial.state = "finished"
        trial.outcome = outcome
        trial.finished = self._last_time
        trial.finish_order = self._finish_counter
        self._finish_counter += 1
        if trial.kind != "bohb" or trial.config_id is None:
            return
        values = self._configs[trial.config_id].values
        if live and self._sampler is not None:
            self._sampler.observe(values, trial.budget, outcome.loss)
        elif not live and self._model is not None:
            self._model.observe(values, trial.budget, outcome.loss)
        self._advance(self._iterations[trial.iteration])

    def _apply_released(self, trial: _Trial, counts: bool, abandoned: bool) -> None:
        trial.releases += 1
        trial.failed_attempts += int(counts)
        if abandoned:
            trial.state = "abandoned"
            trial.outcome = TrialOutcome.failure(
                "abandoned", f"lost to infrastructure failures {trial.failed_attempts} times")
            trial.finished = self._last_time
            trial.finish_order = self._finish_counter
            self._finish_counter += 1
            if trial.kind == "bohb":
                self._advance(self._iterations[trial.iteration])
        else:
            trial.state = "queued"

    def _advance(self, it: _Iteration) -> None:
        """Close complete rungs: promote the best successful runs, or finish the bracket."""
        while not it.done:
            rung = it.rung
            ids = it.slots[rung]
            if len(ids) < it.bracket.num_configs[rung]:
                return
            trials = [self._trials[i] for i in ids]
            if any(t.state not in ("finished", "abandoned") for t in trials):
                return
            if rung + 1 >= len(it.bracket.num_configs):
                it.done = True
                logger.info("Iteration %d (bracket %d) finished.", it.index, it.bracket.s)
                return
            ranked = sorted(
                (t for t in trials if t.outcome is not None and t.outcome.ok),
                key=lambda t: (t.outcome.loss if t.outcome else math.inf, ids.index(t.trial_id)),
            )
            winners = ranked[: it.bracket.num_configs[rung + 1]]
            it.rung = rung + 1
            for t in winners:
                assert t.config_id is not None
                self._queue(it, t.config_id, rung + 1)
            logger.info("Iteration %d: rung at %s complete; %d of %d advance to %s.",
                        it.index, _seconds(it.bracket.budgets[rung]), len(winners), len(trials),
                        _seconds(it.bracket.budgets[rung + 1]))

    # --- bookkeeping -------------------------------------------------------------------

    _last_time: float = 0.0

    def _append(self, *events: dict[str, Any]) -> None:
        """Make ``events`` durable, together when the ledger can (one fsync for both)."""
        now = float(self.clock())
        stamped = [{**e, "time": now} for e in events]
        append_many = getattr(self.ledger, "append_many", None)
        if len(stamped) > 1 and append_many is not None:
            append_many(stamped)
        else:
            for event in stamped:
                self.ledger.append(event)
        self._last_time = now
        if stamped[0]["event"] == "session_started" or not self._sessions:
            self._sessions.append((now, now))
        else:
            start, _ = self._sessions[-1]
            self._sessions[-1] = (start, now)

    def _elapsed(self) -> float:
        if not self._sessions:
            return 0.0
        past = sum(end - start for start, end in self._sessions[:-1])
        return past + max(0.0, float(self.clock()) - self._sessions[-1][0])

    def _bohb_trials(self) -> list[_Trial]:
        return [t for t in self._trials.values() if t.kind == "bohb"]

    def _failures(self) -> int:
        return sum(
            1 for t in self._bohb_trials()
            if t.state == "abandoned" or (t.state == "finished" and t.outcome is not None
                                          and not t.outcome.ok)
        )

    def _request(self, t: _Trial) -> TrialRequest:
        return TrialRequest(trial_id=t.trial_id, config_id=t.config_id, kind=t.kind,
                            iteration=t.iteration, bracket=t.bracket, budget=t.budget,
                            budget_index=t.budget_index, attempt=t.attempt,
                            config=dict(t.config), seed=t.seed)

    def _results(self, kind: TrialKind) -> list[TrialResult]:
        done = [t for t in self._trials.values()
                if t.kind == kind and t.state in ("finished", "abandoned")]
        done.sort(key=lambda t: t.finish_order)
        return [
            TrialResult(trial_id=t.trial_id, config_id=t.config_id, kind=t.kind,
                        iteration=t.iteration, budget=t.budget, budget_index=t.budget_index,
                        attempt=t.attempt, config=dict(t.config),
                        outcome=t.outcome or TrialOutcome.failure("abandoned", ""),
                        submitted=t.submitted or 0.0, started=t.started or 0.0,
                        finished=t.finished or 0.0)
            for t in done
        ]

    # --- replay ------------------------------------------------------------------------

    def _replay(self, events: list[dict[str, Any]]) -> None:
        first = events[0]
        if first.get("event") != "search_started":
            raise LedgerError("the ledger does not start with a search_started event")
        if first.get("fingerprint") != self.spec.fingerprint():
            stored = first.get("spec") or {}
            current = self.spec.to_dict()
            fields = self.spec.fingerprint_fields()
            path = _first_difference({k: stored.get(k) for k in fields}, fields, "spec")
            raise LedgerError(
                "the ledger belongs to a search with a different shape "
                f"(first difference at {path or 'spec'}: {_at(stored, path)!r} there, "
                f"{_at(current, path)!r} now); a search of another shape starts anew (a new "
                "run directory, or a new JointSearch)")
        for number, event in enumerate(events, start=1):
            try:
                self._replay_one(event)
            except (KeyError, TypeError, ValueError, LedgerError) as exc:
                raise LedgerError(f"ledger event {number} ({event.get('event')}) cannot be "
                                  f"replayed: {exc}") from exc
        logger.info("Replayed %d ledger events: %d trials finished, %d running.",
                    len(events), sum(t.state == "finished" for t in self._trials.values()),
                    sum(t.state == "running" for t in self._trials.values()))

    def _replay_one(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        now = float(event.get("time", 0.0))
        self._last_time = now
        if kind in ("search_started", "session_started") or not self._sessions:
            self._sessions.append((now, now))
        else:
            self._sessions[-1] = (self._sessions[-1][0], now)
        if kind == "sampled":
            iteration, stage, index = (int(x) for x in event["config_id"].split("-"))
            self._apply_sampled(event["config_id"], iteration, stage, index, event["config"],
                                bool(event.get("info", {}).get("model_based_pick", False)))
        elif kind == "started":
            self._apply_started(self._trials[event["trial_id"]], int(event["attempt"]))
        elif kind == "finished":
            trial = self._trials[event["trial_id"]]
            self._apply_finished(trial, TrialOutcome.from_dict(event["outcome"]), live=False)
        elif kind == "released":
            self._apply_released(self._trials[event["trial_id"]], bool(event.get("counts", True)),
                                 bool(event["abandoned"]))
        elif kind == "search_finished":
            self._finished_logged = True
        # search_started and session_started carry no state beyond their time.


def _at(data: object, path: str | None) -> object:
    """The value at a dotted path produced by :func:`_first_difference` (best effort)."""
    if not path:
        return data
    current = data
    for part in path.split(".")[1:]:
        name, _, rest = part.partition("[")
        current = current.get(name) if isinstance(current, dict) else None
        for index in rest.replace("]", "").split("[") if rest else []:
            if isinstance(current, list) and index.isdigit() and int(index) < len(current):
                current = current[int(index)]
            else:
                current = None
    return current


def _seconds(budget: float) -> str:
    return f"{budget:g} s"
