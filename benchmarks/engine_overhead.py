"""Engine overhead and worker utilisation: this engine against hpbandster's own master.

The same BOHB search (the paper's 17-dimensional space, budgets 1..27 with eta 3, so
four brackets like the paper's 400..10800 s) runs twice with simulated trials that sleep
``budget x scale`` seconds and return a cheap synthetic loss:

- through :class:`controller.engine.Engine` driven by the local executor's loop
  (:class:`controller.local.executor.LocalExecutor`, with a runner that sleeps in threads
  instead of starting trainers; the ledger is a real fsync'd file);
- through hpbandster's ``BOHB`` master with the same number of Pyro4 workers (threads)
  and a Pyro4 name server on 127.0.0.1. Budgets are handed to it as plain floats, since
  numpy 2 scalars hang its serpent transport.

Printed side by side: wall time from the first trial's start to the last one's end,
worker utilisation (busy worker-seconds / (workers x wall)), idle worker time per trial,
time on the dispatch path per trial (our engine: ``next_trial`` + ``record_result``,
ledger writes included), and the cost of one model-based proposal (hpbandster's KDE
sampling; in hpbandster's master a worker waits for it, in ours a background thread
pays it). Usage::

    python benchmarks/engine_overhead.py [--workers 4] [--iterations 8] [--scale 0.5]

The end of every search has a structural tail (the last rung runs fewer trials than
there are workers) that no scheduler can fill; it counts against both engines alike.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import spec as spec_mod
from controller.engine import TrialOutcome, TrialRequest, schedule
from controller.local.devices import Slot
from controller.local.executor import LocalExecutor
from controller.local.runner import Verdict

MIN_BUDGET, MAX_BUDGET, ETA = 1.0, 27.0, 3


def synthetic_loss(config: Mapping[str, Any], budget: float) -> float:
    """A smooth loss over a few of the 17 dimensions that improves with the budget."""
    lr = math.log10(float(config["learning_rate"]))
    width = math.log2(float(config["widen_factor_1"]))
    value = (lr + 1.2) ** 2 / 4 + (width - 1) ** 2 / 16 + float(config["death_rate"]) / 10
    return min(1.0, value + 0.3 / math.sqrt(budget))


@dataclass
class Busy:
    """Worker-side intervals, recorded by the simulated trials themselves."""

    intervals: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, start: float, end: float) -> None:
        with self.lock:
            self.intervals.append((start, end))


@dataclass
class Measurement:
    name: str
    workers: int
    trials: int
    wall: float
    busy: float
    dispatch_per_trial: float | None
    proposal_seconds: list[float]

    @property
    def utilisation(self) -> float:
        return self.busy / (self.workers * self.wall)

    @property
    def idle_per_trial(self) -> float:
        return (self.workers * self.wall - self.busy) / self.trials


def _measure(name: str, workers: int, busy: Busy, dispatch: float | None,
             proposals: list[float]) -> Measurement:
    starts = [s for s, _ in busy.intervals]
    ends = [e for _, e in busy.intervals]
    return Measurement(name=name, workers=workers, trials=len(busy.intervals),
                       wall=max(ends) - min(starts),
                       busy=sum(e - s for s, e in busy.intervals),
                       dispatch_per_trial=dispatch, proposal_seconds=proposals)


# --- this engine ------------------------------------------------------------------------


class SleepRunner:
    """A runner whose trials sleep in threads (the executor's loop is the real one)."""

    def __init__(self, scale: float, busy: Busy, notify: Callable[[Verdict], None]) -> None:
        self.scale = scale
        self.busy = busy
        self.notify = notify

    def start(self, request: TrialRequest, slot: Slot) -> Slot:
        threading.Thread(target=self._run, args=(request,), daemon=True).start()
        return slot

    def _run(self, request: TrialRequest) -> None:
        start = time.monotonic()
        time.sleep(request.budget * self.scale)
        end = time.monotonic()
        self.busy.add(start, end)
        loss = synthetic_loss(request.config, request.budget)
        self.notify(Verdict(request.trial_id, request.attempt, TrialOutcome.from_record(
            {"status": "ok", "validation_error": loss, "test_error": loss})))

    def reattach(self, request: TrialRequest, slots: list[Slot]) -> Verdict:
        return Verdict(request.trial_id, request.attempt, release_reason="benchmark restart")

    def stop_all(self, reason: str) -> None:
        pass


def run_engine(workers: int, iterations: int, scale: float, seed: int) -> Measurement:
    spec = spec_mod.load_spec({
        "budgets": {"min": MIN_BUDGET, "max": MAX_BUDGET, "eta": ETA},
        "maxIterations": iterations, "parallelTrialCount": workers, "seed": seed,
        "searchSpace": {"preset": "paper"},
    })
    busy = Busy()
    slots = [Slot(i, "cpu", 1) for i in range(workers)]
    with tempfile.TemporaryDirectory() as folder:
        executor = LocalExecutor(spec, Path(folder), slots,
                                 lambda notify: SleepRunner(scale, busy, notify))
        engine = executor.run()
        stats = engine.sampler_stats()
    per_proposal = stats.model_proposal_seconds / max(1, stats.model_proposals)
    m = _measure("nas-bohb engine", workers, busy, executor.dispatch_seconds
                 / max(1, executor.dispatches), [per_proposal] if stats.model_proposals else [])
    print(f"  nas-bohb: {stats.proposals} proposals sampled ahead ({stats.stale_takes} handed "
          f"out before the newest results were absorbed, {stats.empty_takes} empty takes), "
          f"{stats.model_proposals} model-based, {per_proposal * 1000:.0f} ms each in the "
          "sampler thread")
    return m


# --- hpbandster's master ----------------------------------------------------------------


def run_hpbandster(workers: int, iterations: int, scale: float, seed: int) -> Measurement:
    import numpy as np
    from hpbandster.core import nameserver as hpns
    from hpbandster.core.worker import Worker
    from hpbandster.optimizers import BOHB
    from hpbandster.optimizers.iterations import SuccessiveHalving

    from controller import space as space_mod

    configspace = space_mod.build(spec_mod.SearchSpaceSpec(preset="paper"), seed=seed).configspace
    np.random.seed(seed)
    busy = Busy()
    proposals: list[float] = []

    class SleepWorker(Worker):
        def compute(self, config: dict[str, Any], budget: float, **_: Any) -> dict[str, Any]:
            start = time.monotonic()
            time.sleep(budget * scale)
            busy.add(start, time.monotonic())
            return {"loss": synthetic_loss(config, budget), "info": {}}

    class PlainBOHB(BOHB):
        """hpbandster's BOHB, handing plain Python values to Pyro4 (numpy 2 hangs serpent)."""

        def get_next_iteration(self, iteration: int, iteration_kwargs: Any = None) -> Any:
            s = self.max_SH_iter - 1 - (iteration % self.max_SH_iter)
            n0 = int(np.floor(self.max_SH_iter / (s + 1)) * self.eta**s)
            ns = [max(int(n0 * (self.eta ** (-i))), 1) for i in range(s + 1)]
            budgets = [float(b) for b in self.budgets[(-s - 1):]]

            def sampler(budget: float) -> Any:
                started = time.perf_counter()
                config, info = self.config_generator.get_config(budget)
                if info.get("model_based_pick"):
                    proposals.append(time.perf_counter() - started)
                plain = {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}
                return plain, info

            return SuccessiveHalving(HPB_iter=iteration, num_configs=ns, budgets=budgets,
                                     config_sampler=sampler, **(iteration_kwargs or {}))

    run_id = f"bench-{seed}"
    server = hpns.NameServer(run_id=run_id, host="127.0.0.1", port=None)
    host, port = server.start()
    pool = []
    for i in range(workers):
        w = SleepWorker(run_id=run_id, nameserver=host, nameserver_port=port, id=i)
        w.run(background=True)
        pool.append(w)
    master = PlainBOHB(configspace=configspace, run_id=run_id, nameserver=host,
                       nameserver_port=port, min_budget=MIN_BUDGET, max_budget=MAX_BUDGET,
                       eta=ETA)
    try:
        master.run(n_iterations=iterations, min_n_workers=workers)
    finally:
        master.shutdown(shutdown_workers=True)
        server.shutdown()
    mean = statistics.mean(proposals) if proposals else 0.0
    print(f"  hpbandster: {len(proposals)} model-based proposals, {mean * 1000:.0f} ms each "
          "on the master's dispatch path")
    return _measure("hpbandster master", workers, busy, None, proposals)


def ledger_append_seconds(appends: int = 40) -> float:
    """Mean time of one fsync'd ledger append on the temporary directory's file system."""
    from controller.engine import JsonlLedger

    with tempfile.TemporaryDirectory() as folder:
        ledger = JsonlLedger(str(Path(folder) / "ledger.jsonl"))
        started = time.perf_counter()
        for i in range(appends):
            ledger.append({"event": "started", "trial_id": f"0-0-{i}-b0", "attempt": 1})
        elapsed = time.perf_counter() - started
        ledger.close()
    return elapsed / appends


# --- report -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--scale", type=float, default=0.5,
                        help="seconds of sleep per budget unit (budgets are 1, 3, 9, 27)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=("engine", "hpbandster"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("hpbandster").setLevel(logging.ERROR)

    plan = schedule.plan(MIN_BUDGET, MAX_BUDGET, ETA, args.iterations)
    trials = sum(sum(b.num_configs) for b in plan)
    units = sum(b.total_budget for b in plan)
    print(f"BOHB on the 17-dimensional paper space: budgets {MIN_BUDGET:g}..{MAX_BUDGET:g} "
          f"(eta {ETA}), {args.iterations} iterations, {trials} trials, {args.workers} "
          f"workers, {units * args.scale:.0f} s of simulated training "
          f"(ideal wall {units * args.scale / args.workers:.0f} s).")
    results = []
    if args.only != "hpbandster":
        results.append(run_engine(args.workers, args.iterations, args.scale, args.seed))
    if args.only != "engine":
        results.append(run_hpbandster(args.workers, args.iterations, args.scale, args.seed))

    print()
    print(f"{'':34}" + "".join(f"{m.name:>22}" for m in results))
    rows: list[tuple[str, Callable[[Measurement], str]]] = [
        ("trials", lambda m: f"{m.trials}"),
        ("wall time (s)", lambda m: f"{m.wall:.1f}"),
        ("worker utilisation", lambda m: f"{m.utilisation * 100:.1f} %"),
        ("idle worker time per trial (ms)", lambda m: f"{m.idle_per_trial * 1000:.0f}"),
        ("dispatch path per trial (ms)", lambda m: "n/a" if m.dispatch_per_trial is None
         else f"{m.dispatch_per_trial * 1000:.2f}"),
        ("KDE proposal, mean (ms)", lambda m: f"{statistics.mean(m.proposal_seconds) * 1000:.0f}"
         if m.proposal_seconds else "n/a"),
    ]
    for label, cell in rows:
        print(f"{label:34}" + "".join(f"{cell(m):>22}" for m in results))
    print(f"\nOne fsync'd ledger append costs {ledger_append_seconds() * 1000:.2f} ms here; the "
          "engine makes two per trial (sampled+started together, then finished).")


if __name__ == "__main__":
    main()
