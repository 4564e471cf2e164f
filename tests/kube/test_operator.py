"""The operator against a real API server: faults, restarts, limits and trainer access.

Trial pods run ``tests/kube/fake_trainer.py`` on the session's exec-mode simulated node:
a real process that reports through :mod:`trainer.report` with the search's trainer
ServiceAccount, and that misbehaves on purpose where a test asks it to. The operator runs
as a local process authenticated as the ServiceAccount of ``manifests/rbac.yaml``.
"""

from __future__ import annotations

import collections
import json
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from controller.kube import status as st
from tests.kube import support
from tests.kube.conftest import Operators

pytestmark = pytest.mark.cluster

FAULTS = {
    "0-0-1-b0": "exit1",
    "0-0-2-b0": "nan",
    "0-0-3-b0": "silent",
    "0-0-4-b0": "badtype",
    "0-0-5-b0": "hang",
    "0-0-6-b0": "slow",
    "*": "ok",
}


def ledger_size(api: Any, namespace: str, name: str) -> int:
    return len(support.ledger_events(api, namespace, name))


def test_search_finishes_despite_controller_kills_and_failing_trials(
        operators: Operators, kube_namespace: str, tmp_path: Path) -> None:
    api = operators.install.api
    ns, name, log = kube_namespace, "chaos", tmp_path / "runs.log"
    # Budgets 1, 3, 9 s; two iterations: 9 + 3 + 1 and 3 + 1 trials = 17.
    support.create_search(api, ns, support.fake_search(
        name, plan=FAULTS, log=log, parallel=3,
        trainer={"device": "cpu", "overrunFactor": 1, "startupAllowanceSeconds": 20}))
    # The slow trial runs long enough to have its Job deleted under it.
    operators.start(ns)
    rng = random.Random(4)
    deleted: list[str] = []

    def delete_slow_job() -> bool:
        """An infrastructure failure: the slow trial's Job is deleted while it runs."""
        if deleted or ("0-0-6-b0", 1) not in support.runs(log):
            return bool(deleted)
        from tests.cluster.simnode import KubeApiError

        try:
            api.delete(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}-0-0-6-b0",
                       {"propagationPolicy": "Background"})
            deleted.append(time.strftime("%X"))
        except KubeApiError as error:
            raise AssertionError(f"the slow trial's Job was gone already: {error}") from error
        return True

    for kill in range(4):
        # Kill at a random moment after the new operator has done some work.
        seen = ledger_size(api, ns, name)

        def progress(seen: int = seen) -> bool:
            delete_slow_job()
            return ledger_size(api, ns, name) > seen

        support.wait_for(progress, 120, f"the operator to make progress before kill {kill + 1}")
        time.sleep(rng.uniform(0.0, 2.0))
        operators.kill()
        time.sleep(rng.uniform(0.0, 1.0))
        operators.start(ns)
    support.wait_for(delete_slow_job, 120, "the slow trial to start")

    body = support.wait_for_phase(api, ns, name, ("Succeeded", "Failed"), 300)
    status = body["status"]
    assert status["phase"] == "Succeeded", operators.logs()[-3000:]

    # Every trial has a result, and the status agrees with the ledger.
    trials = {t: st.parse_line(line) for t, line in status["results"].items()}
    assert status["trialsTotal"] == status["trialsDone"] == len(trials) == 17
    assert all(t["phase"] in ("Succeeded", "Failed") for t in trials.values())
    assert not status.get("active") and not status.get("trials")
    ledger = support.ledger_events(api, ns, name)
    finished = [e["trial_id"] for e in ledger if e["event"] == "finished"]
    assert sorted(finished) == sorted(trials)
    started = [(e["trial_id"], e["attempt"]) for e in ledger if e["event"] == "started"]
    assert len(started) == len(set(started))  # An attempt is never issued twice.

    # No trial ran twice, except the one whose Job was deleted under it (a new attempt).
    ran = collections.Counter(support.runs(log))
    assert all(count == 1 for count in ran.values()), ran
    attempts = collections.Counter(trial for trial, _ in ran)
    assert {t for t, n in attempts.items() if n > 1} == {"0-0-6-b0"}, ran
    assert set(attempts) == set(trials)

    # Each fault became the right kind of failed trial; the deleted one succeeded later.
    def outcome(trial: str) -> tuple[str, str, str]:
        entry = trials[trial]
        return entry["phase"], entry.get("outcome", ""), entry.get("message", "")

    assert outcome("0-0-1-b0")[:2] == ("Failed", "crashed")
    assert "code 1" in outcome("0-0-1-b0")[2]
    assert "finite validation_error" in outcome("0-0-2-b0")[2]
    assert "never reported" in outcome("0-0-3-b0")[2]
    assert "never reported" in outcome("0-0-4-b0")[2]
    assert outcome("0-0-5-b0")[:2] == ("Failed", "overrun")
    assert outcome("0-0-6-b0")[:2] == ("Succeeded", "ok")
    assert trials["0-0-6-b0"]["attempt"] >= 2
    # Dispatch latency is kept across restarts (lost only for a Job created just before a
    # kill, whose status line was never written).
    assert all(t["dispatch"] >= 0 for t in trials.values() if "dispatch" in t)
    assert sum("dispatch" in t for t in trials.values()) >= len(trials) // 2
    assert status["trialsFailed"] == 5

    reasons = collections.Counter(e["reason"] for e in support.events(api, ns, name))
    assert reasons["InvalidReport"] >= 1  # The string-typed validation error.
    assert reasons["TrialRetrying"] >= 1
    assert reasons["SearchSucceeded"] >= 1
    assert reasons["NewIncumbent"] >= 1

    # The end: the incumbent with both errors, nothing left running, no NaN stored.
    incumbent = status["incumbent"]
    assert incumbent["budget"] == 9
    assert 0 < incumbent["validationError"] < incumbent["testError"] < 1
    assert trials[incumbent["trialId"]]["val"] == incumbent["validationError"]
    assert status["bestLoss"] == incumbent["validationError"]
    support.wait_for(lambda: not support.jobs(api, ns), 60, "finished Jobs to be deleted")
    stored = json.dumps(ledger) + json.dumps(status)
    assert "NaN" not in stored and "Infinity" not in stored
    assert operators.started == 5


