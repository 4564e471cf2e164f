"""Prometheus metrics of the operator: what a user watching a search wants to see.

The operator serves these on ``/metrics`` (:func:`start_http_server`). Every family has the
prefix ``nas_bohb_``, is in base units (seconds, ratios) and carries only low-cardinality
labels: ``namespace`` and ``search`` (the ``JointSearch``), ``budget`` (a budget in seconds,
written with ``%g``; a search has a handful), ``state`` (a closed vocabulary) and, for the
budget correlation, ``budget_low``/``budget_high``. A trial id is never a label: a
1,000-trial search would otherwise leave 1,000 series behind.

The key diagnostic is the Spearman rank correlation between the losses of the same
configurations at adjacent budgets (Falkner et al., "BOHB: Robust and Efficient
Hyperparameter Optimization at Scale", ICML 2018, section 5; Zela et al., "Towards Automated
Deep Learning: Efficient Joint Neural Architecture and Hyperparameter Search", 2018,
arXiv 1807.06906, section 4): when it is weak, the smallest budget is too small to rank
configurations and successive halving throws good ones away.

API (one :class:`SearchMetrics` per ``JointSearch``; every method is thread-safe, cheap and
never raises for odd values, which are logged and dropped instead)::

    from controller import metrics

    metrics.start_http_server(8080)                  # once, at operator start
    m = metrics.SearchMetrics("team-a", "cifar-search")
    m.trial_started(budget=400)                      # a trial's Job was created
    m.scheduling_wait(budget=400, wait_s=3.2)        # ... its trainer started 3.2 s later
    m.trials_running({400: 2, 1200: 1})              # trials with a live Job, by budget
    m.progress({400: [0.25, 0.5], 1200: [0.1]})      # reported progress, by budget
    m.trial_finished(budget=400, state="ok", duration_s=431.0, gpus=1, loss=0.12)
    m.trial_counts({"pending": 2, "running": 3, "succeeded": 10, "failed": 1})
    m.incumbent(0.081)                               # the engine's current best loss
    m.correlations({400: {"0-0-1": 0.3, ...}, 1200: {"0-0-1": 0.2, ...}})
    with m.time_dispatch():                          # engine overhead of one dispatch
        ...
    m.forget()                                       # the JointSearch was deleted

Exported series (``series_names()`` lists them; the dashboard may only query these):

=============================================== ======= =====================================
family                                          type    labels besides namespace, search
=============================================== ======= =====================================
``nas_bohb_trials``                             gauge   state (pending/running/succeeded/
                                                        failed/cancelled)
``nas_bohb_trials_started_total``               counter budget
``nas_bohb_trials_finished_total``              counter budget, state (ok, diverged, ...)
``nas_bohb_trials_failed_total``                counter budget
``nas_bohb_trials_running``                     gauge   budget (trials whose Job exists and
                                                        has not finished)
``nas_bohb_trial_progress_ratio``               gauge   budget (mean over running trials)
``nas_bohb_best_loss``                          gauge   (the search's incumbent)
``nas_bohb_budget_best_loss``                   gauge   budget
``nas_bohb_budget_seconds_total``               counter budget (training seconds consumed
                                                        by finished trials)
``nas_bohb_gpu_seconds_total``                  counter budget (wall seconds x GPUs)
``nas_bohb_trial_duration_seconds``             histo.  budget
``nas_bohb_trial_scheduling_wait_seconds``      histo.  budget (see below)
``nas_bohb_engine_dispatch_seconds``            histo.  (none)
``nas_bohb_budget_rank_correlation``            gauge   budget_low, budget_high
``nas_bohb_budget_rank_correlation_samples``    gauge   budget_low, budget_high
=============================================== ======= =====================================

The **scheduling wait** of a trial attempt is the time from its Job's creation to the
moment its trainer started: the operator does not watch pods, so the start is taken from
the attempt's first report (:func:`report_start_time`): a progress entry's ``reportedAt``
minus its ``trainSeconds``, or a result's ``reported_at`` minus its ``wall_seconds``; when
the report carries neither, the time the operator read it (only for Jobs this operator
process created). It includes image pulls, volume mounts and data loading, and is observed
once per attempt. The Job's creation is the operator's clock when it created the Job, or
the Job's ``metadata.creationTimestamp`` for Jobs found after an operator restart. Trial
durations run from the same creation time to the moment the operator sees the trial end;
a trial whose creation time is unknown observes no duration.

.. note::
   Counters and histograms live in the operator's memory: after an operator restart they
   start again from zero (Prometheus' ``rate``/``increase`` handle resets). The gauges are
   replayed: a running search's best losses and correlations from its ledger when its
   engine is rebuilt, and a finished search's best losses, correlations and trial counts
   once, from its ledger and status (:func:`ledger_losses`). GPU seconds count when a
   trial finishes, so their rate is lumpy on long budgets.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=MetricWrapperBase)

PREFIX: Final = "nas_bohb_"

#: Lifecycle states of ``nas_bohb_trials`` (a snapshot of the search's ledger).
TRIAL_STATES: Final = ("pending", "running", "succeeded", "failed", "cancelled")

#: Final states of a finished trial: the trainer's record status (``ok``, ``diverged``,
#: ``out_of_memory``, ``error``) or an operator-side outcome (``crashed``: the Job failed
#: or ended without a record; ``timeout``: the active deadline struck; ``cancelled``: the
#: search ended first). Anything else is counted as ``unknown``.
FINISHED_STATES: Final = (
    "ok", "diverged", "out_of_memory", "error", "crashed", "timeout", "cancelled", "unknown",
)

#: Finished states that are not failures (the trial did what it was asked or was stopped).
_NOT_FAILED: Final = frozenset({"ok", "cancelled"})

#: Fewest configurations evaluated at both budgets before a correlation is exported; with
#: two points a rank correlation is always +-1 and says nothing.
MIN_CORRELATION_SAMPLES: Final = 3

# Trial durations span a 10 s CPU smoke test to the paper's 3-hour budget.
_DURATION_BUCKETS: Final = (
    1, 3, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800, 21600, 43200,
)
# Scheduling waits: a free node answers in about a second, a busy cluster in hours.
_WAIT_BUCKETS: Final = (0.1, 0.3, 1, 3, 10, 30, 60, 300, 900, 3600, 14400)
# One dispatch of the engine (a KDE fit and a sample) should take milliseconds.
_DISPATCH_BUCKETS: Final = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10)


def budget_label(budget: float) -> str:
    """The ``budget`` label of a budget in seconds: ``400``, ``33.3333``."""
    return f"{float(budget):g}"


@dataclass(frozen=True)
class BudgetCorrelation:
    """Spearman's rho between the losses of the same configurations at two budgets."""

    low: float
    high: float
    rho: float
    samples: int


