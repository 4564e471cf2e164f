"""What trainers may write into the status, and how the operator patches it (pure)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from controller.kube import runner
from controller.kube import status as st
from trainer import report


def make_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"status": "ok", "validation_error": 0.2, "test_error": 0.21,
                              "train_seconds": 400.1, "budget_seconds": 400,
                              "learning_curve": [], "attempt": 1, "reported_at": 1.7e9}
    record.update(overrides)
    return record


class TestTrainerResults:
    def test_a_well_formed_result_is_accepted_with_its_attempt(self) -> None:
        result = st.parse_result(make_record())
        assert isinstance(result, st.ReportedResult)
        assert (result.attempt, result.validation_error) == (1, 0.2)
        assert result.reported_at == 1.7e9

    @pytest.mark.parametrize("bad", [
        pytest.param({"validation_error": "0.2"}, id="string-error"),
        pytest.param({"validation_error": 1.5}, id="error-above-one"),
        pytest.param({"validation_error": True}, id="bool-error"),
        pytest.param({"status": "great"}, id="unknown-status"),
        pytest.param({"train_seconds": "long"}, id="string-seconds"),
        pytest.param({"attempt": 0}, id="attempt-zero"),
        pytest.param({"config": [1, 2]}, id="config-not-mapping"),
    ])
    def test_a_result_with_bad_values_is_refused_with_a_reason(self, bad: dict[str, Any]
                                                                ) -> None:
        problem = st.parse_result(make_record(**bad))
        assert isinstance(problem, st.ReportProblem)
        assert problem.reason == "InvalidReport"
        assert next(iter(bad)) in problem.message

    def test_a_result_that_is_not_a_mapping_is_refused(self) -> None:
        assert isinstance(st.parse_result("done"), st.ReportProblem)

    def test_the_same_result_has_the_same_fingerprint(self) -> None:
        first = st.parse_result(make_record())
        again = st.parse_result(json.loads(json.dumps(make_record())))
        other = st.parse_result(make_record(validation_error=0.3))
        assert isinstance(first, st.ReportedResult) and isinstance(again, st.ReportedResult)
        assert isinstance(other, st.ReportedResult)
        assert first.fingerprint == again.fingerprint != other.fingerprint

    def test_progress_gives_the_fraction_of_the_budget_spent(self) -> None:
        progress = st.parse_progress({"trainSeconds": 100, "budgetSeconds": 400, "attempt": 2})
        assert isinstance(progress, st.ReportedProgress)
        assert (progress.fraction, progress.attempt) == (0.25, 2)
        assert isinstance(st.parse_progress({"epoch": "one"}), st.ReportProblem)


class TestTerminationMessages:
    TRIAL = "0-0-3-b1"

    def message(self, **overrides: Any) -> str:
        data = report.termination_message(self.TRIAL, make_record(**overrides))
        assert data is not None
        return data.decode()

    def test_the_trainers_own_message_is_accepted_as_its_result(self) -> None:
        entry = report.result_entry({"status": "ok", "validation_error": math.nan,
                                     "test_error": 0.3, "learning_curve": [{"epoch": 1}]})
        entry["attempt"] = 2
        data = report.termination_message(self.TRIAL, entry)
        assert data is not None
        result = st.parse_termination_message(data.decode(), self.TRIAL)
        assert isinstance(result, st.ReportedResult)
        assert (result.attempt, result.validation_error, result.test_error) == (2, None, 0.3)
        assert result.record == entry

    @pytest.mark.parametrize("text", [
        pytest.param(None, id="no-message"),
        pytest.param("", id="empty"),
        pytest.param("Traceback (most recent call last):\n  ...\nValueError: x\n",
                     id="a-crashed-trainers-log-tail"),
        pytest.param('{"loss": 0.1}', id="json-of-something-else"),
        pytest.param('{"trialId": "0-0-3-b1", "result": ', id="cut-off"),
    ])
    def test_text_that_is_no_result_message_is_nothing_to_warn_about(
            self, text: str | None) -> None:
        assert st.parse_termination_message(text, self.TRIAL) is None

    @pytest.mark.parametrize(("make", "words"), [
        pytest.param(lambda m: m.replace("0-0-3-b1", "9-9-9-b9"), "trial '9-9-9-b9'",
                     id="another-trial"),
        pytest.param(lambda m: m.replace('"validation_error":0.2', '"validation_error":"0.2"'),
                     "validation_error", id="string-error"),
        pytest.param(lambda m: m.replace('"status":"ok"', '"status":"great"'), "status",
                     id="unknown-status"),
        pytest.param(lambda m: m.replace('"attempt":1', '"attempt":-1'), "attempt",
                     id="bad-attempt"),
        pytest.param(lambda m: m.replace('"result":{', '"result":{"pad":"' + "x" * 4096
                                         + '",'), "more than 4096", id="oversize"),
    ])
    def test_a_wrong_result_message_is_refused_with_a_reason(
            self, make: Any, words: str) -> None:
        problem = st.parse_termination_message(make(self.message()), self.TRIAL)
        assert isinstance(problem, st.ReportProblem)
        assert problem.reason == "InvalidTerminationMessage"
        assert words in problem.message

    def test_the_trainer_containers_message_is_read_from_the_pod(self) -> None:
        terminated = {"exitCode": 0, "message": "hello"}
        pod = {"status": {"containerStatuses": [
            {"name": "sidecar", "state": {"terminated": {"message": "not this"}}},
            {"name": "trainer", "state": {"terminated": terminated}}]}}
        assert runner._termination_message(pod) == "hello"
        running = {"status": {"containerStatuses": [
            {"name": "trainer", "state": {"running": {}}}]}}
        assert runner._termination_message(running) is None
        assert runner._termination_message({"metadata": {"name": "p"}}) is None


class TestJsonSafety:
    def test_non_finite_numbers_become_null_everywhere(self) -> None:
        value = st.json_safe({"a": math.nan, "b": [math.inf, 1.0], "c": (2, -math.inf)})
        assert value == {"a": None, "b": [None, 1.0], "c": [2, None]}
        json.dumps(value, allow_nan=False)

    def test_finite_or_none_refuses_strings_and_bools(self) -> None:
        assert st.finite_or_none("0.1") is None
        assert st.finite_or_none(True) is None
        assert st.finite_or_none(0.1234567891) == 0.123457


class TestMergePatch:
    def test_only_differences_are_sent(self) -> None:
        observed = {"phase": "Running", "trials": {"a": {"phase": "Running", "budget": 1}}}
        desired = {"phase": "Running", "trials": {"a": {"phase": "Succeeded", "budget": 1}}}
        assert st.merge_patch(observed, desired) == {"trials": {"a": {"phase": "Succeeded"}}}

    def test_none_deletes_only_keys_that_exist(self) -> None:
        observed = {"trials": {"a": {"result": {"x": 1}}}}
        desired = {"trials": {"a": {"result": None, "progress": None}, "b": None}}
        assert st.merge_patch(observed, desired) == {"trials": {"a": {"result": None}}}

    def test_nothing_to_do_gives_an_empty_patch(self) -> None:
        observed = {"conditions": [{"type": "Running"}], "n": 1}
        assert st.merge_patch(observed, dict(observed)) == {}

    def test_condition_time_moves_only_when_its_status_changes(self) -> None:
        first = st.with_condition(None, "Running", True, "Searching", "running")
        first[0]["lastTransitionTime"] = "then"
        same = st.with_condition(first, "Running", True, "TrialsRunning", "still")
        assert same[0]["lastTransitionTime"] == "then"
        flipped = st.with_condition(same, "Running", False, "Done", "over")
        assert flipped[0]["lastTransitionTime"] != "then"
        assert flipped[0]["status"] == "False"


class TestTrialLines:
    def test_a_finished_trial_line_reads_back(self) -> None:
        entry = {"phase": "Succeeded", "outcome": "ok", "budget": 1200.0, "attempt": 2,
                 "validationError": 0.0912, "testError": 0.0955, "trainSeconds": 1201.34,
                 "dispatchSeconds": 0.2141}
        line = st.trial_line(entry)
        assert line == ("Succeeded outcome=ok budget=1200 attempt=2 val=0.0912 test=0.0955 "
                        "train=1201.3 dispatch=0.214")
        assert st.parse_line(line) == {"phase": "Succeeded", "outcome": "ok", "budget": 1200,
                                       "attempt": 2, "val": 0.0912, "test": 0.0955,
                                       "train": 1201.3, "dispatch": 0.214}

    def test_a_failure_message_with_spaces_and_equals_signs_survives(self) -> None:
        line = st.trial_line({"phase": "Failed", "outcome": "crashed", "budget": 400,
                              "message": "exit code 1:  x = y\nTraceback"})
        assert st.parse_line(line)["message"] == "exit code 1: x = y Traceback"

    def test_a_running_trial_line_shows_its_progress(self) -> None:
        line = st.trial_line({"phase": "Running", "budget": 400, "attempt": 1}, progress=0.456)
        assert line == "Running budget=400 progress=46%"
        assert st.parse_line(line)["progress"] == 0.46


class TestFailureClassification:
    @staticmethod
    def make_pod(terminated: dict[str, Any] | None = None, reason: str | None = None
                 ) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": "Failed"}
        if reason:
            status["reason"] = reason
        if terminated is not None:
            status["containerStatuses"] = [{"state": {"terminated": terminated}}]
        return {"metadata": {"name": "p"}, "status": status}

    @pytest.mark.parametrize(("terminated", "reason", "expected"), [
        pytest.param({"exitCode": 2, "message": "bad lr"}, None, ("trial", "invalid_config"),
                     id="exit-2-is-an-invalid-config"),
        pytest.param({"exitCode": 137, "reason": "OOMKilled"}, None,
                     ("trial", "out_of_memory"), id="oom-killed"),
        pytest.param({"exitCode": 1, "reason": "Error"}, None, ("trial", "crashed"),
                     id="exit-1-crashed"),
        pytest.param(None, "Evicted", ("infra", ""), id="evicted-is-infrastructure"),
        pytest.param({"exitCode": 137, "reason": "Error"}, None, ("infra", ""),
                     id="killed-by-a-signal-is-infrastructure"),
        pytest.param({"exitCode": 143}, None, ("infra", ""),
                     id="terminated-by-sigterm-is-infrastructure"),
    ])
    def test_failed_pod_is_a_crashed_trial_or_an_infrastructure_failure(
            self, terminated: dict[str, Any] | None, reason: str | None,
            expected: tuple[str, str]) -> None:
        verdict = runner._pod_verdict(self.make_pod(terminated, reason))
        assert verdict is not None
        assert verdict[:2] == expected

    def test_no_pod_or_no_exit_code_says_nothing(self) -> None:
        assert runner._pod_verdict(None) is None
        assert runner._pod_verdict(self.make_pod()) is None

    def test_an_oversized_record_loses_its_learning_curve_first(self) -> None:
        curve = [{"epoch": i, "train_loss": 1.0, "lr": 0.1} for i in range(5000)]
        record = make_record(learning_curve=curve)
        bounded = runner._bounded(record)
        assert "learning_curve" not in bounded and bounded["learning_curve_dropped"] is True
        assert bounded["validation_error"] == 0.2
        assert runner._bounded(make_record()) == make_record()
