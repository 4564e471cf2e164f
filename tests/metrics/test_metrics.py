"""The operator's Prometheus metrics: names, labels, values and what a scrape returns."""

from __future__ import annotations

import math
import socket
import urllib.request
import warnings
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from controller import metrics


@pytest.fixture
def families() -> metrics.Families:
    return metrics.Families(CollectorRegistry())


def make_search(families: metrics.Families, name: str = "cifar") -> metrics.SearchMetrics:
    return metrics.SearchMetrics("team-a", name, families)


def sample(families: metrics.Families, name: str, **labels: str) -> float | None:
    value = families.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def all_label_names(families: metrics.Families) -> set[str]:
    names: set[str] = set()
    for family in families.registry.collect():
        for s in family.samples:
            names.update(s.labels)
    return names


# -- naming and cardinality ---------------------------------------------------------------


def test_every_series_has_the_prefix_and_base_units(families: metrics.Families) -> None:
    names = metrics.series_names(families)
    assert names, "no series registered"
    assert all(n.startswith("nas_bohb_") for n in names)
    # Durations are in seconds; nothing is in milliseconds or minutes.
    assert not any(unit in n for n in names for unit in ("_ms", "millis", "minutes", "_hours"))
    counters = [f for f in families.registry.collect() if f.type == "counter"]
    assert counters and all(
        s.name.endswith(("_total", "_created")) for f in counters for s in f.samples
    )


def test_labels_never_include_a_trial_id(families: metrics.Families) -> None:
    m = make_search(families)
    for trial in range(50):
        m.trial_started(400 if trial % 2 else 1200, wait_s=0.5)
        m.trial_finished(400 if trial % 2 else 1200, "ok", 410.0, gpus=1, loss=0.5 - trial / 100)
    m.progress({400: [0.5], 1200: [0.1, 0.2]})
    m.trial_counts({"running": 3, "succeeded": 50})
    m.correlations({400: {f"0-0-{i}": i / 10 for i in range(5)},
                    1200: {f"0-0-{i}": i / 11 for i in range(5)}})
    allowed = {"namespace", "search", "budget", "state", "budget_low", "budget_high", "le"}
    assert all_label_names(families) <= allowed

    # 50 trials over two budgets give two budget label values, not 50.
    budgets = {s.labels["budget"] for f in families.registry.collect() for s in f.samples
               if "budget" in s.labels}
    assert budgets == {"400", "1200"}


def test_unknown_finished_state_is_counted_as_unknown(families: metrics.Families) -> None:
    m = make_search(families)
    m.trial_finished(400, "exploded", 3.0)
    assert sample(families, "nas_bohb_trials_finished_total", namespace="team-a",
                  search="cifar", budget="400", state="unknown") == 1
    assert sample(families, "nas_bohb_trials_failed_total", namespace="team-a",
                  search="cifar", budget="400") == 1


# -- values -------------------------------------------------------------------------------


def test_finished_trials_feed_counters_histograms_and_best_loss(
    families: metrics.Families,
) -> None:
    m = make_search(families)
    labels = {"namespace": "team-a", "search": "cifar", "budget": "400"}
    m.trial_started(400, wait_s=2.0)
    m.trial_started(400)
    m.trial_finished(400, "ok", duration_s=430.0, gpus=2, loss=0.3, train_s=399.5)
    m.trial_finished(400, "crashed", duration_s=12.0, gpus=2)

    assert sample(families, "nas_bohb_trials_started_total", **labels) == 2
    assert sample(families, "nas_bohb_trials_finished_total", state="ok", **labels) == 1
    assert sample(families, "nas_bohb_trials_finished_total", state="crashed", **labels) == 1
    assert sample(families, "nas_bohb_trials_failed_total", **labels) == 1
    # GPU seconds: (430 + 12) x 2 GPUs; budget seconds: reported 399.5 + min(12, 400).
    assert sample(families, "nas_bohb_gpu_seconds_total", **labels) == pytest.approx(884.0)
    assert sample(families, "nas_bohb_budget_seconds_total", **labels) == pytest.approx(411.5)
    assert sample(families, "nas_bohb_trial_duration_seconds_count", **labels) == 2
    assert sample(families, "nas_bohb_trial_duration_seconds_sum", **labels) == 442.0
    assert sample(families, "nas_bohb_trial_scheduling_wait_seconds_count", **labels) == 1
    assert sample(families, "nas_bohb_budget_best_loss", **labels) == 0.3


