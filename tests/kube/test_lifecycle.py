"""The operator against a real API server: re-created searches, spec edits across restarts,
conditions that describe the present, and trainers killed from outside.

As in ``test_operator.py``, trial pods run ``tests/kube/fake_trainer.py`` on the session's
simulated node and the operator runs as a local process with the ServiceAccount of
``manifests/rbac.yaml``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from controller.kube import status as st
from tests.kube import support
from tests.kube.conftest import Operators

pytestmark = pytest.mark.cluster

BOGUS = {"searchSpace": {"parameters": [{"name": "bogus", "type": "float", "low": 0,
                                         "high": 1}]}}


def reasons(api: Any, namespace: str, name: str) -> list[str]:
    return [e["reason"] for e in support.events(api, namespace, name)]


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def test_a_search_waits_for_a_leftover_trainer_account_then_creates_its_own_and_runs(
        operators: Operators, kube_namespace: str, tmp_path: Path) -> None:
    api = operators.install.api
    ns, name = kube_namespace, "again"
    # What an earlier search of the same name leaves while the garbage collector works:
    # its trainer ServiceAccount, owned by an object that is not this search.
    earlier = api.post(f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "earlier-search"}})
    api.post(f"/api/v1/namespaces/{ns}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
            "name": f"{name}-trainer",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                                 "name": "earlier-search",
                                 "uid": earlier["metadata"]["uid"]}]}})
    search = support.create_search(api, ns, support.fake_search(
        name, plan={"*": "ok"}, log=tmp_path / "runs.log", parallel=2, maxTrialCount=3))
    operators.start(ns)

    support.wait_for(lambda: "TrainerAccessPending" in reasons(api, ns, name), 60,
                     "a TrainerAccessPending event")
    time.sleep(4)  # Several retries: still no Job (it could not start), one Event.
    assert not support.jobs(api, ns)
    assert reasons(api, ns, name).count("TrainerAccessPending") == 1

    api.delete(f"/api/v1/namespaces/{ns}/serviceaccounts/{name}-trainer")
    status = support.wait_for_phase(api, ns, name, ("Succeeded", "Failed"), 180)["status"]
    assert status["phase"] == "Succeeded", operators.logs()[-3000:]
    assert status["trialsSucceeded"] == 3
    account = api.get(f"/api/v1/namespaces/{ns}/serviceaccounts/{name}-trainer")
    owners = [o["uid"] for o in account["metadata"].get("ownerReferences") or []]
    assert owners == [search["metadata"]["uid"]]


def test_a_restarted_operator_keeps_a_started_search_on_its_spec_after_a_rejected_edit(
        operators: Operators, kube_namespace: str, tmp_path: Path) -> None:
    api = operators.install.api
    ns, name = kube_namespace, "edited"
    path = f"{support.SEARCHES.format(ns=ns)}/{name}"
    support.create_search(api, ns, support.fake_search(
        name, plan={"*": "ok"}, log=tmp_path / "runs.log", parallel=3, seconds=3.0,
        maxTrialCount=6))
    operators.start(ns)
    support.wait_for(lambda: support.jobs(api, ns), 60, "the first Jobs")

    api.patch(path, {"spec": BOGUS}, strategic=False)
    support.wait_for(lambda: "SpecChangeRejected" in reasons(api, ns, name), 60,
                     "the edit to be rejected")
    operators.kill()
    operators.start(ns)
    support.wait_for(lambda: reasons(api, ns, name).count("SpecChangeRejected") >= 2, 60,
                     "the restarted operator to reject the edit too")

    status = support.wait_for_phase(api, ns, name, ("Succeeded", "Failed"), 240)["status"]
    assert status["phase"] == "Succeeded", operators.logs()[-3000:]
    assert status["trialsSucceeded"] == 6
    assert "InvalidSpec" not in reasons(api, ns, name)
    assert not any(c["status"] == "True" for c in status["conditions"]
                   if c["type"] in ("Invalid", "Failed"))


def test_a_search_that_fails_as_invalid_deletes_its_running_jobs(
        operators: Operators, kube_namespace: str, tmp_path: Path) -> None:
    api = operators.install.api
    ns, name = kube_namespace, "lost"
    path = f"{support.SEARCHES.format(ns=ns)}/{name}"
    support.create_search(api, ns, support.fake_search(
        name, plan={"*": "hang"}, log=tmp_path / "runs.log", parallel=2))
    operators.start(ns)
    support.wait_for(lambda: len(support.jobs(api, ns)) == 2, 60, "two running Jobs")
    # With its ledger gone the search has no spec to continue with but the invalid one.
    operators.kill()
    api.patch(path, {"spec": BOGUS}, strategic=False)
    for cm in api.get(f"/api/v1/namespaces/{ns}/configmaps", {
            "labelSelector": f"app.kubernetes.io/instance={name},"
                             "app.kubernetes.io/component=ledger"})["items"]:
        api.delete(f"/api/v1/namespaces/{ns}/configmaps/{cm['metadata']['name']}")
    operators.start(ns)

    status = support.wait_for_phase(api, ns, name, ("Failed",), 60)["status"]
    assert status["reason"] == "InvalidSpec"
    support.wait_for(lambda: not [j for j in support.jobs(api, ns)
                                  if not j["metadata"].get("deletionTimestamp")], 60,
                     "the running Jobs to be deleted")


def test_a_fixed_invalid_search_runs_and_its_conditions_no_longer_say_invalid_or_failed(
        operators: Operators, kube_namespace: str, tmp_path: Path) -> None:
    api = operators.install.api
    ns, name = kube_namespace, "fixed"
    path = f"{support.SEARCHES.format(ns=ns)}/{name}"
    body = support.fake_search(name, plan={"*": "ok"}, log=tmp_path / "runs.log",
                               parallel=2, maxTrialCount=2)
    body["spec"]["budgets"] = {"min": 10, "max": 5}
    support.create_search(api, ns, body)
    operators.start(ns)
    failed = support.wait_for_phase(api, ns, name, ("Failed",), 60)["status"]
    assert conditions(failed)["Invalid"]["status"] == "True"
    assert conditions(failed)["Failed"]["status"] == "True"

    api.patch(path, {"spec": {"budgets": {"min": 1, "max": 9, "eta": 3}}}, strategic=False)
    status = support.wait_for_phase(api, ns, name, ("Succeeded",), 180)["status"]
    now = conditions(status)
    assert now["Succeeded"]["status"] == "True"
    assert now["Invalid"]["status"] == "False" and now["Invalid"]["reason"]
    assert now["Failed"]["status"] == "False" and now["Failed"]["reason"]
    assert now["Running"]["status"] == "False"


def test_a_trainer_killed_by_a_signal_is_run_again_not_shown_as_crashed(
        operators: Operators, kube_namespace: str, tmp_path: Path) -> None:
    api = operators.install.api
    ns, name, log = kube_namespace, "killed", tmp_path / "runs.log"
    support.create_search(api, ns, support.fake_search(
        name, plan={"0-0-0-b0": "killed", "*": "ok"}, log=log, parallel=2, maxTrialCount=3))
    operators.start(ns)
    status = support.wait_for_phase(api, ns, name, ("Succeeded", "Failed"), 180)["status"]
    assert status["phase"] == "Succeeded", operators.logs()[-3000:]
    trial = st.parse_line(status["results"]["0-0-0-b0"])
    assert (trial["phase"], trial["outcome"], trial["attempt"]) == ("Succeeded", "ok", 2)
    assert ("0-0-0-b0", 1) in support.runs(log) and ("0-0-0-b0", 2) in support.runs(log)
    retried = [e["message"] for e in support.events(api, ns, name)
               if e["reason"] == "TrialRetrying"]
    assert any("signal 9" in m for m in retried), retried
    assert status["trialsFailed"] == 0
