"""The engine's decisions: brackets, promotions, failures, limits, and replay from the ledger.

These tests drive the engine directly with a scripted objective (no processes); the
model is hpbandster's real KDE generator over small spaces.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.engine import (
    MAX_ATTEMPTS,
    Engine,
    LedgerError,
    MemoryLedger,
    TrialOutcome,
    TrialRequest,
    hpbandster_io,
)
from tests.controller.factories import CONSTANTS, make_spec, ok, spec_dict

Outcome = TrialOutcome | str  # a string means "release with this reason"

# statsmodels' KDE warns about its future random default; the model's stream is our own.
pytestmark = pytest.mark.filterwarnings("ignore:After 0.17:FutureWarning")


class ModelSpy:
    """Records every result the BOHB model receives."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[tuple[dict[str, Any], float, float]] = []
        model = engine._model
        assert model is not None
        original = model.observe

        def observe(values: Any, budget: float, loss: float) -> None:
            self.seen.append((dict(values), budget, loss))
            original(values, budget, loss)

        model.observe = observe  # type: ignore[method-assign]


def engine_for(ledger: MemoryLedger | None = None, **overrides: Any) -> Engine:
    return Engine(make_spec(**overrides), ledger or MemoryLedger(), prefetch=False)


def drive(engine: Engine, outcome: Callable[[TrialRequest], Outcome], parallel: int = 2,
          rng: random.Random | None = None, max_steps: int = 10_000) -> list[str]:
    """Run the search to the end with ``parallel`` simulated workers; trial ids in start order."""
    rng = rng or random.Random(0)
    running: list[TrialRequest] = list(engine.unfinished())
    order: list[str] = []
    for _ in range(max_steps):
        while len(running) < parallel:
            request = engine.next_trial()
            if request is None:
                break
            running.append(request)
            order.append(request.trial_id)
        if not running:
            assert engine.finished, engine.condition()
            return order
        done = running.pop(rng.randrange(len(running)))
        result = outcome(done)
        if isinstance(result, str):
            engine.release(done.trial_id, result)
        else:
            engine.record_result(done.trial_id, result)
    raise AssertionError("the search did not end")


def crash(_: TrialRequest) -> TrialOutcome:
    return TrialOutcome.failure("crashed", "exit code 1")


# --- schedule in action -----------------------------------------------------------------


def test_search_runs_the_planned_brackets_and_budgets() -> None:
    engine = engine_for()
    drive(engine, ok)
    per_budget: dict[float, int] = {}
    for r in engine.results():
        per_budget[r.budget] = per_budget.get(r.budget, 0) + 1
    # Iterations 0..3 on budgets 1, 3, 9: brackets (9,3,1), (3,1), (3,), (9,3,1).
    assert per_budget == {1.0: 18, 3.0: 6 + 3, 9.0: 2 + 1 + 3}
    assert engine.condition().reason == "MaxIterationsReached"
    assert [c[0] for c in engine.hpbandster_configs()][:2] == [[0, 0, 0], [0, 0, 1]]


def test_rung_promotes_the_configurations_with_the_lowest_loss() -> None:
    engine = engine_for(maxIterations=1)
    drive(engine, ok, parallel=9)
    first = [r for r in engine.results() if r.budget == 1.0]
    best3 = sorted(first, key=lambda r: r.outcome.loss)[:3]
    promoted = {r.config_id for r in engine.results() if r.budget == 3.0}
    assert promoted == {r.config_id for r in best3}


def test_next_bracket_starts_while_a_rung_waits_on_stragglers() -> None:
    engine = engine_for(parallelTrialCount=10)
    first = [engine.next_trial() for _ in range(9)]
    assert all(r is not None and r.iteration == 0 for r in first)
    for request in first[:8]:
        assert request is not None
        engine.record_result(request.trial_id, ok(request))
    # Rung 0 of iteration 0 waits on one straggler: a free worker gets iteration 1.
    extra = engine.next_trial()
    assert extra is not None and extra.iteration == 1 and extra.budget == 3.0


def test_trial_ids_name_iteration_stage_index_and_budget_index() -> None:
    engine = engine_for(maxIterations=2)
    ids = drive(engine, ok)
    assert "0-0-0-b0" in ids and "1-0-0-b1" in ids
    assert all(i.split("-")[1] == "0" for i in ids)


