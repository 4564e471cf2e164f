"""The reporter's termination message: compact, JSON-safe, at most 4096 bytes, never fatal."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from trainer import report

LIMIT = report.MAX_TERMINATION_MESSAGE_BYTES
TRIAL = "3-0-7-b2"


def make_entry(**overrides: Any) -> dict[str, Any]:
    """A result entry as the reporter sends it: the record, curve thinned, attempt added."""
    record: dict[str, Any] = {
        "status": "ok", "validation_error": 0.1234, "test_error": 0.1301,
        "validation_loss": 0.41, "train_loss": 0.38, "budget_seconds": 400.0,
        "train_seconds": 399.8, "wall_seconds": 431.2, "epochs": 12.5, "steps": 4880,
        "n_params": 2_912_345, "device": "cuda:0 (NVIDIA H100)", "torch_version": "2.4.0",
        "trainer_version": "0.1.0", "seed": 7, "message": "",
        "config": {f"parameter_{i}": 0.123456789 * i for i in range(17)},
        "learning_curve": [{"epoch": i, "train_seconds": 33.3 * i, "lr": 0.0812345,
                            "train_loss": 1.2345678, "validation_error": None}
                           for i in range(500)],
    }
    record.update(overrides)
    entry = report.result_entry(record)
    entry["attempt"] = 2
    return entry


def decode(data: bytes | None) -> dict[str, Any]:
    assert data is not None

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a termination message")

    decoded: dict[str, Any] = json.loads(data, parse_constant=refuse)
    return decoded


def test_a_usual_result_goes_whole_with_its_trial_and_attempt() -> None:
    entry = make_entry(learning_curve=[{"epoch": 1, "train_loss": 1.0}])
    message = decode(report.termination_message(TRIAL, entry))
    assert message == {"trialId": TRIAL, "result": entry}
    assert message["result"]["attempt"] == 2


def test_the_message_is_compact_json_without_nan_or_infinity() -> None:
    entry = make_entry(status="diverged", validation_error=math.nan, train_loss=-math.inf,
                       learning_curve=[{"epoch": 1, "train_loss": math.nan}])
    data = report.termination_message(TRIAL, entry)
    assert data is not None and b" " not in data.replace(b"cuda:0 (NVIDIA H100)", b"")
    result = decode(data)["result"]
    assert result["validation_error"] is None and result["train_loss"] is None
    assert result["learning_curve"] == [{"epoch": 1, "train_loss": None}]


def test_a_long_learning_curve_is_dropped_first_and_the_rest_kept() -> None:
    entry = make_entry()
    assert len(json.dumps(entry)) > LIMIT  # 32 thinned points do not fit beside the rest.
    data = report.termination_message(TRIAL, entry)
    assert data is not None and len(data) <= LIMIT
    result = decode(data)["result"]
    assert "learning_curve" not in result and result["learning_curve_dropped"] is True
    assert result["config"] == entry["config"]
    assert {k: v for k, v in result.items() if k != "learning_curve_dropped"} == {
        k: v for k, v in entry.items() if k != "learning_curve"}


def test_a_huge_message_is_cut_to_fit_keeping_the_essentials() -> None:
    entry = make_entry(status="error", validation_error=None, test_error=None,
                       message="Traceback: é " * 2000)
    data = report.termination_message(TRIAL, entry)
    assert data is not None and LIMIT - 64 < len(data) <= LIMIT
    result = decode(data)["result"]
    assert "config" not in result and "learning_curve" not in result
    assert (result["status"], result["attempt"], result["epochs"]) == ("error", 2, 12.5)
    assert entry["message"].startswith(result["message"]) and result["message"]


@pytest.mark.parametrize("limit", [200, 300, 600, 1000, 2000, LIMIT])
def test_every_limit_is_kept(limit: int) -> None:
    entry = make_entry(message="x" * 5000, device="d" * 3000)
    data = report.termination_message(TRIAL, entry, limit=limit)
    assert data is not None and len(data) <= limit
    result = decode(data)["result"]
    assert (result["status"], result["validation_error"], result["attempt"]) == (
        "ok", 0.1234, 2)


def test_nothing_is_written_when_not_even_the_essentials_fit() -> None:
    assert report.termination_message("t" * LIMIT, make_entry()) is None


# -- writing the file ------------------------------------------------------------------


def test_the_file_is_replaced_whole_and_no_temporary_file_stays(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_bytes(b"an older, longer message than the new one")
    path.chmod(0o666)
    report.write_termination_message(str(path), b'{"trialId":"x"}')
    assert path.read_bytes() == b'{"trialId":"x"}'
    assert os.listdir(tmp_path) == ["termination-log"]
    assert path.stat().st_mode & 0o777 == 0o666


def test_a_file_that_cannot_be_renamed_over_is_written_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As the kubelet's bind mount of /dev/termination-log: a rename over it fails (EBUSY).
    path = tmp_path / "termination-log"
    path.write_bytes(b"x" * 100)

    def busy(source: str, target: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", target)

    monkeypatch.setattr(report.os, "replace", busy)
    report.write_termination_message(str(path), b'{"trialId":"y"}')
    assert path.read_bytes() == b'{"trialId":"y"}'
    assert os.listdir(tmp_path) == ["termination-log"]


def test_a_missing_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    with pytest.raises(FileNotFoundError):
        report.write_termination_message(str(path), b"{}")
    assert not path.exists()


# -- the reporter ----------------------------------------------------------------------


def make_target(path: Path | None, **overrides: Any) -> report.KubeTarget:
    values: dict[str, Any] = {
        "api_url": "https://127.0.0.1:6443", "namespace": "ns", "search": "s",
        "trial_id": TRIAL, "attempt": 2, "token_path": "/nonexistent/token", "ca_path": None,
        "interval_seconds": 0.0, "deadline_seconds": 5.0,
        "termination_log": None if path is None else str(path)}
    values.update(overrides)
    return report.KubeTarget(**values)


def refuse(body: bytes) -> None:
    raise report.PatchError("HTTP 403: forbidden", retryable=False)


def test_a_result_the_status_refused_is_in_the_termination_message(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.touch()
    reporter = report.KubeReporter(make_target(path), send=refuse, sleep=lambda _: None)
    reporter.on_result({"status": "ok", "validation_error": 0.25, "train_loss": math.inf,
                        "learning_curve": [{"epoch": 1}]})
    assert reporter.stats.failed == 1
    message = decode(path.read_bytes())
    assert message["trialId"] == TRIAL
    result = message["result"]
    assert (result["validation_error"], result["attempt"], result["train_loss"]) == (
        0.25, 2, None)


def test_the_message_is_written_when_the_status_write_succeeds_too(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.touch()
    sent: list[bytes] = []
    reporter = report.KubeReporter(make_target(path), send=sent.append, sleep=lambda _: None)
    reporter.on_result({"status": "ok", "validation_error": 0.5})
    status_entry = json.loads(sent[0])["status"]["trials"][TRIAL]["result"]
    assert decode(path.read_bytes())["result"] == status_entry


@pytest.mark.parametrize("where", ["missing", "a-folder"])
def test_an_unusable_termination_log_is_ignored_and_the_result_still_sent(
        tmp_path: Path, where: str) -> None:
    path = tmp_path / where
    if where == "a-folder":
        path.mkdir()
    sent: list[bytes] = []
    reporter = report.KubeReporter(make_target(path), send=sent.append, sleep=lambda _: None)
    reporter.on_result({"status": "ok", "validation_error": 0.5})
    assert len(sent) == 1 and reporter.stats.sent == 1
    assert path.is_dir() if where == "a-folder" else not path.exists()


def test_the_path_comes_from_the_environment_with_kubernetes_default() -> None:
    env = {"NAS_BOHB_SEARCH_NAMESPACE": "ns", "NAS_BOHB_SEARCH_NAME": "s",
           "NAS_BOHB_TRIAL_ID": TRIAL, "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert report.KubeTarget.from_env(env).termination_log == "/dev/termination-log"
    custom = {**env, "NAS_BOHB_TERMINATION_LOG": "/tmp/pod/termination"}
    assert report.KubeTarget.from_env(custom).termination_log == "/tmp/pod/termination"
