"""Helpers of the operator tests: searches to apply, waiting, reading what happened."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SEARCHES = "/apis/nas-bohb.io/v1alpha1/namespaces/{ns}/jointsearches"


@dataclass
class OperatorInstall:
    kubeconfig: Path
    api: Any  # tests.cluster.simnode.KubeApi as admin
    folder: Path


def apply(api: Any, doc: Mapping[str, Any]) -> None:
    """Create ``doc`` (admin), ignoring 'already exists' (the session shares the cluster)."""
    from tests.cluster.simnode import KubeApiError

    kind, meta = doc["kind"], doc["metadata"]
    paths = {
        "Namespace": "/api/v1/namespaces",
        "CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "ServiceAccount": f"/api/v1/namespaces/{meta.get('namespace')}/serviceaccounts",
    }
    try:
        api.post(paths[kind], doc)
    except KubeApiError as error:
        if error.status != 409:
            raise


def install(api: Any) -> None:
    """Apply the CRD, the RBAC and the operator's namespace from ``manifests/`` (admin)."""
    import yaml

    for name in ("deployment.yaml", "crd.yaml", "rbac.yaml"):
        for doc in yaml.safe_load_all((MANIFESTS / name).read_text()):
            if doc and (name != "deployment.yaml" or doc["kind"] == "Namespace"):
                apply(api, doc)
    wait_for(lambda: crd_established(api), 30, "the CRD to be established")


def operator_kubeconfig(api: Any, admin_kubeconfig: Path, dest: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount of rbac.yaml."""
    import yaml

    token = api.post(
        "/api/v1/namespaces/nas-bohb-system/serviceaccounts/nas-bohb-operator/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 24 * 3600}})["status"]["token"]
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    if "certificate-authority" in cluster and "certificate-authority-data" not in cluster:
        ca = Path(cluster["certificate-authority"]).read_bytes()
        cluster = {"server": cluster["server"],
                   "certificate-authority-data": base64.b64encode(ca).decode()}
    dest.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "nas-bohb-operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local",
                                                     "user": "nas-bohb-operator"}}],
        "current-context": "operator",
    }))
    return dest


def crd_established(api: Any) -> bool:
    crd = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                  "jointsearches.nas-bohb.io")
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (crd.get("status") or {}).get("conditions") or [])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def fake_search(name: str, *, plan: Mapping[str, str], log: Path, iterations: int = 2,
                parallel: int = 3, seconds: float = 1.0, max_failed: int | None = None,
                **spec: Any) -> dict[str, Any]:
    """A JointSearch of the stand-in trainer (tests/kube/fake_trainer.py), budgets 1-9 s."""
    body: dict[str, Any] = {
        "budgets": {"min": 1, "max": 9, "eta": 3},
        "maxIterations": iterations,
        "parallelTrialCount": parallel,
        "seed": 3,
        "dataset": {"url": "http://127.0.0.1:9/unused.tar.gz",
                    "md5": "de808eed20bae32db8b324f967887cf8"},
        "trainer": {"device": "cpu", "threads": 1, "overrunFactor": 1,
                    "startupAllowanceSeconds": 40},
        "trialTemplate": {
            "image": "nas-bohb/trainer:0.1.0",
            "command": ["python", "-m", "tests.kube.fake_trainer"],
            "resources": {"limits": {"cpu": "100m"}},
            "env": [
                {"name": "PYTHONPATH", "value": str(ROOT)},
                {"name": "FAKE_TRAINER_PLAN", "value": json.dumps(dict(plan))},
                {"name": "FAKE_TRAINER_LOG", "value": str(log)},
                {"name": "FAKE_TRAINER_SECONDS", "value": str(seconds)},
                {"name": "FAKE_TRAINER_SLOW_SECONDS", "value": "15"},
            ],
        },
    }
    if max_failed is not None:
        body["maxFailedTrialCount"] = max_failed
    body.update(spec)
    return {"apiVersion": "nas-bohb.io/v1alpha1", "kind": "JointSearch",
            "metadata": {"name": name}, "spec": body}


def create_search(api: Any, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return dict(api.post(SEARCHES.format(ns=namespace), body))


def get_search(api: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(api.get(f"{SEARCHES.format(ns=namespace)}/{name}"))


def wait_for_phase(api: Any, namespace: str, name: str, phases: tuple[str, ...],
                   timeout: float) -> dict[str, Any]:
    def phase() -> dict[str, Any] | None:
        body = get_search(api, namespace, name)
        return body if body.get("status", {}).get("phase") in phases else None

    return dict(wait_for(phase, timeout, f"search {name} to reach {'/'.join(phases)}"))


def runs(log: Path) -> list[tuple[str, int]]:
    """``(trial id, attempt)`` of every trainer start the stand-in trainer logged."""
    if not log.exists():
        return []
    return [(line.split()[0], int(line.split()[1]))
            for line in log.read_text().splitlines() if line.strip()]


def events(api: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items = api.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if e.get("involvedObject", {}).get("name") == name
            and e.get("involvedObject", {}).get("kind") == "JointSearch"]


def ledger_events(api: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items = api.get(f"/api/v1/namespaces/{namespace}/configmaps",
                    {"labelSelector": f"app.kubernetes.io/instance={name},"
                                      "app.kubernetes.io/component=ledger"})["items"]
    items.sort(key=lambda c: int(c["metadata"]["labels"]["nas-bohb.io/ledger-shard"]))
    return [json.loads(line) for c in items
            for line in c["data"]["events.jsonl"].splitlines() if line]


def jobs(api: Any, namespace: str) -> list[dict[str, Any]]:
    return list(api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"])