def _average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of the average ranks), ``None`` if undefined.

    The same statistic as ``scipy.stats.spearmanr``, which the operator does not import:
    scipy.stats alone is about 50 MB of the operator's memory.
    """
    if len(x) != len(y) or len(x) < 2:
        return None
    rx, ry = _average_ranks(x), _average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None  # A constant side: rho is undefined.
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def budget_rank_correlations(
    losses: Mapping[float, Mapping[str, float]],
    min_samples: int = MIN_CORRELATION_SAMPLES,
) -> list[BudgetCorrelation]:
    """Spearman's rank correlation between each pair of adjacent budgets.

    ``losses`` maps a budget to ``{configuration id: loss}``. Only configurations with a
    finite loss at both budgets count; a pair with fewer than ``min_samples`` of them, or
    with constant losses (rho undefined), is left out.
    """
    budgets = sorted(losses)
    result = []
    for low, high in itertools.pairwise(budgets):
        at_low, at_high = losses[low], losses[high]
        common = sorted(
            c for c in at_low.keys() & at_high.keys()
            if math.isfinite(at_low[c]) and math.isfinite(at_high[c])
        )
        if len(common) < min_samples:
            continue
        rho = spearman_rho([at_low[c] for c in common], [at_high[c] for c in common])
        if rho is not None:
            result.append(BudgetCorrelation(float(low), float(high), rho, len(common)))
    return result


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def report_start_time(report: Mapping[str, object]) -> float | None:
    """When a trainer started (epoch seconds), from one of its status reports, or ``None``.

    A progress entry gives ``reportedAt - trainSeconds``; a result record gives
    ``reported_at - wall_seconds`` (or ``- train_seconds``). Both are the trainer's clock.
    """
    for at_key, spent_keys in (("reportedAt", ("trainSeconds",)),
                               ("reported_at", ("wall_seconds", "train_seconds"))):
        at = _number(report.get(at_key))
        if at is None:
            continue
        for key in spent_keys:
            spent = _number(report.get(key))
            if spent is not None and spent >= 0:
                return at - spent
    return None


def scheduling_wait_seconds(created_at: float | None, report: Mapping[str, object],
                            seen_at: float, *, seen_counts: bool = True) -> float | None:
    """The scheduling wait of a trial attempt whose first report the operator read at
    ``seen_at``; ``None`` when it cannot be told.

    The start is :func:`report_start_time`, never later than ``seen_at`` (a trainer clock
    running ahead); without one, ``seen_at`` itself if ``seen_counts`` (the operator saw the
    attempt from its creation on). A start before the creation (clock skew) gives 0.
    """
    if created_at is None or not math.isfinite(created_at):
        return None
    start = report_start_time(report)
    if start is None:
        if not seen_counts:
            return None
        start = seen_at
    return max(min(start, seen_at) - created_at, 0.0)


def parse_timestamp(text: object) -> float | None:
    """An RFC 3339 timestamp of the API server (``2024-05-01T12:00:00Z``) in epoch seconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def ledger_losses(events: Sequence[Mapping[str, object]]) -> dict[float, dict[str, float]]:
    """Successful losses by budget and configuration from a search's ledger events.

    Reads ``started`` events (trial -> configuration, budget, kind) and ``finished`` events
    (outcome); baselines are left out, as in the engine's results. For a finished search,
    whose engine the operator does not rebuild.
    """
    trials: dict[str, tuple[str, float]] = {}
    losses: dict[float, dict[str, float]] = {}
    for event in events:
        trial_id = event.get("trial_id")
        if not isinstance(trial_id, str):
            continue
        if event.get("event") == "started":
            config_id, budget = event.get("config_id"), _number(event.get("budget"))
            if event.get("kind") != "baseline" and isinstance(config_id, str) \
                    and budget is not None:
                trials[trial_id] = (config_id, budget)
        elif event.get("event") == "finished" and trial_id in trials:
            outcome = event.get("outcome")
            if not isinstance(outcome, Mapping) or outcome.get("status") != "ok":
                continue
            loss = _number(outcome.get("validation_error"))
            if loss is not None:
                config_id, budget = trials[trial_id]
                losses.setdefault(budget, {})[config_id] = loss
    return losses