def test_too_many_failures_fail_the_search_and_stop_running_trials(
        operators: Operators, kube_namespace: str, tmp_path: Path) -> None:
    api = operators.install.api
    ns, name, log = kube_namespace, "doomed", tmp_path / "runs.log"
    plan = {"0-0-0-b0": "hang", "0-0-1-b0": "hang", "*": "exit1"}
    support.create_search(api, ns, support.fake_search(name, plan=plan, log=log, parallel=3,
                                                       max_failed=1))
    operators.start(ns)
    body = support.wait_for_phase(api, ns, name, ("Succeeded", "Failed"), 180)
    status = body["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "MaxFailedTrialCountExceeded"
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in status["conditions"])
    assert status["trialsFailed"] == 2
    cancelled = [t for t, line in status["results"].items()
                 if st.parse_line(line)["phase"] == "Cancelled"]
    assert sorted(cancelled) == ["0-0-0-b0", "0-0-1-b0"]
    # The hanging trainers' Jobs and pods are gone: no GPU stays busy.
    support.wait_for(lambda: not support.jobs(api, ns), 60, "every Job to be deleted")
    support.wait_for(lambda: not api.get(f"/api/v1/namespaces/{ns}/pods")["items"], 60,
                     "every pod to be deleted")
    assert sorted(t for t, _ in support.runs(log))[:2] == ["0-0-0-b0", "0-0-1-b0"]