def test_budget_best_loss_only_moves_down_and_ignores_nan(families: metrics.Families) -> None:
    m = make_search(families)
    labels = {"namespace": "team-a", "search": "cifar", "budget": "1200"}
    m.trial_finished(1200, "ok", 1.0, loss=0.2)
    m.trial_finished(1200, "ok", 1.0, loss=0.25)
    m.trial_finished(1200, "diverged", 1.0, loss=math.nan)
    m.budget_best(1200, math.inf)
    assert sample(families, "nas_bohb_budget_best_loss", **labels) == 0.2
    m.trial_finished(1200, "ok", 1.0, loss=0.1)
    assert sample(families, "nas_bohb_budget_best_loss", **labels) == 0.1


def test_incumbent_ignores_non_finite_losses(families: metrics.Families) -> None:
    m = make_search(families)
    m.incumbent(0.09)
    m.incumbent(math.nan)
    assert sample(families, "nas_bohb_best_loss", namespace="team-a", search="cifar") == 0.09


def test_trial_counts_zero_the_states_not_given(families: metrics.Families) -> None:
    m = make_search(families)
    m.trial_counts({"running": 4, "pending": 2})
    m.trial_counts({"running": 1, "succeeded": 5})
    got = {s: sample(families, "nas_bohb_trials", namespace="team-a", search="cifar", state=s)
           for s in metrics.TRIAL_STATES}
    assert got == {"pending": 0, "running": 1, "succeeded": 5, "failed": 0, "cancelled": 0}


def test_progress_reports_mean_per_budget_and_drops_idle_budgets(
    families: metrics.Families,
) -> None:
    m = make_search(families)
    m.progress({400: [0.2, 0.6], 1200: [0.1]})
    b400 = {"namespace": "team-a", "search": "cifar", "budget": "400"}
    b1200 = {**b400, "budget": "1200"}
    assert sample(families, "nas_bohb_trial_progress_ratio", **b400) == pytest.approx(0.4)
    # Progress reports do not count running trials: trials_running() does.
    assert sample(families, "nas_bohb_trials_running", **b400) is None

    m.progress({1200: [0.5]})
    assert sample(families, "nas_bohb_trial_progress_ratio", **b400) is None
    assert sample(families, "nas_bohb_trial_progress_ratio", **b1200) == 0.5
    m.progress({1200: []})
    assert sample(families, "nas_bohb_trial_progress_ratio", **b1200) is None


def test_trials_running_counts_by_budget_and_zeroes_idle_budgets(
    families: metrics.Families,
) -> None:
    m = make_search(families)
    b400 = {"namespace": "team-a", "search": "cifar", "budget": "400"}
    b1200 = {**b400, "budget": "1200"}
    m.trials_running({400: 3, 1200: 1})
    m.progress({400: [0.5]})  # Only one of the three has reported yet.
    assert sample(families, "nas_bohb_trials_running", **b400) == 3
    assert sample(families, "nas_bohb_trials_running", **b1200) == 1
    m.trials_running({1200: 2})
    assert sample(families, "nas_bohb_trials_running", **b400) == 0
    assert sample(families, "nas_bohb_trials_running", **b1200) == 2
    m.trials_running({})
    assert sample(families, "nas_bohb_trials_running", **b1200) == 0
    m.forget()
    assert sample(families, "nas_bohb_trials_running", **b1200) is None


def test_unknown_duration_observes_no_duration(families: metrics.Families) -> None:
    m = make_search(families)
    labels = {"namespace": "team-a", "search": "cifar", "budget": "400"}
    m.trial_finished(400, "ok", duration_s=None, gpus=2, loss=0.3, train_s=390.0)
    m.trial_finished(400, "cancelled", duration_s=None, gpus=2)
    assert sample(families, "nas_bohb_trials_finished_total", state="ok", **labels) == 1
    assert sample(families, "nas_bohb_trial_duration_seconds_count", **labels) is None
    assert sample(families, "nas_bohb_gpu_seconds_total", **labels) is None
    assert sample(families, "nas_bohb_budget_seconds_total", **labels) == 390.0
    assert sample(families, "nas_bohb_budget_best_loss", **labels) == 0.3