class Families:
    """The metric families, registered once in one registry.

    The operator uses the module's default instance (:func:`default_families`) on
    Prometheus' global registry; tests build their own on a fresh ``CollectorRegistry``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = prometheus_client.REGISTRY if registry is None else registry
        self.registry = reg
        search = ("namespace", "search")
        per_budget = (*search, "budget")
        pair = (*search, "budget_low", "budget_high")
        p = PREFIX

        self.trials = Gauge(p + "trials", "Trials of a search by lifecycle state.",
                            (*search, "state"), registry=reg)
        self.started = Counter(p + "trials_started_total",
                               "Trials started (Job created), by budget.",
                               per_budget, registry=reg)
        self.finished = Counter(p + "trials_finished_total",
                                "Trials finished, by budget and final state.",
                                (*per_budget, "state"), registry=reg)
        self.failed = Counter(p + "trials_failed_total",
                              "Trials that finished without a usable result, by budget.",
                              per_budget, registry=reg)
        self.running = Gauge(p + "trials_running",
                             "Trials running now (Job created, not finished), by budget.",
                             per_budget, registry=reg)
        self.progress = Gauge(p + "trial_progress_ratio",
                              "Mean progress (0-1) of the trials running now, by budget.",
                              per_budget, registry=reg)
        self.best_loss = Gauge(p + "best_loss", "Loss of the search's incumbent.",
                               search, registry=reg)
        self.budget_best_loss = Gauge(p + "budget_best_loss",
                                      "Lowest loss of any trial at this budget.",
                                      per_budget, registry=reg)
        self.budget_seconds = Counter(p + "budget_seconds_total",
                                      "Training seconds consumed by finished trials.",
                                      per_budget, registry=reg)
        self.gpu_seconds = Counter(p + "gpu_seconds_total",
                                   "GPU seconds held by finished trials (wall seconds x GPUs).",
                                   per_budget, registry=reg)
        self.duration = Histogram(p + "trial_duration_seconds",
                                  "Wall time of finished trials, seconds.",
                                  per_budget, buckets=_DURATION_BUCKETS, registry=reg)
        self.wait = Histogram(p + "trial_scheduling_wait_seconds",
                              "Seconds from a trial attempt's Job creation to its trainer "
                              "starting (first report's time minus the seconds it reports; "
                              "includes image pull and data loading).",
                              per_budget, buckets=_WAIT_BUCKETS, registry=reg)
        self.dispatch = Histogram(p + "engine_dispatch_seconds",
                                  "Seconds the search engine spends per dispatch decision.",
                                  search, buckets=_DISPATCH_BUCKETS, registry=reg)
        self.correlation = Gauge(p + "budget_rank_correlation",
                                 "Spearman rank correlation of losses at adjacent budgets.",
                                 pair, registry=reg)
        self.correlation_samples = Gauge(p + "budget_rank_correlation_samples",
                                         "Configurations evaluated at both adjacent budgets.",
                                         pair, registry=reg)

    def all(self) -> tuple[MetricWrapperBase, ...]:
        """Every family, for iteration."""
        return (
            self.trials, self.started, self.finished, self.failed, self.running,
            self.progress, self.best_loss, self.budget_best_loss, self.budget_seconds,
            self.gpu_seconds, self.duration, self.wait, self.dispatch, self.correlation,
            self.correlation_samples,
        )


_default: Families | None = None
_default_lock = threading.Lock()


def default_families() -> Families:
    """The families on Prometheus' global registry, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Families()
        return _default


