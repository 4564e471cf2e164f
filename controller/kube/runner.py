"""One ``JointSearch``, reconciled: engine, Jobs and status kept in agreement.

A :class:`SearchRunner` owns the search's engine (:class:`controller.engine.Engine`) and
runs a loop that wakes whenever the resource, one of its Jobs or the engine's sampler
changes, and at least every ``resync_seconds``. Each pass:

1. reads what trainers wrote into ``status.trials`` and records checked results in the
   engine (unknown trials, finished trials, stale attempts and bad values are ignored
   with an Event);
2. looks at the Jobs of running trials. For a Job that ended without a result in the
   status it reads the Job's pods once: a result the trainer left in its container's
   termination message (checked as a status entry is) is recorded, with an Event.
   Otherwise a Job that succeeded is a crashed trial, and a failed one is classified
   from its pod (exit code 2: invalid configuration; OOMKilled: out of memory; deadline:
   overrun; killed by a signal (exit code 128 or more) without OOMKilled, evicted,
   deleted or vanished: an infrastructure failure, released to the engine and run again
   as a new attempt, abandoned after the engine's attempt limit; other exit codes:
   crashed);
3. ends the search when the engine says so, or stops every Job when
   ``maxFailedTrialCount`` is exceeded;
4. asks the engine for trials while fewer than ``parallelTrialCount`` run;
5. **flushes the ledger**, and only then acts: creates Jobs, deletes finished or stray
   Jobs, patches the status, posts Events.

Because the ledger is written before any Job is created and results are removed from
the status only after they are in the ledger, a crash at any point loses nothing and
duplicates nothing: the next operator replays the ledger and adopts the Jobs that exist
(their names are the trial ids plus the attempt). A running trial whose Job is missing
(never created, or deleted while no operator watched) is released: the engine issues it
again as a new attempt, so no attempt can ever run twice.

.. note::
   Dispatch latency (``dispatch=`` in the status lines) is the operator's reaction time:
   from the moment the event that freed a slot reached it (the watch event carrying a
   trial's result, a Job's end, the search's start or a larger ``parallelTrialCount``) to
   the answer of the next Job's create request. Not counted: the time a trainer's result
   write spends in the API server before the watch delivers it, and the time the engine
   waits for results it needs before it can propose anything (a bracket's barrier).

.. note::
   Every trainer writes the same object (the search's status), and a custom resource's
   write costs the API server time in proportion to its size. Measured with
   ``benchmarks/operator_scale.py`` on a shared 2-core machine (300 trials in flight,
   1,000 trials): report writes took 0.16 s at the median but up to 86 s at the 99th
   percentile when hundreds of trials ended together, and 4 of 1,000 results did not get
   through within the reporter's 120 s and counted as crashed (measured before the
   termination-message fallback, which now recovers such results from the pods). Real
   budgets (minutes to hours) spread results far more thinly than that benchmark.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller import spec as spec_mod
from controller.engine import Condition, Engine, LedgerError, TrialOutcome, TrialRequest, schedule
from controller.kube import (
    API_VERSION,
    KIND,
    LABEL_ATTEMPT,
    LABEL_TRIAL,
    MANAGED_BY,
    PLURAL,
)
from controller.kube import status as st
from controller.kube import template as tpl
from controller.kube.client import ApiError, JsonDict, KubeClient, collection_path, object_path
from controller.kube.ledger import ConfigMapLedger, LedgerConflict

logger = logging.getLogger(__name__)

try:  # Prometheus metrics are optional: the runner works without them.
    from controller import metrics as _metrics
except ImportError:  # pragma: no cover - metrics ship with the controller extra.
    _metrics = None  # type: ignore[assignment]

#: A result record larger than this (JSON bytes) loses its learning curve before storage.
MAX_RECORD_BYTES = 64 * 1024
#: Finished trials shown in ``status.results``: the latest ones (and the incumbent's).
#: Every write of the status costs the API server time in proportion to its size, and
#: hundreds of trainers write it; older results stay in the ledger (and in exports).
RESULT_LINES = 200
#: Pod reasons that mean the node or the cluster failed the pod, not the trainer.
_INFRA_POD_REASONS = frozenset({
    "Evicted", "NodeLost", "Preempting", "Shutdown", "Terminated", "NodeShutdown",
    "UnexpectedAdmissionError", "OutOfcpu", "OutOfmemory", "OutOfpods",
})


@dataclass(frozen=True)
class RunnerSettings:
    """Operator-wide knobs of every runner."""

    defaults: Mapping[str, Any] | None = None  # The chart's NAS_BOHB_DEFAULTS document.
    resync_seconds: float = 30.0
    job_concurrency: int = 16
    instance: str = field(default_factory=lambda: os.environ.get("HOSTNAME", "local"))


@dataclass
class _InFlight:
    """A trial the engine has started and the operator has not seen end."""

    request: TrialRequest
    job_name: str
    created: bool = False  # The Job exists (created by us, or seen in a listing).
    create_failures: int = 0
    created_at: float | None = None
    trigger: float | None = None  # When the slot this trial fills became free.
    running: bool = False
    fraction: float | None = None
    adopted: bool = False  # Found after an operator (re)start, not created by this process.
    waited: bool = False  # Its scheduling wait was observed.


@dataclass
class _Outbox:
    """Side effects decided in a pass, carried out after the ledger flush."""

    create: list[str] = field(default_factory=list)
    delete: set[str] = field(default_factory=set)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # type, reason, msg
    trial_patches: dict[str, dict[str, Any] | None] = field(default_factory=dict)


class SearchRunner:
    """Reconciles one ``JointSearch`` (one uid) until it is deleted or the operator stops."""

    def __init__(self, client: KubeClient, body: Mapping[str, Any],
                 settings: RunnerSettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        meta = body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.client = client
        self.settings = settings or RunnerSettings()
        self.clock = clock
        self.key = f"{self.namespace}/{self.name}"
        self.body: dict[str, Any] = dict(body)
        self.jobs: dict[str, JsonDict] = {}
        self.engine: Engine | None = None
        self.ledger: ConfigMapLedger | None = None
        self.search: spec_mod.SearchSpec | None = None
        self.template: tpl.TrialTemplate | None = None
        self.inflight: dict[str, _InFlight] = {}
        self.view: dict[str, dict[str, Any]] = {}  # What the status says of each trial.
        self.ended: dict[str, None] = {}  # Ended trials in the order they ended.
        self.terminal = False
        self.metrics: Any = None
        self._wake = asyncio.Event()
        self._woken_at: float | None = None
        self._observed_at = clock()  # When the event the current pass handles arrived.
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recorded: dict[str, str] = {}  # trial id -> fingerprint of its stored result.
        self._warned: dict[str, str] = {}  # (trial, reason) -> what was warned about, once.
        self._triggers: collections.deque[float] = collections.deque()
        self._blocked = False
        self._spec_generation: int | None = None
        self._invalid_generation: int | None = None
        self._parallel = 1
        self._last_relist = 0.0
        self._best_loss: float | None = None
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._pending_events: list[tuple[str, str, str]] = []
        self._idle_generation: int | None = None  # A terminal search seen at this generation.
        self._fatal: str | None = None  # Why the search must fail now (a template error).
        self._final: Condition | None = None
        self._finished_this_pass = False
        self._status_wanted: dict[str, Any] | None = None  # Newest status not yet written.
        self._status_task: asyncio.Task[None] | None = None

    # -- feeding the loop ---------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"search {self.key}")
        self.wake()

    async def stop(self) -> None:
        """Stop the loop and the engine's sampler (the search was deleted, or we exit)."""
        self._stopped = True
        self.wake()
        if self._status_task is not None:
            self._status_task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
            self.engine = None

    def wake(self) -> None:
        if self._woken_at is None:
            self._woken_at = self.clock()
        self._wake.set()

    def _wake_threadsafe(self) -> None:
        """The engine's sampler has a proposal ready (called from its thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wake)

    def observe(self, body: Mapping[str, Any]) -> None:
        """A newer version of the resource arrived from the watch."""
        if _newer(self.body, body):
            self.body = dict(body)
        self.wake()

    def observe_job(self, event_type: str | None, job: Mapping[str, Any]) -> None:
        """A Job of this search was added, changed or deleted."""
        meta = job.get("metadata") or {}
        if not _owned_by(meta, self.uid):
            return
        name = meta.get("name", "")
        if event_type == "DELETED":
            self.jobs.pop(name, None)
        elif _newer(self.jobs.get(name), job):
            self.jobs[name] = dict(job)
        self.wake()

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 1.0
        while not self._stopped:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.resync_seconds)
            self._wake.clear()
            if self._stopped:
                return
            try:
                await self._pass()
                backoff = 1.0
                continue
            except LedgerConflict as error:
                logger.warning("Search %s: %s; rebuilding the engine from the stored ledger.",
                               self.key, error)
                await self._reset()
            except ApiError as error:
                level = logging.INFO if error.transient else logging.WARNING
                logger.log(level, "Search %s: API request failed (%s); retrying in %.0f s.",
                           self.key, error, backoff)
            except Exception as error:
                logger.exception("Search %s: reconcile pass failed; retrying in %.0f s.",
                                 self.key, backoff)
                self._warn_once("reconcile", "ReconcileError", f"reconcile failed: {error}")
                await self._post_events()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
            self.wake()

    async def _reset(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        self.engine = None
        self.ledger = None
        self.inflight.clear()
        self.view.clear()

    async def _pass(self) -> None:
        pass_start = self.clock()
        woken_at = self._woken_at or pass_start
        self._woken_at = None
        self._observed_at = woken_at
        body = self.body
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        if self.terminal and self.engine is None and \
                int(meta.get("generation") or 0) == self._idle_generation:
            return  # Finished or invalid, and nothing changed since.
        if self.engine is None:
            started = await self._start(body)
            if not started:
                return
        elif self.terminal:
            await self._act(_Outbox())  # The final status did not get through last time.
            return
        assert self.engine is not None and self.ledger is not None
        out = _Outbox()
        self._finished_this_pass = False
        await self._apply_spec_change(body, out)

        if self._blocked:
            # The engine could not propose when slots were free: count from now on.
            self._triggers = collections.deque(max(t, woken_at) for t in self._triggers)
            self._blocked = False
        if pass_start - self._last_relist > self.settings.resync_seconds:
            await self._relist_jobs()

        status = body.get("status") or {}
        self._read_reports(status, out)
        await self._check_jobs(out)
        self._cleanup_jobs(out)
        ended = await self._check_end(out)
        if not ended:
            self._dispatch(out, pass_start)

        await self.ledger.flush()
        await self._act(out)

    # -- start and restart ----------------------------------------------------------------

    async def _start(self, body: Mapping[str, Any]) -> bool:
        """Validate, load the ledger, build the engine, adopt Jobs; ``False`` to stay idle."""
        status = body.get("status") or {}
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        phase = status.get("phase")
        if phase in st.TERMINAL_PHASES:
            invalid = any(c.get("type") == "Invalid" and c.get("status") == "True"
                          for c in status.get("conditions") or [])
            if not (invalid and generation != status.get("observedGeneration")):
                await self._settle_terminal()
                self._idle_generation = generation
                await self._replay_finished_metrics(status)
                return False

        ledger = ConfigMapLedger(self.client, body)
        count = await ledger.load()
        try:
            search, template = self._parse(body)
        except spec_mod.SpecError as error:
            stored = _stored_spec(ledger)
            if stored is None:  # Never started: there is no spec to continue with.
                await self._fail_invalid(str(error), generation)
                self._idle_generation = generation
                return False
            # Edited into an invalid spec (perhaps while no operator watched): a started
            # search continues with the spec its ledger records, as a running one does.
            self._warn_once("spec", "SpecChangeRejected",
                            f"the edited spec is invalid ({error}); the search continues "
                            "with its previous spec")
            search = spec_mod.load_spec(stored)
            template = tpl.parse_template(search.trial_template)
        # Trainer access first: no Job may exist before its ServiceAccount does, and a
        # failure here must leave no engine behind, so that the next pass retries it.
        await self._ensure_trainer_access(body)
        try:
            engine = await asyncio.to_thread(self._build_engine, search, ledger)
        except LedgerError as error:
            stored = _stored_spec(ledger)
            if stored is None:
                raise
            # The spec's shape changed while the operator was away: keep the search it began.
            self._warn_once("spec", "SpecChangeRejected",
                            f"{error}; continuing with the spec the search started with")
            search = spec_mod.load_spec({**stored, "trialTemplate": stored.get(
                "trialTemplate") or dict(body.get("spec", {}).get("trialTemplate") or {})})
            engine = await asyncio.to_thread(self._build_engine, search, ledger)
        self.search, self.template, self.ledger, self.engine = search, template, ledger, engine
        self._spec_generation = generation
        self._parallel = search.parallel_trial_count
        self.terminal = False
        self._invalid_generation = None

        await self._relist_jobs()
        for request in engine.unfinished():
            name = tpl.job_name(self.name, request.trial_id, request.attempt)
            if name in self.jobs:
                self.inflight[request.trial_id] = _InFlight(
                    request, name, created=True, adopted=True,
                    created_at=_job_created_at(self.jobs[name]))
                continue
            # Never created (a crash right after the ledger write) or deleted while no
            # operator watched: either way this attempt is lost. Running it again under
            # the same attempt could run it twice, so the engine issues a new attempt.
            reason = f"its Job {name} was missing when the operator started"
            engine.release(request.trial_id, reason)
            self._queue_event("Warning", "TrialRetrying", f"trial {request.trial_id} attempt "
                              f"{request.attempt}: {reason}; it will run again")
        self._rebuild_view(engine)
        free = max(self._parallel - len(self.inflight), 0)
        self._triggers = collections.deque([self.clock()] * free)
        self._start_metrics(engine)
        logger.info("Search %s: engine ready (%d ledger events, %d trials running, %d Jobs "
                    "found).", self.key, count, len(self.inflight), len(self.jobs))
        return True

    def _build_engine(self, search: spec_mod.SearchSpec, ledger: ConfigMapLedger) -> Engine:
        return Engine(search, ledger, on_ready=self._wake_threadsafe)

    def _parse(self, body: Mapping[str, Any]
               ) -> tuple[spec_mod.SearchSpec, tpl.TrialTemplate]:
        raw = body.get("spec")
        if not isinstance(raw, Mapping):
            raise spec_mod.SpecError("spec", "is required")
        merged = tpl.merge_defaults(raw, self.settings.defaults)
        search = spec_mod.load_spec(merged)
        template = tpl.parse_template(search.trial_template)
        tpl.data_argument(search.dataset)
        return search, template

    async def _fail_invalid(self, message: str, generation: int) -> None:
        """Report a spec that cannot run: phase Failed, condition Invalid, one Event."""
        self._invalid_generation = generation
        self.terminal = True
        status = self.body.get("status") or {}
        desired: dict[str, Any] = {
            "phase": st.FAILED,
            "reason": "InvalidSpec",
            "message": message,
            "observedGeneration": generation,
            "conditions": st.with_condition(status.get("conditions"), "Invalid", True,
                                            "InvalidSpec", message),
        }
        desired["conditions"] = st.with_condition(desired["conditions"], "Failed", True,
                                                  "InvalidSpec", message)
        if (status.get("message"), status.get("observedGeneration")) != (message, generation):
            logger.warning("Search %s is invalid: %s", self.key, message)
            self._queue_event("Warning", "InvalidSpec", message)
            await self._patch_status(desired)
        await self._post_events()
        await self._settle_terminal()  # A failed search leaves no Job running.

    async def _settle_terminal(self) -> None:
        """A finished search: make sure nothing of it still runs, then stay idle."""
        self.terminal = True
        await self._relist_jobs()
        keep = self._keep_jobs()
        for name, job in list(self.jobs.items()):
            if _job_state(job) == "active" or not keep:
                await self._delete_job(name)

    def _keep_jobs(self) -> bool:
        if self.template is not None:
            return self.template.keep_finished_jobs
        raw = (self.body.get("spec") or {}).get("trialTemplate") or {}
        return bool(raw.get("keepFinishedJobs", False))

    async def _ensure_trainer_access(self, body: Mapping[str, Any]) -> None:
        """Create the ServiceAccount, Role and RoleBinding trainer pods report with."""
        for api_version, plural, obj in tpl.trainer_rbac(body):
            path = collection_path(api_version, plural, self.namespace)
            name = obj["metadata"]["name"]
            try:
                await self.client.create(path, obj)
            except ApiError as error:
                if not error.conflict:
                    if not error.transient:
                        await self._access_pending(plural, name, error.message)
                    raise
                existing = await self.client.get(
                    object_path(api_version, plural, self.namespace, name))
                if not _owned_by(existing.get("metadata") or {}, self.uid):
                    # Left by an earlier search of the same name; the GC removes it soon.
                    why = "it belongs to another search (being garbage-collected)"
                    await self._access_pending(plural, name, why)
                    raise ApiError(503, "POST", path, f"{plural} {name} belongs to another "
                                   "search (being garbage-collected)") from error
        self._warned.pop("access", None)

    async def _access_pending(self, plural: str, name: str, why: str) -> None:
        """One Warning Event while trainer access cannot be created (the pass retries)."""
        self._warn_once("access", "TrainerAccessPending",
                        f"cannot create the trainers' {plural} {name} yet ({why}); no "
                        "trial starts until it exists")
        await self._post_events()

    async def _relist_jobs(self) -> None:
        items = await self.client.list(
            collection_path("batch/v1", "jobs", self.namespace),
            tpl.search_selector(self.name, "trial"))
        self.jobs = {j["metadata"]["name"]: j for j in items
                     if _owned_by(j.get("metadata") or {}, self.uid)}
        self._last_relist = self.clock()
        for flight in self.inflight.values():
            if flight.job_name in self.jobs:
                flight.created = True

    def _rebuild_view(self, engine: Engine) -> None:
        """The operator's part of ``status.trials`` from the ledger (after a (re)start)."""
        self.view.clear()
        self.ended.clear()
        self._recorded.clear()
        assert self.ledger is not None
        for event in self.ledger.read_all():
            if event.get("event") == "started":
                trial_id = event["trial_id"]
                self.view[trial_id] = {
                    "configId": event.get("config_id"),
                    "budget": event.get("budget"),
                    "attempt": event.get("attempt"),
                    "phase": st.RETRYING,
                }
        for request in engine.unfinished():
            entry = self.view.setdefault(request.trial_id, {})
            entry.update(configId=request.config_id, budget=request.budget,
                         attempt=request.attempt, phase=st.PENDING,
                         job=tpl.job_name(self.name, request.trial_id, request.attempt))
        for result in sorted([*engine.results(), *engine.baseline_results()],
                             key=lambda r: r.finished):
            self.view[result.trial_id] = self._finished_entry(
                result.trial_id, result.config_id, result.budget, result.attempt,
                result.outcome)
            self.ended[result.trial_id] = None
            if result.outcome.record:
                self._recorded[result.trial_id] = st.fingerprint(result.outcome.record)
        # Dispatch latencies live only in the status lines: keep the ones written before.
        status = self.body.get("status") or {}
        for key in ("results", "active"):
            for trial_id, line in _mapping(status.get(key)).items():
                known = self.view.get(trial_id)
                if known is not None and isinstance(line, str):
                    dispatch = st.parse_line(line).get("dispatch")
                    if isinstance(dispatch, float):
                        known.setdefault("dispatchSeconds", dispatch)

    # -- spec changes -------------------------------------------------------------------

    async def _apply_spec_change(self, body: Mapping[str, Any], out: _Outbox) -> None:
        """Apply an edited spec: knobs (parallelism, limits, template) yes, shape no."""
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        if generation == self._spec_generation:
            return
        self._spec_generation = generation
        assert self.search is not None and self.engine is not None
        try:
            search, template = self._parse(body)
        except spec_mod.SpecError as error:
            self._warn_once("spec", "SpecChangeRejected",
                            f"the edited spec is invalid ({error}); the search continues "
                            "with its previous spec")
            return
        if search.fingerprint() != self.search.fingerprint():
            self._warn_once("spec", "SpecChangeRejected",
                            "budgets, searchSpace, bohb, seed and baselines cannot change "
                            "while a search runs; the search continues with its previous spec")
            return
        old = self._parallel
        # Limits live in the engine: rebuild it from the ledger under the new spec.
        assert self.ledger is not None
        await self.ledger.flush()
        engine = await asyncio.to_thread(self._build_engine, search, self.ledger)
        await asyncio.to_thread(self.engine.close)
        self.engine, self.search, self.template = engine, search, template
        self._parallel = search.parallel_trial_count
        if self._parallel > old:
            self._triggers.extend([self.clock()] * (self._parallel - old))
        logger.info("Search %s: spec generation %d applied (parallelTrialCount %d).",
                    self.key, generation, self._parallel)
        out.events.append(("Normal", "SpecUpdated",
                           f"spec generation {generation} applied: parallelTrialCount "
                           f"{self._parallel}"))

    # -- 1. what trainers wrote --------------------------------------------------------

    def _read_reports(self, status: Mapping[str, Any], out: _Outbox) -> None:
        assert self.engine is not None
        trials = status.get("trials")
        if not isinstance(trials, Mapping):
            return
        for trial_id, entry in trials.items():
            if trial_id not in self.view:
                self._warn_once(f"{trial_id}/unknown", "UnknownTrialReport",
                                f"status.trials.{trial_id}: no such trial in this search; "
                                "entry removed")
                out.trial_patches[trial_id] = None
                continue
            if not isinstance(entry, Mapping):
                continue  # The view rewrites it below.
            flight = self.inflight.get(trial_id)
            if "result" in entry and entry["result"] is not None:
                self._read_result(trial_id, entry["result"], flight, out)
            if "progress" in entry and entry["progress"] is not None:
                if flight is None:
                    continue  # An ended trial: the view removes its progress.
                progress = st.parse_progress(entry["progress"])
                if isinstance(progress, st.ReportProblem):
                    self._warn_once(f"{trial_id}/progress", progress.reason,
                                    f"trial {trial_id}: {progress.message}; ignored")
                    _drop(out, trial_id, "progress")
                else:
                    if progress.attempt in (None, flight.request.attempt):
                        self._metric_wait(flight, entry["progress"])
                        flight.running = True
                        flight.fraction = progress.fraction
                    _drop(out, trial_id, "progress")  # Read: the summary line shows it.

    def _read_result(self, trial_id: str, raw: Any, flight: _InFlight | None,
                     out: _Outbox) -> None:
        assert self.engine is not None
        result = st.parse_result(raw)
        if flight is None:
            # The trial has ended already: ours to tidy up, or a late/duplicate write.
            if isinstance(result, st.ReportProblem):
                self._warn_once(f"{trial_id}/result", result.reason,
                                f"trial {trial_id}: {result.message}; ignored")
            elif self._recorded.get(trial_id) != st.fingerprint(_bounded(result.record)):
                self._warn_once(f"{trial_id}/late", "LateReport",
                                f"trial {trial_id} has ended already; a later result "
                                "written for it was ignored")
            _drop(out, trial_id, "result")
            return
        if isinstance(result, st.ReportProblem):
            self._warn_once(f"{trial_id}/result", result.reason,
                            f"trial {trial_id}: {result.message}; ignored")
            _drop(out, trial_id, "result")
            return
        if result.attempt is not None and result.attempt != flight.request.attempt:
            self._warn_once(f"{trial_id}/attempt", "StaleReport",
                            f"trial {trial_id}: result of attempt {result.attempt} ignored, "
                            f"attempt {flight.request.attempt} is running")
            _drop(out, trial_id, "result")
            return
        self._record_result(trial_id, result.record, out)

    def _record_result(self, trial_id: str, raw: dict[str, Any], out: _Outbox) -> None:
        """Finish a running trial with a checked result record."""
        record = _bounded(raw)
        outcome = TrialOutcome.from_record(record)
        self._metric_wait(self.inflight.get(trial_id), raw)
        self._finish(trial_id, outcome, out)
        self._recorded[trial_id] = st.fingerprint(record)

    # -- 2. Jobs ---------------------------------------------------------------------

    async def _check_jobs(self, out: _Outbox) -> None:
        """Running trials whose Job ended (or vanished) without a recorded result."""
        ended = []
        for trial_id, flight in self.inflight.items():
            if not flight.created:
                continue
            job = self.jobs.get(flight.job_name)
            state = "missing" if job is None else _job_state(job)
            if state == "active":
                flight.running = flight.running or bool((job or {}).get("status", {})
                                                        .get("active"))
            else:
                ended.append((trial_id, state))
        if not ended:
            return

        # A result can be written just before the Job ends; read the status afresh.
        fresh = await self.client.get(self._search_path())
        if _newer(self.body, fresh):
            self.body = fresh
        self._read_reports(fresh.get("status") or {}, out)
        for trial_id, state in ended:
            still = self.inflight.get(trial_id)
            if still is None:
                continue  # Its result was in the fresh status.
            if state == "missing":
                await self._confirm_missing(trial_id, still, out)
                continue
            # The status has no result: the trainer may have left it on its pod instead.
            pods = await self._job_pods(still.job_name)
            if self._result_from_pods(trial_id, still, pods, out):
                continue
            if state == "complete":
                self._finish(trial_id, TrialOutcome.failure(
                    "crashed", "the trainer exited 0 but never reported a result"), out)
            else:
                self._classify_failure(trial_id, still, pods, out)

    async def _confirm_missing(self, trial_id: str, flight: _InFlight, out: _Outbox) -> None:
        job = await self.client.get_or_none(self._job_path(flight.job_name))
        if job is not None and _owned_by(job.get("metadata") or {}, self.uid):
            self.jobs[flight.job_name] = job  # Only the watch was behind.
            return
        self._release(trial_id, f"Job {flight.job_name} was deleted before the trial "
                      "reported a result", out)

    async def _job_pods(self, job_name: str) -> list[JsonDict]:
        """The pods of a Job, oldest first (one list request)."""
        pods = await self.client.list(collection_path("v1", "pods", self.namespace),
                                      f"job-name={job_name}")
        pods.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
        return pods

    def _result_from_pods(self, trial_id: str, flight: _InFlight, pods: list[JsonDict],
                          out: _Outbox) -> bool:
        """Record a result the trainer left in its termination message; ``True`` if one was.

        For a Job that ended without a result in the status (the trainer's patch did not
        get through): the message is checked as a status entry is, and a wrong one is
        ignored with an Event, as a wrong status write is.
        """
        for pod in reversed(pods):
            name = (pod.get("metadata") or {}).get("name", "?")
            result = st.parse_termination_message(_termination_message(pod), trial_id)
            if result is None:
                continue
            if isinstance(result, st.ReportProblem):
                self._warn_once(f"{trial_id}/termination", result.reason,
                                f"trial {trial_id}: pod {name}: {result.message}; ignored")
                continue
            attempt = flight.request.attempt
            if result.attempt is not None and result.attempt != attempt:
                self._warn_once(f"{trial_id}/termination", "InvalidTerminationMessage",
                                f"trial {trial_id}: pod {name}: the termination message is "
                                f"for attempt {result.attempt}, the Job ran attempt "
                                f"{attempt}; ignored")
                continue
            logger.info("Search %s: trial %s: result taken from the termination message of "
                        "pod %s (it is not in the status).", self.key, trial_id, name)
            out.events.append(("Normal", "ResultFromTerminationMessage",
                               f"trial {trial_id}: the result did not reach the status; it "
                               f"was taken from the termination message of pod {name}"))
            self._record_result(trial_id, {**result.record,
                                           "reported_via": "termination_message"}, out)
            return True
        return False

    def _classify_failure(self, trial_id: str, flight: _InFlight, pods: list[JsonDict],
                          out: _Outbox) -> None:
        """Tell a crashed configuration from an infrastructure failure, from the pod."""
        job = self.jobs.get(flight.job_name) or {}
        reason = _failed_reason(job)
        if reason == "DeadlineExceeded":
            deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
            self._finish(trial_id, TrialOutcome.failure(
                "overrun", f"the trial ran past its deadline of {deadline} s"), out)
            return
        verdict = _pod_verdict(pods[-1] if pods else None)
        if verdict is None:
            self._release(trial_id, f"Job {flight.job_name} failed ({reason or 'no reason'}) "
                          "without a trainer exit code", out)
            return
        if verdict[0] == "infra":
            self._release(trial_id, verdict[2], out)
            return
        self._finish(trial_id, TrialOutcome.failure(verdict[1], verdict[2]), out)  # type: ignore[arg-type]

    # -- ends of trials ------------------------------------------------------------------

    def _finish(self, trial_id: str, outcome: TrialOutcome, out: _Outbox) -> None:
        """Record an outcome in the engine and plan the status, Event and Job cleanup."""
        assert self.engine is not None
        flight = self.inflight.pop(trial_id)
        self.engine.record_result(trial_id, outcome)
        request = flight.request
        entry = self._finished_entry(trial_id, request.config_id, request.budget,
                                     request.attempt, outcome)
        self.view[trial_id] = entry
        self.ended[trial_id] = None
        _drop(out, trial_id, "progress", "result")
        if not self._keep_jobs():
            out.delete.add(flight.job_name)
        self._push_trigger()
        self._finished_this_pass = True
        budget = tpl.budget_text(request.budget)
        if outcome.ok:
            out.events.append(("Normal", "TrialSucceeded",
                               f"trial {trial_id} at {budget} s: validation error "
                               f"{outcome.validation_error:.4f}"))
        else:
            out.events.append(("Warning", "TrialFailed",
                               f"trial {trial_id} at {budget} s {outcome.status}: "
                               f"{_short(outcome.message)}"))
        self._metric_finished(flight, outcome)

    def _release(self, trial_id: str, reason: str, out: _Outbox) -> None:
        """An infrastructure failure: the engine issues the trial again (or abandons it)."""
        assert self.engine is not None
        flight = self.inflight.pop(trial_id)
        self.engine.release(trial_id, reason)
        out.delete.add(flight.job_name)
        self._push_trigger()
        abandoned = any(r.trial_id == trial_id for r in
                        [*self.engine.results(), *self.engine.baseline_results()])
        request = flight.request
        if abandoned:
            outcome = TrialOutcome.failure("abandoned", f"lost {request.attempt} times; "
                                           f"last: {reason}")
            self.view[trial_id] = self._finished_entry(trial_id, request.config_id,
                                                       request.budget, request.attempt,
                                                       outcome)
            self.ended[trial_id] = None
            out.events.append(("Warning", "TrialFailed", f"trial {trial_id} abandoned after "
                               f"{request.attempt} attempts: {_short(reason)}"))
            self._metric_finished(flight, outcome)
        else:
            self.view[trial_id] = {**self.view.get(trial_id, {}), "phase": st.RETRYING,
                                   "message": _short(reason), "job": None}
            out.events.append(("Warning", "TrialRetrying", f"trial {trial_id} attempt "
                               f"{request.attempt} lost ({_short(reason)}); it will run again"))
        _drop(out, trial_id, "progress", "result")

    def _finished_entry(self, trial_id: str, config_id: str | None, budget: float,
                        attempt: int, outcome: TrialOutcome) -> dict[str, Any]:
        record = outcome.record or {}
        entry: dict[str, Any] = {
            "configId": config_id,
            "budget": budget,
            "attempt": attempt,
            "phase": st.SUCCEEDED if outcome.ok else st.FAILED,
            "outcome": outcome.status,
            "validationError": st.finite_or_none(outcome.validation_error),
            "testError": st.finite_or_none(outcome.test_error),
            "trainSeconds": st.finite_or_none(record.get("train_seconds"), 2),
            "message": _short(outcome.message) if not outcome.ok else None,
            "job": tpl.job_name(self.name, trial_id, attempt) if self._keep_jobs() else None,
        }
        previous = self.view.get(trial_id) or {}
        if previous.get("dispatchSeconds") is not None:
            entry["dispatchSeconds"] = previous["dispatchSeconds"]
        return entry

    def _push_trigger(self) -> None:
        """A slot is free since the event this pass is handling arrived."""
        self._triggers.append(self._observed_at)
        while len(self._triggers) > max(self._parallel, 1):
            self._triggers.popleft()

    # -- 3. the end of the search ----------------------------------------------------------

    async def _check_end(self, out: _Outbox) -> bool:
        assert self.engine is not None
        condition = self.engine.condition()
        if self._fatal is not None or (condition.reason == "MaxFailedTrialCountExceeded"
                                       and self.inflight):
            # Stop spending GPUs now: running trials are cancelled, not waited for.
            self._cancel_all(out)
            condition = self.engine.condition()
        if self._fatal is not None:
            self._final = Condition("Failed", "InvalidTrialTemplate", self._fatal)
            condition = self._final
        elif not self.engine.finished:
            return False
        self.terminal = True
        for name, job in self.jobs.items():
            if _job_state(job) == "active" or not self._keep_jobs():
                out.delete.add(name)
        phase = st.SUCCEEDED if condition.type == "Succeeded" else st.FAILED
        incumbent = self.engine.incumbent()
        best = (f"; incumbent {incumbent.config_id} at {incumbent.budget:g} s, validation "
                f"error {incumbent.loss:.4f}" if incumbent else "; no successful trial")
        out.events.append(("Normal" if phase == st.SUCCEEDED else "Warning",
                           f"Search{phase}", f"{condition.message}{best}"))
        logger.info("Search %s %s (%s)%s.", self.key, phase.lower(), condition.reason, best)
        return True

    def _cancel_all(self, out: _Outbox) -> None:
        assert self.engine is not None
        for trial_id in list(self.inflight):
            flight = self.inflight.pop(trial_id)
            self.engine.release(trial_id, "cancelled: the search is over")
            out.delete.add(flight.job_name)
            self.view[trial_id] = {**self.view.get(trial_id, {}), "phase": st.CANCELLED,
                                   "message": "cancelled: the search is over", "job": None}
            self.ended[trial_id] = None
            if self.metrics is not None:
                self.metrics.trial_finished(flight.request.budget, "cancelled",
                                            self._flight_duration(flight))

    # -- 4. new trials -------------------------------------------------------------------

    def _dispatch(self, out: _Outbox, pass_start: float) -> None:
        assert self.engine is not None and self.search is not None
        while len(self.inflight) < self._parallel:
            if self.metrics is not None:
                with self.metrics.time_dispatch():
                    request = self.engine.next_trial()
            else:
                request = self.engine.next_trial()
            if request is None:
                self._blocked = not self.engine.finished
                break
            name = tpl.job_name(self.name, request.trial_id, request.attempt)
            self.inflight[request.trial_id] = _InFlight(request, name)
            self.inflight[request.trial_id].trigger = (
                self._triggers.popleft() if self._triggers else pass_start)
            self.view[request.trial_id] = {
                "configId": request.config_id, "budget": request.budget,
                "attempt": request.attempt, "phase": st.PENDING, "job": name,
                "outcome": None, "validationError": None, "testError": None,
                "trainSeconds": None, "message": None, "dispatchSeconds": None,
            }
        out.create.extend(f.request.trial_id for f in self.inflight.values() if not f.created)

    # -- 5. acting ---------------------------------------------------------------------

    async def _act(self, out: _Outbox) -> None:
        if out.create:
            await self._create_jobs(out)
        if out.delete:
            await asyncio.gather(*(self._delete_job(name) for name in sorted(out.delete)))
        for kind, reason, message in out.events:
            self._queue_event(kind, reason, message)
        self._note_incumbent()
        # Events go out before the status patch that erases what they report on, so a
        # crash in between repeats an Event rather than losing it.
        await self._post_events(wait=True)
        self._status_wanted = self._desired_status(out)
        if self.terminal:
            # The final word, before the engine goes away. One writer at a time: a write
            # still in flight from an earlier pass would otherwise land after this one
            # (after a conflict it re-reads and re-applies its older wish), leaving a
            # finished search shown as Running. That writer takes this status next.
            if self._status_task is not None and not self._status_task.done():
                await self._status_task
            await self._write_status()
        elif self._status_task is None or self._status_task.done():
            # A status write of a big search can take a while on a busy API server; the
            # next pass (and its dispatches) must not wait for it.
            self._status_task = asyncio.create_task(self._write_status())
        self._metric_counts()
        if self._finished_this_pass and self.metrics is not None:
            self.metrics.correlations(_losses_by_budget(self.engine))
        if self.terminal and self.engine is not None:
            # The search is over: stop the sampler thread; only deletion comes next.
            await asyncio.to_thread(self.engine.close)
            self.engine = None
            self._idle_generation = self._spec_generation

    async def _create_jobs(self, out: _Outbox) -> None:
        assert self.search is not None and self.template is not None
        semaphore = asyncio.Semaphore(self.settings.job_concurrency)

        async def create(trial_id: str) -> None:
            flight = self.inflight.get(trial_id)
            if flight is None or flight.created:
                return
            assert self.search is not None and self.template is not None
            r = flight.request
            job = tpl.build_job(self.body, tpl.TrialJob(
                trial_id=r.trial_id, config_id=r.config_id or r.trial_id, budget=r.budget,
                attempt=r.attempt, seed=r.seed, config=r.config), self.search, self.template)
            async with semaphore:
                try:
                    stored = await self.client.create(
                        collection_path("batch/v1", "jobs", self.namespace), job)
                except ApiError as error:
                    if not error.conflict:
                        flight.create_failures += 1
                        self._job_create_failed(trial_id, flight, error, out)
                        return
                    stored = await self.client.get(self._job_path(flight.job_name))
                    if not _owned_by(stored.get("metadata") or {}, self.uid):
                        logger.warning("Search %s: Job %s belongs to another search; waiting "
                                       "for it to be garbage-collected.", self.key,
                                       flight.job_name)
                        return
            flight.created = True
            flight.created_at = self.clock()
            self.jobs[flight.job_name] = stored
            if flight.trigger is not None:
                self.view[trial_id]["dispatchSeconds"] = round(
                    max(flight.created_at - flight.trigger, 0.0), 3)
                flight.trigger = None
            logger.debug("Search %s: Job %s created for trial %s.", self.key,
                         flight.job_name, trial_id)
            out.events.append(("Normal", "TrialStarted",
                               f"trial {trial_id} (attempt {r.attempt}) at "
                               f"{tpl.budget_text(r.budget)} s: Job {flight.job_name}"))
            if self.metrics is not None:
                self.metrics.trial_started(r.budget)

        await asyncio.gather(*(create(t) for t in dict.fromkeys(out.create)))

    def _job_create_failed(self, trial_id: str, flight: _InFlight, error: ApiError,
                           out: _Outbox) -> None:
        if error.transient or error.status in (403, 404) or flight.create_failures < 3:
            logger.warning("Search %s: creating Job %s failed (%s); will retry.", self.key,
                           flight.job_name, error)
            self._warn_once(f"{trial_id}/create", "JobCreateFailed",
                            f"creating Job {flight.job_name} failed: {error.message}")
            return
        # The API server keeps refusing the Job itself: the template cannot work.
        self._fatal = f"spec.trialTemplate makes an invalid Job: {error.message}"
        self.wake()

    async def _delete_job(self, name: str) -> None:
        try:
            await self.client.delete(self._job_path(name), propagation="Background")
        except ApiError as error:
            logger.warning("Search %s: deleting Job %s failed: %s.", self.key, name, error)
            return
        self.jobs.pop(name, None)

    def _cleanup_jobs(self, out: _Outbox) -> None:
        """Delete Jobs no running trial owns: strays, old attempts, ended trials' Jobs."""
        current = {f.job_name for f in self.inflight.values()}
        keep = self._keep_jobs()
        for name, job in self.jobs.items():
            if name in current or name in out.delete:
                continue
            labels = (job.get("metadata") or {}).get("labels") or {}
            trial_id = labels.get(LABEL_TRIAL, "")
            if _job_state(job) == "active":
                logger.info("Search %s: Job %s (trial %s, attempt %s) runs for no current "
                            "trial; deleting it.", self.key, name, trial_id,
                            labels.get(LABEL_ATTEMPT))
                out.delete.add(name)
            elif not keep:
                out.delete.add(name)

    # -- the status --------------------------------------------------------------------

    def _desired_status(self, out: _Outbox) -> dict[str, Any]:
        assert self.engine is not None and self.search is not None and self.ledger is not None
        observed = self.body.get("status") or {}
        results: dict[str, Any] = {}
        active: dict[str, Any] = {}
        for trial_id, entry in self.view.items():
            flight = self.inflight.get(trial_id)
            if flight is not None:
                phase = st.RUNNING if flight.running else st.PENDING
                active[trial_id] = st.trial_line({**entry, "phase": phase},
                                                 progress=flight.fraction)
            elif entry.get("phase") == st.RETRYING:
                active[trial_id] = st.trial_line(entry)
        incumbent = self.engine.incumbent()
        shown = list(self.ended)[-RESULT_LINES:]
        if incumbent is not None and incumbent.trial_id not in shown:
            shown.append(incumbent.trial_id)
        for trial_id in shown:
            if trial_id in self.view:
                results[trial_id] = st.trial_line(self.view[trial_id])
        for key, lines in (("results", results), ("active", active)):
            lines.update({trial_id: None for trial_id in _mapping(observed.get(key))
                          if trial_id not in lines})

        # The inbox: what was read is removed; an ended trial's entry goes entirely.
        inbox = _mapping(observed.get("trials"))
        trials: dict[str, Any] = {}
        for trial_id in inbox:
            if trial_id not in self.inflight:
                trials[trial_id] = None
        for trial_id, patch in out.trial_patches.items():
            if patch is None or trial_id not in self.inflight:
                trials[trial_id] = None
            else:
                trials[trial_id] = dict(patch)

        succeeded = sum(1 for e in self.view.values() if e.get("phase") == st.SUCCEEDED)
        failed = sum(1 for e in self.view.values() if e.get("phase") == st.FAILED)
        total = self._planned_trials()
        done = succeeded + failed
        condition = self._final or self.engine.condition()
        phase = st.RUNNING if (self.inflight or done) else st.PENDING
        if self.terminal:
            phase = st.SUCCEEDED if condition.type == "Succeeded" else st.FAILED
        conditions = observed.get("conditions")
        if phase == st.RUNNING or (self.terminal and observed.get("phase") != phase):
            conditions = st.with_condition(conditions, "Running", phase == st.RUNNING,
                                           condition.reason, condition.message)
        if self.terminal:
            conditions = st.with_condition(conditions, phase, True, condition.reason,
                                           condition.message)
            if self._fatal is not None:
                conditions = st.with_condition(conditions, "Invalid", True, condition.reason,
                                               condition.message)
        # Conditions describe the present: an earlier invalid spec or failure is cleared.
        present = {c.get("type") for c in conditions or [] if isinstance(c, Mapping)}
        if self._fatal is None and "Invalid" in present:
            conditions = st.with_condition(conditions, "Invalid", False, "SpecValid",
                                           "the search runs with a valid spec")
        if phase != st.FAILED and "Failed" in present:
            conditions = st.with_condition(conditions, "Failed", False, condition.reason,
                                           condition.message)
        desired: dict[str, Any] = {
            "phase": phase,
            "reason": condition.reason,
            "message": condition.message,
            "observedGeneration": self._spec_generation,
            "conditions": conditions,
            "startedAt": observed.get("startedAt") or st.now_iso(),
            "completedAt": (observed.get("completedAt") or st.now_iso()) if self.terminal
            else None,
            "trialsTotal": total,
            "trialsDone": done,
            "trialsRunning": len(self.inflight),
            "trialsSucceeded": succeeded,
            "trialsFailed": failed,
            "progress": f"{done}/{total if total is not None else '?'}",
            "parallelTrialCount": self._parallel,
            "bestLoss": st.finite_or_none(incumbent.loss) if incumbent else None,
            "incumbent": None if incumbent is None else {
                "configId": incumbent.config_id,
                "trialId": incumbent.trial_id,
                "budget": incumbent.budget,
                "validationError": st.finite_or_none(incumbent.loss),
                "testError": st.finite_or_none(incumbent.test_error),
                "config": st.json_safe(incumbent.config),
            },
            "ledger": {"configMaps": self.ledger.shard_count, "events": self.ledger.count},
            "results": results,
            "resultsOmitted": max(len(self.ended) - len(shown), 0),
            "active": active,
            "trials": trials,
        }
        return desired

    def _planned_trials(self) -> int | None:
        search = self.search
        if search is None or search.max_iterations is None:
            return search.max_trial_count if search else None
        b = search.budgets
        total = sum(sum(br.num_configs) for br in schedule.plan(b.min, b.max, b.eta,
                                                                search.max_iterations))
        if search.max_trial_count is not None:
            total = min(total, search.max_trial_count)
        return total + len(search.baselines)

    async def _write_status(self) -> None:
        """Write the newest wanted status until none is pending (one writer at a time).

        Writes are spaced by at least the time the last one took (and half a second), so
        that on a busy API server the operator's writes, which are the largest, leave
        room for the trainers' reports instead of competing with them.
        """
        while self._status_wanted is not None:
            desired, self._status_wanted = self._status_wanted, None
            began = time.monotonic()
            try:
                await self._patch_status(desired)
            except ApiError as error:
                logger.info("Search %s: status patch failed (%s); retrying.", self.key, error)
                if self._status_wanted is None:
                    self._status_wanted = desired
            if self._stopped:
                return
            await asyncio.sleep(max(0.5, time.monotonic() - began))

    async def _patch_status(self, desired: Mapping[str, Any], attempts: int = 4) -> None:
        """Merge-patch the status, on the condition that nobody wrote since we read it.

        With the resourceVersion as a precondition a conflict comes back at once as a 409
        (then we read afresh and try again), instead of being retried inside the API
        server, where concurrent trainer reports would make every retry conflict again.
        It also makes removing read inbox entries safe: nothing unseen is removed.
        """
        for _ in range(attempts):
            patch = st.merge_patch(self.body.get("status") or {}, desired)
            if not patch:
                return
            version = (self.body.get("metadata") or {}).get("resourceVersion")
            try:
                stored = await self.client.merge_patch(self._search_path("status"), {
                    "metadata": {"resourceVersion": version}, "status": patch})
            except ApiError as error:
                if not error.conflict:
                    raise
                fresh = await self.client.get(self._search_path())
                if _newer(self.body, fresh):
                    self.body = fresh
                continue
            if _newer(self.body, stored):
                self.body = stored
            return
        raise ApiError(409, "PATCH", self._search_path("status"),
                       f"the status changed under {attempts} writes in a row")

    # -- events and metrics ----------------------------------------------------------

    def _warn_once(self, key: str, reason: str, message: str) -> None:
        if self._warned.get(key) == message:
            return
        self._warned[key] = message
        logger.warning("Search %s: %s", self.key, message)
        self._queue_event("Warning", reason, message)

    def _queue_event(self, kind: str, reason: str, message: str) -> None:
        self._pending_events.append((kind, reason, message))

    async def _post_events(self, wait: bool = False) -> None:
        """Post queued Events (concurrently); a failed post is logged, never retried."""
        events, self._pending_events = self._pending_events, []
        tasks = [asyncio.create_task(self._post_event(kind, reason, message))
                 for kind, reason, message in events]
        if wait:
            await asyncio.gather(*tasks)
            return
        for task in tasks:
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)

    async def _post_event(self, kind: str, reason: str, message: str) -> None:
        meta = self.body.get("metadata") or {}
        now = st.now_iso()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name[:200]}.", "namespace": self.namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": self.name,
                               "namespace": self.namespace, "uid": self.uid,
                               "resourceVersion": meta.get("resourceVersion")},
            "type": kind,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": MANAGED_BY},
            "reportingComponent": MANAGED_BY,
            "reportingInstance": self.settings.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.create(collection_path("v1", "events", self.namespace), event)
        except ApiError as error:
            logger.debug("Search %s: Event %s not posted: %s.", self.key, reason, error)

    def _note_incumbent(self) -> None:
        assert self.engine is not None
        incumbent = self.engine.incumbent()
        if incumbent is None or not math.isfinite(incumbent.loss):
            return
        if self._best_loss is not None and incumbent.loss >= self._best_loss:
            return
        self._best_loss = incumbent.loss
        self._queue_event("Normal", "NewIncumbent",
                          f"configuration {incumbent.config_id} at {incumbent.budget:g} s: "
                          f"validation error {incumbent.loss:.4f}, test error "
                          f"{_fmt(incumbent.test_error)}")
        if self.metrics is not None:
            self.metrics.incumbent(incumbent.loss)

    def _start_metrics(self, engine: Engine) -> None:
        """One metrics object per search; replay finished results into its gauges."""
        incumbent = engine.incumbent()
        self._best_loss = incumbent.loss if incumbent else None
        if _metrics is None:
            return
        if self.metrics is None:
            self.metrics = _metrics.SearchMetrics(self.namespace, self.name)
        by_budget = _losses_by_budget(engine)
        for budget, losses in by_budget.items():
            self.metrics.budget_best(budget, min(losses.values()))
        if incumbent is not None:
            self.metrics.incumbent(incumbent.loss)
        self.metrics.correlations(by_budget)

    def _metric_finished(self, flight: _InFlight, outcome: TrialOutcome) -> None:
        if self.metrics is None:
            return
        state = {"crashed": "crashed", "invalid_config": "crashed", "abandoned": "crashed",
                 "overrun": "timeout"}.get(outcome.status, outcome.status)
        record = outcome.record or {}
        self.metrics.trial_finished(
            flight.request.budget, state, self._flight_duration(flight), gpus=self._gpus(),
            loss=outcome.validation_error, train_s=record.get("train_seconds"))

    def _metric_counts(self) -> None:
        if self.metrics is None:
            return
        phases = collections.Counter(e.get("phase") for e in self.view.values())
        running = sum(1 for f in self.inflight.values() if f.running)
        self.metrics.trial_counts({
            "pending": len(self.inflight) - running, "running": running,
            "succeeded": phases[st.SUCCEEDED], "failed": phases[st.FAILED],
            "cancelled": phases["Cancelled"]})
        progress: dict[float, list[float]] = {}
        in_flight: dict[float, int] = {}
        for flight in self.inflight.values():
            if flight.created:
                in_flight[flight.request.budget] = in_flight.get(flight.request.budget, 0) + 1
            if flight.fraction is not None:
                progress.setdefault(flight.request.budget, []).append(flight.fraction)
        self.metrics.trials_running(in_flight)
        self.metrics.progress(progress)

    def _flight_duration(self, flight: _InFlight) -> float | None:
        """Seconds since the trial's Job was created; ``None`` when that is unknown."""
        if flight.created_at is None:
            return None
        return max(self.clock() - flight.created_at, 0.0)

    def _metric_wait(self, flight: _InFlight | None, report: Any) -> None:
        """Observe an attempt's scheduling wait at its first report (once per attempt)."""
        if self.metrics is None or flight is None or flight.waited \
                or not isinstance(report, Mapping):
            return
        flight.waited = True
        wait = _metrics.scheduling_wait_seconds(flight.created_at, report, self._observed_at,
                                                seen_counts=not flight.adopted)
        if wait is not None:
            self.metrics.scheduling_wait(flight.request.budget, wait)

    async def _replay_finished_metrics(self, status: Mapping[str, Any]) -> None:
        """A finished search seen at operator start: its gauges from its ledger and status.

        Once, and cheaply: no Jobs, no engine; counters and histograms stay empty.
        """
        if _metrics is None or self.metrics is not None:
            return
        self.metrics = _metrics.SearchMetrics(self.namespace, self.name)
        try:
            ledger = ConfigMapLedger(self.client, self.body)
            await ledger.load()
            by_budget = _metrics.ledger_losses(ledger.read_all())
        except Exception as error:  # Metrics never stop the operator.
            logger.warning("Search %s: finished results not replayed into the metrics: %s.",
                           self.key, error)
            by_budget = {}
        for budget, losses in by_budget.items():
            self.metrics.budget_best(budget, min(losses.values()))
        self.metrics.correlations(by_budget)
        best = status.get("bestLoss")
        if isinstance(best, (int, float)) and not isinstance(best, bool):
            self.metrics.incumbent(float(best))
        counts = {key: status.get(field) for key, field in (
            ("succeeded", "trialsSucceeded"), ("failed", "trialsFailed"))}
        self.metrics.trial_counts({k: v for k, v in counts.items() if isinstance(v, int)})
        self.metrics.trials_running({})

    def _gpus(self) -> int:
        limits = (self.template.resources.get("limits") or {}) if self.template else {}
        try:
            return int(limits.get("nvidia.com/gpu", 0))
        except (TypeError, ValueError):
            return 0

    # -- paths -----------------------------------------------------------------------

    def _search_path(self, subresource: str | None = None) -> str:
        return object_path(API_VERSION, PLURAL, self.namespace, self.name, subresource)

    def _job_path(self, name: str) -> str:
        return object_path("batch/v1", "jobs", self.namespace, name)