def test_report_start_time_from_progress_and_result() -> None:
    assert metrics.report_start_time({"reportedAt": 1000.0, "trainSeconds": 40.0}) == 960.0
    assert metrics.report_start_time(
        {"reported_at": 1000.0, "wall_seconds": 50.0, "train_seconds": 40.0}) == 950.0
    assert metrics.report_start_time({"reported_at": 1000.0, "train_seconds": 40.0}) == 960.0
    assert metrics.report_start_time({"epoch": 1, "trainSeconds": 4.0}) is None
    assert metrics.report_start_time({"reportedAt": 1000.0}) is None
    assert metrics.report_start_time({"reportedAt": "soon", "trainSeconds": 1}) is None
    assert metrics.report_start_time({"reportedAt": 1000.0, "trainSeconds": -1}) is None
    assert metrics.report_start_time({"reportedAt": math.nan, "trainSeconds": 1}) is None
    assert metrics.report_start_time({"reportedAt": True, "trainSeconds": 1}) is None


def test_scheduling_wait_seconds() -> None:
    report = {"reportedAt": 1030.0, "trainSeconds": 20.0}
    assert metrics.scheduling_wait_seconds(1000.0, report, 1031.0) == 10.0
    # Without a start time in the report: when the operator read it, if that counts.
    assert metrics.scheduling_wait_seconds(1000.0, {"epoch": 1}, 1012.5) == 12.5
    assert metrics.scheduling_wait_seconds(1000.0, {"epoch": 1}, 1012.5,
                                           seen_counts=False) is None
    # Adopted Jobs still use the report's start time.
    assert metrics.scheduling_wait_seconds(1000.0, report, 5000.0, seen_counts=False) == 10.0
    # Unknown creation: nothing; clock skew: clamped to [0, seen - created].
    assert metrics.scheduling_wait_seconds(None, report, 1031.0) is None
    assert metrics.scheduling_wait_seconds(1000.0, {"reportedAt": 990.0, "trainSeconds": 5},
                                           1031.0) == 0.0
    assert metrics.scheduling_wait_seconds(1000.0, {"reportedAt": 2000.0, "trainSeconds": 0},
                                           1031.0) == 31.0


def test_scheduling_wait_is_observed_per_budget(families: metrics.Families) -> None:
    m = make_search(families)
    labels = {"namespace": "team-a", "search": "cifar", "budget": "400"}
    m.trial_started(400)
    m.scheduling_wait(400, 3.0)
    m.scheduling_wait(400, -1.0)  # Dropped.
    m.scheduling_wait(400, math.inf)  # Dropped.
    assert sample(families, "nas_bohb_trial_scheduling_wait_seconds_count", **labels) == 1
    assert sample(families, "nas_bohb_trial_scheduling_wait_seconds_sum", **labels) == 3.0


def test_parse_timestamp() -> None:
    assert metrics.parse_timestamp("1970-01-01T00:01:40Z") == 100.0
    assert metrics.parse_timestamp("1970-01-01T00:01:40+00:00") == 100.0
    assert metrics.parse_timestamp("1970-01-01T00:01:40") == 100.0
    assert metrics.parse_timestamp("yesterday") is None
    assert metrics.parse_timestamp(None) is None
    assert metrics.parse_timestamp("") is None


def test_ledger_losses_replays_successful_bohb_results() -> None:
    ok = {"status": "ok", "validation_error": 0.3}
    events = [
        {"event": "search_started", "spec": {}},
        {"event": "started", "trial_id": "t1", "config_id": "c1", "kind": "bohb",
         "budget": 400, "attempt": 1},
        {"event": "released", "trial_id": "t1", "attempt": 1},
        {"event": "started", "trial_id": "t1", "config_id": "c1", "kind": "bohb",
         "budget": 400, "attempt": 2},
        {"event": "finished", "trial_id": "t1", "outcome": ok},
        {"event": "started", "trial_id": "t2", "config_id": "c2", "kind": "bohb",
         "budget": 400, "attempt": 1},
        {"event": "finished", "trial_id": "t2", "outcome": {"status": "crashed",
                                                             "validation_error": None}},
        {"event": "started", "trial_id": "t3", "config_id": "c1", "kind": "bohb",
         "budget": 1200, "attempt": 1},
        {"event": "finished", "trial_id": "t3", "outcome": {**ok, "validation_error": 0.2}},
        {"event": "started", "trial_id": "b1", "config_id": "base", "kind": "baseline",
         "budget": 1200, "attempt": 1},
        {"event": "finished", "trial_id": "b1", "outcome": ok},
        {"event": "finished", "trial_id": "ghost", "outcome": ok},
    ]
    assert metrics.ledger_losses(events) == {400.0: {"c1": 0.3}, 1200.0: {"c1": 0.2}}
    assert metrics.ledger_losses([]) == {}