def series_names(families: Families | None = None) -> set[str]:
    """Every series name the families export (``_total``, ``_bucket``... included)."""
    fams = default_families() if families is None else families
    names: set[str] = set()
    for metric in fams.all():
        for family in metric.describe():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    return names


def start_http_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` from the global registry on a daemon thread."""
    default_families()
    prometheus_client.start_http_server(port, addr=addr)
    logger.info("Metrics are served on %s:%d/metrics.", addr, port)


class SearchMetrics:
    """The metrics of one ``JointSearch``; :meth:`forget` removes all its series."""

    def __init__(self, namespace: str, name: str, families: Families | None = None) -> None:
        self.namespace = namespace
        self.name = name
        self._f = default_families() if families is None else families
        self._lock = threading.Lock()
        # Every label tuple this search created, per family, so forget() removes them all.
        self._children: dict[int, set[tuple[str, ...]]] = {}
        self._budget_best: dict[str, float] = {}
        self._running_budgets: set[str] = set()
        self._progress_budgets: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------

    def _labels(self, metric: _M, *extra: str) -> _M:
        values = (self.namespace, self.name, *extra)
        self._children.setdefault(id(metric), set()).add(values)
        return metric.labels(*values)

    def _remove(self, metric: MetricWrapperBase, *extra: str) -> None:
        values = (self.namespace, self.name, *extra)
        if values in self._children.get(id(metric), set()):
            self._children[id(metric)].discard(values)
            metric.remove(*values)

    def _finite(self, what: str, value: float) -> bool:
        if isinstance(value, (int, float)) and math.isfinite(value):
            return True
        logger.warning("Search %s/%s: %s %r is not a finite number; metric not updated.",
                       self.namespace, self.name, what, value)
        return False

    # -- trial lifecycle -------------------------------------------------------------------

    def trial_started(self, budget: float, wait_s: float | None = None) -> None:
        """A trial's Job was created; ``wait_s`` if its pod is already running."""
        b = budget_label(budget)
        with self._lock:
            self._labels(self._f.started, b).inc()
        if wait_s is not None:
            self.scheduling_wait(budget, wait_s)

    def scheduling_wait(self, budget: float, wait_s: float) -> None:
        """A trial's pod started running ``wait_s`` seconds after its Job was created."""
        if not self._finite("scheduling wait", wait_s) or wait_s < 0:
            return
        with self._lock:
            self._labels(self._f.wait, budget_label(budget)).observe(wait_s)

    def trial_finished(self, budget: float, state: str, duration_s: float | None,
                       gpus: float = 0.0, loss: float | None = None,
                       train_s: float | None = None) -> None:
        """A trial ended in ``state`` (see :data:`FINISHED_STATES`) after ``duration_s``
        (``None`` when unknown: then no duration, GPU seconds or duration-based budget
        seconds are counted).

        ``gpus`` is the number of GPUs its pod held (GPU seconds = duration x GPUs); ``loss``
        its validation loss when it has one, which updates the budget's best loss;
        ``train_s`` the training seconds its record reports (budget seconds consumed; without
        it the smaller of duration and budget counts).
        """
        if state not in FINISHED_STATES:
            logger.warning("Search %s/%s: unknown trial state %r counted as 'unknown'.",
                           self.namespace, self.name, state)
            state = "unknown"
        b = budget_label(budget)
        with self._lock:
            self._labels(self._f.finished, b, state).inc()
            if state not in _NOT_FAILED:
                self._labels(self._f.failed, b).inc()
            # Make sure the failed counter exists (at 0) even before the first failure.
            self._labels(self._f.failed, b)
            duration_ok = (duration_s is not None and self._finite("trial duration", duration_s)
                           and duration_s >= 0)
            if train_s is not None and self._finite("train seconds", train_s) and train_s >= 0:
                self._labels(self._f.budget_seconds, b).inc(train_s)
            elif duration_ok:
                assert duration_s is not None
                self._labels(self._f.budget_seconds, b).inc(min(duration_s, max(budget, 0.0)))
            if duration_ok:
                assert duration_s is not None
                self._labels(self._f.duration, b).observe(duration_s)
                if self._finite("GPU count", gpus) and gpus > 0:
                    self._labels(self._f.gpu_seconds, b).inc(duration_s * gpus)
        if loss is not None:
            self.budget_best(budget, loss)

    def trial_counts(self, counts: Mapping[str, int]) -> None:
        """Snapshot of the search's trials by lifecycle state (:data:`TRIAL_STATES`).

        States not given are set to 0; unknown states are logged and ignored.
        """
        unknown = set(counts) - set(TRIAL_STATES)
        if unknown:
            logger.warning("Search %s/%s: unknown trial states %s ignored.",
                           self.namespace, self.name, sorted(unknown))
        with self._lock:
            for state in TRIAL_STATES:
                self._labels(self._f.trials, state).set(int(counts.get(state, 0)))

    def trials_running(self, by_budget: Mapping[float, int]) -> None:
        """How many trials run now (their Job exists and has not finished), by budget.

        A budget seen before but absent now drops to 0.
        """
        with self._lock:
            now: set[str] = set()
            for budget, count in by_budget.items():
                b = budget_label(budget)
                now.add(b)
                self._labels(self._f.running, b).set(max(int(count), 0))
            for b in self._running_budgets - now:
                self._labels(self._f.running, b).set(0)
            self._running_budgets |= now

    def progress(self, by_budget: Mapping[float, Sequence[float]]) -> None:
        """The reported progress fractions (0-1) of the trials running now, by budget.

        Sets the mean progress per budget; a budget without (finite) fractions now loses its
        progress series. Running-trial counts are :meth:`trials_running`'s.
        """
        with self._lock:
            now: set[str] = set()
            for budget, fractions in by_budget.items():
                b = budget_label(budget)
                values = [min(max(float(x), 0.0), 1.0) for x in fractions
                          if isinstance(x, (int, float)) and math.isfinite(x)]
                if values:
                    now.add(b)
                    self._labels(self._f.progress, b).set(sum(values) / len(values))
            for b in self._progress_budgets - now:
                self._remove(self._f.progress, b)
            self._progress_budgets = now

    # -- results ---------------------------------------------------------------------------

    def budget_best(self, budget: float, loss: float) -> None:
        """Lower the budget's best loss to ``loss`` if it is better (non-finite ignored)."""
        if not self._finite("loss", loss):
            return
        b = budget_label(budget)
        with self._lock:
            if loss < self._budget_best.get(b, math.inf):
                self._budget_best[b] = float(loss)
                self._labels(self._f.budget_best_loss, b).set(loss)

    def incumbent(self, loss: float) -> None:
        """The loss of the search's incumbent (the engine decides which trial that is)."""
        if self._finite("incumbent loss", loss):
            with self._lock:
                self._labels(self._f.best_loss).set(loss)

    def correlations(self, losses: Mapping[float, Mapping[str, float]]) -> None:
        """Recompute the adjacent-budget rank correlations from all results so far.

        ``losses`` maps budget -> {configuration id: loss}; see
        :func:`budget_rank_correlations`. Pairs that no longer qualify keep their last value.
        """
        found = budget_rank_correlations(losses)
        with self._lock:
            for c in found:
                low, high = budget_label(c.low), budget_label(c.high)
                self._labels(self._f.correlation, low, high).set(c.rho)
                self._labels(self._f.correlation_samples, low, high).set(c.samples)

    # -- engine ----------------------------------------------------------------------------

    def dispatch_seconds(self, seconds: float) -> None:
        """The engine spent ``seconds`` deciding one dispatch (sampling a configuration)."""
        if self._finite("dispatch seconds", seconds) and seconds >= 0:
            with self._lock:
                self._labels(self._f.dispatch).observe(seconds)

    @contextlib.contextmanager
    def time_dispatch(self) -> Iterator[None]:
        """Time the block as one engine dispatch."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.dispatch_seconds(time.perf_counter() - start)

    # -- lifecycle -------------------------------------------------------------------------

    def forget(self) -> None:
        """Remove every series of this search (call when the ``JointSearch`` is deleted)."""
        with self._lock:
            for metric in self._f.all():
                for values in self._children.pop(id(metric), set()):
                    with contextlib.suppress(KeyError):
                        metric.remove(*values)
            self._budget_best.clear()
            self._running_budgets.clear()
            self._progress_budgets.clear()
        logger.info("Search %s/%s: metrics removed.", self.namespace, self.name)