# --- helpers ------------------------------------------------------------------------------


def _job_created_at(job: Mapping[str, Any]) -> float | None:
    """A Job's ``metadata.creationTimestamp`` in epoch seconds, if it has one."""
    if _metrics is None:
        return None
    return _metrics.parse_timestamp((job.get("metadata") or {}).get("creationTimestamp"))


def _drop(out: _Outbox, trial_id: str, *keys: str) -> None:
    """Plan the removal of trainer-written keys from a trial's status entry."""
    patch = out.trial_patches.setdefault(trial_id, {})
    if patch is not None:
        patch.update(dict.fromkeys(keys))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _owned_by(meta: Mapping[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in meta.get("ownerReferences") or [])


def _resource_version(obj: Mapping[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _newer(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` is a later version than ``old`` (resourceVersions as etcd numbers)."""
    return old is None or _resource_version(new) >= _resource_version(old)


def _job_state(job: Mapping[str, Any]) -> str:
    """``complete``, ``failed`` or ``active`` from a Job's conditions."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "complete"
        if condition.get("type") == "Failed":
            return "failed"
    return "active"


def _failed_reason(job: Mapping[str, Any]) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return condition.get("reason")
    return None


def _pod_verdict(pod: Mapping[str, Any] | None) -> tuple[str, str, str] | None:
    """``("infra"|"trial", outcome status, message)`` for a failed trial pod, or ``None``."""
    if pod is None:
        return None
    status = pod.get("status") or {}
    if status.get("reason") in _INFRA_POD_REASONS:
        return ("infra", "", f"pod {pod['metadata']['name']} {status['reason']}: "
                f"{_short(status.get('message') or '')}")
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or \
            (container.get("lastState") or {}).get("terminated")
        if not terminated:
            continue
        code = terminated.get("exitCode")
        why = terminated.get("reason") or ""
        tail = _short(terminated.get("message") or "", 400)
        if why == "OOMKilled":
            return ("trial", "out_of_memory", f"the trainer ran out of memory (OOMKilled) {tail}")
        if code == 2:
            return ("trial", "invalid_config", f"the trainer refused the configuration "
                    f"(exit code 2): {tail}")
        if code == 0:
            return ("trial", "crashed", "the trainer exited 0 but never reported a result")
        if isinstance(code, int) and code >= 128:
            # Killed from outside (node pressure, preemption, a runtime restart), not by
            # its configuration: run it again rather than show it to the model.
            return ("infra", "", f"the trainer was killed by signal {code - 128} "
                    f"({why or 'no reason'}): {tail}")
        return ("trial", "crashed", f"the trainer exited with code {code} ({why or 'Error'}): "
                f"{tail}")
    return None


def _termination_message(pod: Mapping[str, Any]) -> str | None:
    """The termination message of a pod's trainer container, if it has ended."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") != tpl.CONTAINER:
            continue
        terminated = (container.get("state") or {}).get("terminated") or \
            (container.get("lastState") or {}).get("terminated") or {}
        message = terminated.get("message")
        return message if isinstance(message, str) else None
    return None


def _bounded(record: dict[str, Any]) -> dict[str, Any]:
    """The record, without its learning curve if it is too large for the ledger."""
    if st.status_bytes(record) <= MAX_RECORD_BYTES:
        return record
    slim = {k: v for k, v in record.items() if k != "learning_curve"}
    slim["learning_curve_dropped"] = True
    if st.status_bytes(slim) <= MAX_RECORD_BYTES:
        return slim
    keep = ("status", "validation_error", "test_error", "validation_loss", "train_loss",
            "budget_seconds", "train_seconds", "wall_seconds", "epochs", "steps", "n_params",
            "device", "torch_version", "trainer_version", "seed", "attempt", "reported_at")
    smaller = {k: record[k] for k in keep if k in record}
    smaller["message"] = _short(str(record.get("message") or ""), 2000)
    return smaller


def _losses_by_budget(engine: Engine | None) -> dict[float, dict[str, float]]:
    """Successful losses by budget and configuration, for the budget-correlation gauges."""
    by_budget: dict[float, dict[str, float]] = {}
    for result in engine.results() if engine is not None else []:
        if result.outcome.ok and result.config_id is not None:
            by_budget.setdefault(result.budget, {})[result.config_id] = result.outcome.loss
    return by_budget


def _stored_spec(ledger: ConfigMapLedger) -> dict[str, Any] | None:
    events = ledger.read_all()
    if events and events[0].get("event") == "search_started":
        spec = events[0].get("spec")
        return dict(spec) if isinstance(spec, Mapping) else None
    return None


def _short(text: str | None, limit: int = 300) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