def test_dispatch_timer_observes_one_dispatch(families: metrics.Families) -> None:
    m = make_search(families)
    with m.time_dispatch():
        sum(range(1000))
    assert sample(families, "nas_bohb_engine_dispatch_seconds_count",
                  namespace="team-a", search="cifar") == 1


def test_forget_removes_only_that_search(families: metrics.Families) -> None:
    a, b = make_search(families, "a"), make_search(families, "b")
    for m in (a, b):
        m.trial_started(400, wait_s=1.0)
        m.trial_finished(400, "ok", 5.0, gpus=1, loss=0.5)
        m.trial_counts({"succeeded": 1})
        m.incumbent(0.5)
        m.progress({400: [0.5]})
    a.forget()
    searches = {s.labels.get("search") for f in families.registry.collect() for s in f.samples}
    assert searches == {"b"}


# -- budget rank correlation (Falkner et al. 2018; Zela et al. 2018) ------------------------


def test_correlation_is_spearman_between_adjacent_budgets_only() -> None:
    losses = {
        1.0: {"c1": 0.9, "c2": 0.8, "c3": 0.7, "c4": 0.6},
        3.0: {"c1": 0.5, "c2": 0.6, "c3": 0.4, "c4": 0.3},  # one swap: rho = 0.8
        9.0: {"c1": 0.1, "c2": 0.2, "c3": 0.3, "c4": 0.4},  # reversed w.r.t. 3.0 mostly
    }
    found = metrics.budget_rank_correlations(losses)
    assert [(c.low, c.high, c.samples) for c in found] == [(1.0, 3.0, 4), (3.0, 9.0, 4)]
    assert found[0].rho == pytest.approx(0.8)
    assert found[1].rho == pytest.approx(-0.8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.floats(-5, 5, allow_nan=False)),
                min_size=2, max_size=40))
def test_spearman_rho_equals_scipys_ties_included(pairs: list[tuple[int, float]]) -> None:
    from scipy import stats  # the reference; the operator itself does not import scipy

    x, y = [float(a) for a, _ in pairs], [b for _, b in pairs]
    ours = metrics.spearman_rho(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input (rho undefined)
        reference = float(stats.spearmanr(x, y).statistic)
    if math.isfinite(reference):
        assert ours == pytest.approx(reference, abs=1e-9)
    else:
        assert ours is None


def test_correlation_needs_three_common_finite_configurations() -> None:
    losses = {
        1.0: {"c1": 0.9, "c2": 0.8, "c3": math.nan, "c4": 0.1},
        3.0: {"c1": 0.5, "c2": 0.6, "c3": 0.4},
    }
    assert metrics.budget_rank_correlations(losses) == []


def test_correlation_gauges_carry_the_budget_pair(families: metrics.Families) -> None:
    m = make_search(families)
    m.correlations({400: {"a": 1, "b": 2, "c": 3}, 1200: {"a": 1, "b": 3, "c": 2}})
    labels = {"namespace": "team-a", "search": "cifar", "budget_low": "400",
              "budget_high": "1200"}
    assert sample(families, "nas_bohb_budget_rank_correlation", **labels) == pytest.approx(0.5)
    assert sample(families, "nas_bohb_budget_rank_correlation_samples", **labels) == 3


# -- a real scrape over HTTP --------------------------------------------------------------


@pytest.fixture
def served(families: metrics.Families) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, thread = start_http_server(port, addr="127.0.0.1", registry=families.registry)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_scraped_series_move_as_trials_finish(families: metrics.Families, served: str) -> None:
    m = make_search(families)
    key = frozenset({"namespace": "team-a", "search": "cifar", "budget": "400"}.items())
    ok_key = frozenset({**dict(key), "state": "ok"}.items())

    m.trial_started(400, wait_s=0.3)
    before = scrape(served)
    assert before[("nas_bohb_trials_started_total", key)] == 1
    assert ("nas_bohb_trials_finished_total", ok_key) not in before

    m.trial_finished(400, "ok", 12.0, gpus=1, loss=0.42)
    m.incumbent(0.42)
    after = scrape(served)
    assert after[("nas_bohb_trials_finished_total", ok_key)] == 1
    assert after[("nas_bohb_gpu_seconds_total", key)] == 12.0
    assert after[("nas_bohb_budget_best_loss", key)] == 0.42
    search_key = frozenset({"namespace": "team-a", "search": "cifar"}.items())
    assert after[("nas_bohb_best_loss", search_key)] == 0.42