# --- failures ---------------------------------------------------------------------------


def test_crashed_runs_reach_the_model_as_infinity() -> None:
    engine = engine_for(maxIterations=1)
    spy = ModelSpy(engine)
    drive(engine, lambda r: crash(r) if r.config_id == "0-0-0" else ok(r))
    losses = {tuple(sorted(v.items())): loss for v, _, loss in spy.seen}
    crashed = [loss for loss in losses.values() if math.isinf(loss)]
    assert len(crashed) == 1 and crashed[0] > 0
    assert len(spy.seen) == len(engine.results())


def test_infrastructure_failures_never_reach_the_model_and_the_trial_runs_again() -> None:
    engine = engine_for(maxIterations=1)
    spy = ModelSpy(engine)
    first = engine.next_trial()
    assert first is not None
    engine.release(first.trial_id, "killed from outside by SIGKILL")
    assert spy.seen == []
    again = [engine.next_trial() for _ in range(9)]
    retried = [r for r in again if r is not None and r.trial_id == first.trial_id]
    assert len(retried) == 1 and retried[0].attempt == 2
    assert retried[0].config == first.config


def test_a_trial_lost_too_often_is_abandoned_unseen_and_counted_as_failed() -> None:
    engine = engine_for(maxIterations=1)
    spy = ModelSpy(engine)
    target = engine.next_trial()
    assert target is not None
    for attempt in range(MAX_ATTEMPTS):
        engine.release(target.trial_id, f"lost {attempt}")
        if attempt < MAX_ATTEMPTS - 1:
            while (r := engine.next_trial()) is not None and r.trial_id != target.trial_id:
                engine.record_result(r.trial_id, ok(r))
    assert engine.progress().abandoned == 1
    assert engine.progress().trials_failed == 1
    assert all(v != target.config for v, _, _ in spy.seen)
    drive(engine, ok)
    assert target.config_id not in {r.config_id for r in engine.results() if r.budget > 1}


def test_interrupted_trials_are_reissued_without_ever_being_abandoned() -> None:
    engine = engine_for(maxIterations=1)
    target = engine.next_trial()
    assert target is not None
    for _ in range(MAX_ATTEMPTS + 2):
        engine.release(target.trial_id, "the controller received SIGINT", counts=False)
        again = engine.next_trial()
        assert again is not None and again.trial_id == target.trial_id
    assert engine.progress().abandoned == 0


def test_failed_runs_never_advance_and_empty_slots_get_new_samples() -> None:
    engine = engine_for(maxIterations=1)
    # Only configuration 0-0-4 succeeds on the first rung: one promotion, two new samples.
    drive(engine, lambda r: ok(r) if r.config_id == "0-0-4" or r.budget > 1 else crash(r))
    second = sorted(str(r.config_id) for r in engine.results() if r.budget == 3.0)
    assert second == ["0-0-4", "0-1-1", "0-1-2"]


def test_a_second_result_for_a_trial_is_ignored() -> None:
    engine = engine_for()
    request = engine.next_trial()
    assert request is not None
    engine.record_result(request.trial_id, ok(request))
    engine.record_result(request.trial_id, crash(request))
    assert engine.results()[0].outcome.ok


# --- limits -----------------------------------------------------------------------------


def test_max_trial_count_stops_new_trials() -> None:
    engine = engine_for(maxTrialCount=5)
    ids = drive(engine, ok)
    assert len(ids) == 5
    assert engine.condition().reason == "MaxTrialCountReached"


def test_a_search_in_which_every_trial_failed_ends_failed_not_succeeded() -> None:
    engine = engine_for(maxTrialCount=3, maxFailedTrialCount=10)
    assert len(drive(engine, crash)) == 3
    condition = engine.condition()
    assert (condition.type, condition.reason) == ("Failed", "NoSuccessfulTrial")
    assert "3 trials were started" in condition.message and engine.incumbent() is None


def test_too_many_failures_fail_the_search() -> None:
    engine = engine_for(maxFailedTrialCount=2)
    drive(engine, crash)
    condition = engine.condition()
    assert (condition.type, condition.reason) == ("Failed", "MaxFailedTrialCountExceeded")
    # The third failure stops new trials; the one still running (two workers) may finish.
    assert 3 <= len(engine.results()) <= 4
    assert engine.progress().trials_started == len(engine.results())


