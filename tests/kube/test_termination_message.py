"""Results that never reached the status are recovered from the trainers' termination messages.

Trial pods run ``tests/kube/fake_trainer.py`` on the session's exec-mode simulated node,
which maps each container's ``terminationMessagePath`` to a file of its own and copies it
into the pod's status when the process ends, as a kubelet does. Most trainers here are
pointed at a closed port, so their status writes never get through and their result
leaves only through the termination message the real :mod:`trainer.report` writes; the
operator runs as a local process with the ServiceAccount of ``manifests/rbac.yaml``.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from controller.kube import status as st
from tests.kube import support
from tests.kube.conftest import Operators

pytestmark = pytest.mark.cluster

PLAN = {
    "0-0-1-b0": "unreachable_crash",  # Exit code 3 after the result: the Job fails.
    "0-0-2-b0": "wrongid",  # A well-formed message for another trial.
    "0-0-3-b0": "garbage",  # Not a message at all.
    "0-0-4-b0": "ok",  # Reports through the status, as usual.
    "*": "unreachable",
}


def test_results_that_missed_the_status_come_from_the_termination_message(
        operators: Operators, kube_namespace: str, tmp_path: Path) -> None:
    api = operators.install.api
    ns, name, log = kube_namespace, "fallback", tmp_path / "runs.log"
    # Budgets 1, 3, 9 s; one iteration: 9 + 3 + 1 = 13 trials.
    support.create_search(api, ns, support.fake_search(name, plan=PLAN, log=log,
                                                       iterations=1, parallel=3))
    operators.start(ns)

    body = support.wait_for_phase(api, ns, name, ("Succeeded", "Failed"), 300)
    status = body["status"]
    assert status["phase"] == "Succeeded", operators.logs()[-3000:]
    trials = {t: st.parse_line(line) for t, line in status["results"].items()}
    assert status["trialsTotal"] == len(trials) == 13
    succeeded = {t for t, entry in trials.items() if entry["phase"] == "Succeeded"}
    failed = {t for t, entry in trials.items() if entry["phase"] == "Failed"}

    # The wrong messages are ignored: those trials failed as trials that never reported.
    assert failed == {"0-0-2-b0", "0-0-3-b0"}
    for trial in failed:
        assert trials[trial]["outcome"] == "crashed"
        assert "never reported a result" in trials[trial]["message"]
    # Every other result arrived: through the termination message, except the one that
    # reported as usual; the trainer that failed after writing its result is no exception.
    assert "0-0-1-b0" in succeeded and "0-0-4-b0" in succeeded
    events = support.events(api, ns, name)
    recovered = {e["message"].split()[1].rstrip(":") for e in events
                 if e["reason"] == "ResultFromTerminationMessage"}
    assert recovered == succeeded - {"0-0-4-b0"}
    assert all(trials[t]["outcome"] == "ok" and 0 < trials[t]["val"] < 1 for t in recovered)

    # A message for another trial is named in an Event; garbage is nothing to warn about.
    invalid = [e["message"] for e in events if e["reason"] == "InvalidTerminationMessage"]
    assert any("0-0-2-b0" in m and "9-9-9-b9" in m for m in invalid), invalid
    assert not [m for m in invalid if "0-0-3-b0" in m]

    # The ledger keeps how each result came; no trial ran twice.
    ledger = support.ledger_events(api, ns, name)
    records = {e["trial_id"]: e["outcome"]["record"] or {} for e in ledger
               if e["event"] == "finished"}
    assert {t for t, r in records.items() if r.get("reported_via") == "termination_message"
            } == recovered
    assert records["0-0-1-b0"]["attempt"] == 1
    assert all(n == 1 for n in collections.Counter(support.runs(log)).values())
    assert status["incumbent"]["trialId"] in recovered | {"0-0-4-b0"}
