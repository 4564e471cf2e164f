"""The trainer's reporter: what it sends, how it retries, that it never stops training."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import pytest

from trainer import report


def make_target(**overrides: Any) -> report.KubeTarget:
    values: dict[str, Any] = {"api_url": "https://127.0.0.1:6443", "namespace": "ns",
                              "search": "s", "trial_id": "0-0-1-b0", "attempt": 2,
                              "token_path": "/nonexistent/token", "ca_path": None,
                              "interval_seconds": 0.0, "deadline_seconds": 5.0}
    values.update(overrides)
    return report.KubeTarget(**values)


class Recorder:
    """A fake transport: fails the first ``failures`` calls with ``error``."""

    def __init__(self, failures: int = 0, retryable: bool = True) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.failures = failures
        self.retryable = retryable
        self.lock = threading.Lock()

    def __call__(self, body: bytes) -> None:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise report.PatchError("HTTP 503: busy", retryable=self.retryable)
            self.bodies.append(json.loads(body))


def make_reporter(send: Recorder, **target: Any) -> report.KubeReporter:
    return report.KubeReporter(make_target(**target), send=send, sleep=lambda _: None)


def test_result_goes_into_the_trials_own_entry_without_nan() -> None:
    send = Recorder()
    make_reporter(send).on_result({"status": "diverged", "validation_error": math.nan,
                                   "train_loss": math.inf, "learning_curve": []})
    (body,) = send.bodies
    entry = body["status"]["trials"]["0-0-1-b0"]["result"]
    assert entry["validation_error"] is None and entry["train_loss"] is None
    assert entry["attempt"] == 2 and entry["status"] == "diverged"
    assert set(body) == {"status"} and set(body["status"]) == {"trials"}


def test_long_learning_curves_are_thinned_keeping_both_ends() -> None:
    send = Recorder()
    curve = [{"epoch": i} for i in range(1000)]
    make_reporter(send).on_result({"status": "ok", "learning_curve": curve})
    sent = send.bodies[0]["status"]["trials"]["0-0-1-b0"]["result"]["learning_curve"]
    assert len(sent) == report.MAX_CURVE_POINTS
    assert sent[0] == {"epoch": 0} and sent[-1] == {"epoch": 999}


def test_transient_errors_are_retried_until_the_result_is_delivered() -> None:
    send = Recorder(failures=3)
    reporter = make_reporter(send)
    reporter.on_result({"status": "ok", "validation_error": 0.1})
    assert len(send.bodies) == 1 and reporter.stats.retries == 3


def test_permanent_errors_give_up_without_raising() -> None:
    send = Recorder(failures=100, retryable=False)
    reporter = make_reporter(send)
    reporter.on_result({"status": "ok", "validation_error": 0.1})
    assert send.bodies == [] and reporter.stats.failed == 1 and reporter.stats.retries == 0


def test_progress_is_sent_in_camel_case_and_never_after_the_result() -> None:
    send = Recorder()
    reporter = make_reporter(send)
    reporter.on_progress({"epoch": 1, "train_seconds": 10.0, "budget_seconds": 400,
                          "train_loss": math.nan, "lr": 0.1, "validation_error": None})
    reporter.on_result({"status": "ok", "validation_error": 0.1})
    reporter.on_progress({"epoch": 2, "train_seconds": 20.0})
    entries = [b["status"]["trials"]["0-0-1-b0"] for b in send.bodies]
    assert "result" in entries[-1]
    progress = [e["progress"] for e in entries if "progress" in e]
    assert all(p["epoch"] == 1 for p in progress)
    if progress:
        assert progress[0]["trainSeconds"] == 10.0 and progress[0]["trainLoss"] is None


def test_missing_environment_is_named() -> None:
    with pytest.raises(report.ReportConfigError) as caught:
        report.KubeTarget.from_env({"NAS_BOHB_SEARCH_NAME": "s"})
    assert "NAS_BOHB_SEARCH_NAMESPACE" in str(caught.value)
    assert "KUBERNETES_SERVICE_HOST" in str(caught.value)


def test_environment_gives_the_status_url_and_credentials_folder() -> None:
    target = report.KubeTarget.from_env({
        "NAS_BOHB_SEARCH_NAMESPACE": "team-a", "NAS_BOHB_SEARCH_NAME": "cifar",
        "NAS_BOHB_TRIAL_ID": "1-0-2-b0", "NAS_BOHB_TRIAL_ATTEMPT": "3",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443",
        "NAS_BOHB_SERVICEACCOUNT_DIR": "/sa"})
    assert target.status_url == ("https://10.0.0.1:443/apis/nas-bohb.io/v1alpha1/namespaces/"
                                 "team-a/jointsearches/cifar/status")
    assert (target.token_path, target.attempt) == ("/sa/token", 3)


def test_unknown_reporter_kind_is_refused_and_none_reports_nothing() -> None:
    with pytest.raises(report.ReportConfigError):
        report.make_reporter("carrier-pigeon")
    assert isinstance(report.make_reporter("none"), report.NullReporter)


def test_a_reporter_without_a_readable_token_does_not_raise() -> None:
    reporter = report.KubeReporter(make_target())
    reporter.on_result({"status": "ok", "validation_error": 0.1})
    assert reporter.stats.failed == 1 and "token" in reporter.stats.last_error
