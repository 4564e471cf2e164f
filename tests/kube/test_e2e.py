"""End to end: the real trainer, real CIFAR-10 over HTTP, a real search to Succeeded.

The operator (CRD and RBAC from ``manifests/``, run as a local process authenticated as
the operator's ServiceAccount) runs a one-iteration search with budgets of 2 and 6
training seconds. Trial pods run ``python -m trainer`` on the exec-mode simulated node;
they download CIFAR-10 from a loopback HTTP server with its MD5 checked (the trainer's
real download path) into a cache folder shared through a ``hostPath`` volume, train,
and report through the status. Four trials; a few minutes on two busy cores.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from controller.kube import export
from controller.kube import status as st
from tests.kube import support
from tests.kube.conftest import Operators

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LOCAL_ARCHIVE = support.ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
LOCAL_MD5 = "de808eed20bae32db8b324f967887cf8"
OFFICIAL = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a")


class _Handler(http.server.SimpleHTTPRequestHandler):
    served: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        type(self).served.append(self.path)


@pytest.fixture
def cifar_url() -> Iterator[tuple[str, str, list[str]]]:
    """The dataset's URL and MD5: the local copy over loopback HTTP, else the official one."""
    if not LOCAL_ARCHIVE.exists():
        yield OFFICIAL[0], OFFICIAL[1], []
        return
    handler = functools.partial(_Handler, directory=str(LOCAL_ARCHIVE.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    _Handler.served = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield f"http://127.0.0.1:{port}/{LOCAL_ARCHIVE.name}", LOCAL_MD5, _Handler.served
    finally:
        server.shutdown()
        server.server_close()


def make_search(url: str, md5: str, cache: Path) -> dict[str, Any]:
    # The CPU-sized space of examples/cpu-search.yaml, budgets of seconds.
    space = [
        {"name": n, "type": "int", "low": 1, "high": 2} for n in (
            "nr_residual_blocks_1", "nr_residual_blocks_2", "nr_residual_blocks_3",
            "res_branches_1", "res_branches_2", "res_branches_3")
    ] + [
        {"name": "initial_filters", "type": "int", "low": 8, "high": 16, "log": True},
        {"name": "widen_factor_1", "type": "float", "low": 0.5, "high": 2, "log": True},
        {"name": "widen_factor_2", "type": "float", "low": 1, "high": 2, "log": True},
        {"name": "widen_factor_3", "type": "float", "low": 1, "high": 2, "log": True},
        {"name": "batch_size", "type": "int", "low": 64, "high": 128, "log": True},
        {"name": "learning_rate", "type": "float", "low": 0.01, "high": 0.5, "log": True},
    ]
    return {
        "apiVersion": "nas-bohb.io/v1alpha1", "kind": "JointSearch",
        "metadata": {"name": "cifar-e2e"},
        "spec": {
            "budgets": {"min": 2, "max": 6, "eta": 3},
            "maxIterations": 1,  # 3 configurations at 2 s, the best again at 6 s.
            "parallelTrialCount": 3,
            "maxFailedTrialCount": 0,
            "seed": 1,
            "searchSpace": {"preset": "paper", "parameters": space},
            "dataset": {"url": url, "md5": md5},
            "trainer": {"device": "cpu", "threads": 1, "overrunFactor": 3,
                        "startupAllowanceSeconds": 600},
            "trialTemplate": {
                "image": "nas-bohb/trainer:0.1.0",
                "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
                # One download for all trials: a shared cache folder (hostPath here, a
                # ReadWriteMany volume in a real cluster).
                "volumes": [{"name": "cache", "hostPath": {"path": str(cache)}}],
                "volumeMounts": [{"name": "cache", "mountPath": "/var/cache/nas-bohb"}],
            },
        },
    }


def test_real_search_on_cifar10_runs_to_succeeded(
        operators: Operators, kube_namespace: str, tmp_path: Path, kube_cluster: Any,
        cifar_url: tuple[str, str, list[str]]) -> None:
    api = operators.install.api
    url, md5, served = cifar_url
    cache = tmp_path / "cache"
    cache.mkdir()
    support.create_search(api, kube_namespace, make_search(url, md5, cache))
    operators.start(kube_namespace)

    body = support.wait_for_phase(api, kube_namespace, "cifar-e2e", ("Succeeded", "Failed"),
                                  900)
    status = body["status"]
    assert status["phase"] == "Succeeded", (status.get("message"), operators.logs()[-2000:])
    if served:
        assert any(path.endswith(LOCAL_ARCHIVE.name) for path in served)

    # Every trial trained and was evaluated; the status holds each result.
    trials = {t: st.parse_line(line) for t, line in status["results"].items()}
    assert status["trialsDone"] == status["trialsTotal"] == len(trials) == 4
    for trial_id, entry in trials.items():
        assert entry["phase"] == "Succeeded", (trial_id, entry)
        assert 0 < entry["val"] < 1 and 0 < entry["test"] < 1
        assert entry["train"] >= entry["budget"] * 0.5
    incumbent = status["incumbent"]
    assert incumbent["budget"] == 6 and incumbent["trialId"].endswith("-b1")
    assert incumbent["validationError"] == status["bestLoss"]
    assert 0 < incumbent["testError"] < 1

    # The ledger keeps the trainer's whole record: evidence, not just a loss.
    records = [e["outcome"]["record"] for e in
               support.ledger_events(api, kube_namespace, "cifar-e2e")
               if e["event"] == "finished"]
    assert len(records) == 4
    assert all(r["n_params"] > 0 and r["torch_version"] and r["device"].startswith("cpu")
               and r["learning_curve"] for r in records)

    # What a user sees, and what the analysis tools read.
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "get", "jointsearch", "-n", kube_namespace],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig)})
        row = out.stdout.splitlines()[1].split()
        assert row[:3] == ["cifar-e2e", "Succeeded", "4/4"]
        assert float(row[4]) == pytest.approx(status["bestLoss"], abs=1e-4)
    summary = export.export_search(kube_namespace, "cifar-e2e", tmp_path / "export")
    assert (summary.configs, summary.results, summary.phase) == (3, 4, "Succeeded")
    assert len((tmp_path / "export" / "results.json").read_text().splitlines()) == 4