def _patch_as(url: str, token: str, ca: str | None, body: dict[str, Any] | None) -> int:
    """HTTP status of a merge patch (or, with no body, a GET) made with ``token``."""
    import ssl

    request = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "PATCH",
        headers={"Content-Type": "application/merge-patch+json",
                 "Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_spec_errors_trainer_access_and_edits_while_running(
        operators: Operators, kube_namespace: str, tmp_path: Path, kube_cluster: Any) -> None:
    api = operators.install.api
    ns = kube_namespace
    searches = support.SEARCHES.format(ns=ns)
    # A spec the schema accepts but the search cannot run: min budget above max.
    invalid = support.fake_search("invalid", plan={}, log=tmp_path / "x.log")
    invalid["spec"]["budgets"] = {"min": 10, "max": 5}
    support.create_search(api, ns, invalid)
    support.create_search(api, ns, support.fake_search(
        "alpha", plan={"*": "ok"}, log=tmp_path / "alpha.log", parallel=1, seconds=1.5))
    operators.start(ns)

    bad = support.wait_for_phase(api, ns, "invalid", ("Failed",), 120)["status"]
    assert any(c["type"] == "Invalid" and c["status"] == "True" for c in bad["conditions"])
    assert "spec.budgets.min" in bad["message"]

    # Alpha's trainer account: patch on alpha's status, nothing else.
    token = support.wait_for(lambda: _token(api, ns, "alpha-trainer"), 60,
                             "alpha's trainer ServiceAccount")
    ca = getattr(api, "ca_cert_file", None)
    base = kube_cluster.apiserver_url
    probe = {"status": {"trials": {"9-9-9-b9": {"progress": {"epoch": 1}}}}}
    assert _patch_as(f"{base}{searches}/invalid/status", token, ca, probe) == 403
    assert _patch_as(f"{base}{searches}/alpha", token, ca, {"spec": {"seed": 9}}) == 403
    assert _patch_as(f"{base}{searches}/invalid/status", token, ca, None) == 403
    assert _patch_as(f"{base}{searches}/alpha", token, ca, None) == 403
    assert _patch_as(f"{base}{searches}/alpha/status", token, ca, None) == 200
    assert _patch_as(f"{base}{searches}/alpha/status", token, ca, probe) == 200
    # ... and what it writes for a trial that does not exist is removed, with an Event.
    support.wait_for(lambda: "9-9-9-b9" not in (support.get_search(api, ns, "alpha")
                                                 ["status"].get("trials") or {}), 60,
                     "the unknown trial entry to go")
    support.wait_for(lambda: any(e["reason"] == "UnknownTrialReport"
                                 for e in support.events(api, ns, "alpha")), 30,
                     "an UnknownTrialReport event")

    # A second result written for a finished trial is ignored, with an Event.
    def first_done() -> tuple[str, dict[str, Any]] | None:
        results = support.get_search(api, ns, "alpha")["status"].get("results") or {}
        done = [(t, st.parse_line(line)) for t, line in results.items()]
        return done[0] if done else None

    trial, entry = support.wait_for(first_done, 120, "alpha's first finished trial")
    late = {"status": {"trials": {trial: {"result": {"status": "ok", "validation_error": 0.01,
                                                     "attempt": 1}}}}}
    assert _patch_as(f"{base}{searches}/alpha/status", token, ca, late) == 200
    support.wait_for(lambda: any(e["reason"] == "LateReport"
                                 for e in support.events(api, ns, "alpha")), 60,
                     "a LateReport event")
    support.wait_for(lambda: trial not in (support.get_search(api, ns, "alpha")["status"]
                                           .get("trials") or {}), 60, "the late result to go")
    kept = support.get_search(api, ns, "alpha")["status"]["results"][trial]
    assert st.parse_line(kept)["val"] == entry["val"] != 0.01

    # Parallelism is a knob: raised while the search runs, more trials run at once.
    api.patch(f"{searches}/alpha", {"spec": {"parallelTrialCount": 4}}, strategic=False)
    most = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = support.get_search(api, ns, "alpha")["status"]
        most = max(most, status.get("trialsRunning", 0))
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.3)
    assert status["phase"] == "Succeeded"
    assert status["parallelTrialCount"] == 4
    assert most > 1
    assert operators.alive()


def _token(api: Any, namespace: str, account: str) -> str | None:
    from tests.cluster.simnode import KubeApiError

    try:
        answer = api.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": {"expirationSeconds": 3600}})
    except KubeApiError:
        return None
    return str(answer["status"]["token"])