def test_time_limit_counts_only_controller_sessions() -> None:
    now = [1000.0]
    spec = make_spec(maxIterations=None, timeLimitSeconds=100)
    ledger = MemoryLedger()
    engine = Engine(spec, ledger, prefetch=False, clock=lambda: now[0])
    request = engine.next_trial()
    assert request is not None
    now[0] += 60
    engine.record_result(request.trial_id, ok(request))
    # The controller is down for an hour; it does not count.
    now[0] += 3600
    engine = Engine(spec, ledger, prefetch=False, clock=lambda: now[0])
    second = engine.next_trial()
    assert second is not None
    now[0] += 50
    assert engine.next_trial() is None
    engine.record_result(second.trial_id, ok(second))
    assert engine.finished
    assert engine.condition().reason == "TimeLimitReached"
    assert engine.progress().elapsed_seconds == pytest.approx(110)


# --- baselines --------------------------------------------------------------------------


def test_baselines_run_once_at_the_largest_budget_unseen_by_the_model() -> None:
    engine = engine_for(maxIterations=2, baselines=[{"name": "r18", "config": CONSTANTS}])
    spy = ModelSpy(engine)
    ids = drive(engine, ok)
    assert ids.count("baseline-r18") == 1
    (baseline,) = engine.baseline_results()
    assert baseline.budget == 9.0 and baseline.config == CONSTANTS
    assert len(spy.seen) == len(engine.results())


# --- the ledger as the source of truth --------------------------------------------------


def _state(engine: Engine) -> dict[str, Any]:
    p = engine.progress()
    return {
        "results": [(r.trial_id, r.outcome.status, r.outcome.validation_error)
                    for r in engine.results()],
        "configs": engine.hpbandster_configs(),
        "incumbent": engine.incumbent(),
        "counts": (p.trials_started, p.trials_finished, p.trials_failed, p.releases),
        "model": engine._model.model_budgets if engine._model else None,
    }


def test_replaying_the_ledger_rebuilds_the_same_search() -> None:
    ledger = MemoryLedger()
    engine = engine_for(ledger, maxIterations=6, searchSpace=spec_dict()["searchSpace"])
    drive(engine, lambda r: crash(r) if r.config_id == "2-0-1" else ok(r), parallel=3)
    replayed = engine_for(MemoryLedger(ledger.read_all()), maxIterations=6)
    assert _state(replayed) == _state(engine)
    assert replayed.finished
    assert replayed._model is not None and replayed._model.model_budgets


def test_a_ledger_from_a_different_search_shape_is_refused() -> None:
    ledger = MemoryLedger()
    engine_for(ledger)
    with pytest.raises(LedgerError, match=r"spec\.budgets\.max"):
        engine_for(ledger, budgets={"min": 1, "max": 27, "eta": 3})


def test_knobs_may_change_between_sessions() -> None:
    ledger = MemoryLedger()
    engine_for(ledger, maxIterations=1)
    engine = engine_for(ledger, maxIterations=2, parallelTrialCount=5, maxFailedTrialCount=9)
    drive(engine, ok)
    assert engine.progress().iterations_done == 2


def test_a_restarted_search_does_not_repeat_earlier_proposals() -> None:
    ledger = MemoryLedger()
    first = engine_for(ledger)
    before = [first.next_trial() for _ in range(4)]
    again = engine_for(ledger)
    after = [again.next_trial() for _ in range(4)]
    configs = [r.config for r in before + after if r is not None]
    assert len(configs) == 8
    assert all(configs[i] != configs[j] for i in range(8) for j in range(i))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), cut=st.floats(0.0, 1.0), survive=st.booleans(),
       parallel=st.integers(1, 4))
def test_killing_at_any_point_loses_no_result_and_repeats_no_trial(
        seed: int, cut: float, survive: bool, parallel: int) -> None:
    rng = random.Random(seed)

    def outcome(r: TrialRequest) -> Outcome:
        roll = rng.random()
        return crash(r) if roll < 0.1 else "evicted" if roll < 0.15 else ok(r)

    # Few KDE candidates per proposal keep each example fast; the replay logic is the same.
    cheap = {"numSamples": 4}
    full = MemoryLedger()
    reference = engine_for(full, maxIterations=4, bohb=cheap)
    drive(reference, outcome, parallel, random.Random(seed))

    # The controller dies after some prefix of its decisions reached the ledger.
    events = full.read_all()
    prefix = events[: max(1, int(len(events) * cut))]
    ledger = MemoryLedger(prefix)
    restarted = engine_for(ledger, maxIterations=4, bohb=cheap)
    finished_before = {e["trial_id"]: e["outcome"] for e in prefix if e["event"] == "finished"}
    for request in restarted.unfinished():
        # Its trainer either survived (and reports) or is gone (released, re-run).
        if survive:
            restarted.record_result(request.trial_id, ok(request))
        else:
            restarted.release(request.trial_id, "gone while the controller was down",
                              counts=False)
    drive(restarted, ok, parallel, random.Random(seed + 1))

    after = ledger.read_all()
    finished_after = {e["trial_id"]: e["outcome"] for e in after if e["event"] == "finished"}
    assert all(finished_after[t] == o for t, o in finished_before.items())
    # A trial starts again only after a release.
    starts: dict[str, int] = {}
    releases: dict[str, int] = {}
    for e in after:
        if e["event"] == "started":
            starts[e["trial_id"]] = starts.get(e["trial_id"], 0) + 1
        if e["event"] == "released":
            releases[e["trial_id"]] = releases.get(e["trial_id"], 0) + 1
    assert all(n == 1 + releases.get(t, 0) for t, n in starts.items())
    # Every configuration sampled before the kill is still the same configuration after it.
    sampled_before = {e["config_id"]: e["config"] for e in prefix if e["event"] == "sampled"}
    sampled_after = {e["config_id"]: e["config"] for e in after if e["event"] == "sampled"}
    assert all(sampled_after[c] == v for c, v in sampled_before.items())
    assert restarted.finished
    assert restarted.progress().iterations_done == 4


# --- sampling off the dispatch path -----------------------------------------------------


def test_a_free_worker_never_waits_for_the_model() -> None:
    spec = make_spec(parallelTrialCount=2)
    engine = Engine(spec, MemoryLedger(), prefetch=True)
    try:
        model = engine._model
        assert model is not None
        original = model.propose

        def slow_propose() -> Any:
            time.sleep(0.3)
            return original()

        model.propose = slow_propose  # type: ignore[method-assign]
        waits = []
        started = time.monotonic()
        issued = 0
        while issued < 6 and time.monotonic() - started < 30:
            t0 = time.perf_counter()
            request = engine.next_trial()
            waits.append(time.perf_counter() - t0)
            if request is None:
                time.sleep(0.02)
                continue
            issued += 1
        assert issued == 6
        assert max(waits) < 0.1, f"next_trial blocked for {max(waits):.3f} s"
    finally:
        engine.close()


def test_prefetched_proposals_follow_new_results() -> None:
    engine = Engine(make_spec(), MemoryLedger(), prefetch=True)
    try:
        for _ in range(3):
            assert engine.wait_idle(30)
            request = engine.next_trial()
            assert request is not None
            engine.record_result(request.trial_id, ok(request))
        assert engine.wait_idle(30)
        stats = engine.sampler_stats()
        assert stats.observations == 3
    finally:
        engine.close()


# --- hpbandster's files -----------------------------------------------------------------


def test_hpbandster_reads_the_result_files(tmp_path: Path) -> None:
    from hpbandster.core.result import logged_results_to_HBS_result

    engine = engine_for(maxIterations=4)
    drive(engine, lambda r: crash(r) if r.config_id == "1-0-0" else ok(r))
    hpbandster_io.write_files(engine, tmp_path)
    result = logged_results_to_HBS_result(str(tmp_path))
    incumbent = engine.incumbent()
    assert incumbent is not None
    assert result.get_incumbent_id() == tuple(int(x) for x in incumbent.config_id.split("-"))
    runs = result.get_all_runs()
    assert len(runs) == len(engine.results())
    assert sum(r.loss is None for r in runs) == 1
    id2conf = result.get_id2config_mapping()
    assert id2conf[(0, 0, 0)]["config_info"] == {"model_based_pick": False}
