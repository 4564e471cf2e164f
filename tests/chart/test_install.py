"""The chart installed by the real Helm engine on the test cluster, and a search run from it.

One test does the whole journey because each step needs the one before (budget: the two
real CIFAR-10 trials dominate):

1. ``helm install`` (helm_python, Helm v4 in-process) into a fresh namespace, watching only
   that namespace (so an operator of another test never sees this search); every object
   the chart promises exists, and the CRD carries the keep policy.
2. The operator runs as the chart's Deployment pod: the scheduler places it on an exec-mode
   simulated node, which runs the container's command, arguments and environment as a local
   process, with the defaults ConfigMap and the ``/tmp`` emptyDir as folders and the chart
   ServiceAccount's token in the folder named by ``NAS_BOHB_SERVICEACCOUNT_DIR``, so the
   operator's in-cluster credentials, and only the chart's Role, are what it uses.
3. A two-trial search on real CIFAR-10 runs to ``Succeeded`` while ``/metrics`` is scraped
   (the pod's process listens on this machine's ports, picked free for the test): the
   started/finished counters, trials by state and the best loss move as trials finish.
4. ``helm upgrade`` changes the Deployment; the ReplicaSet of the new template replaces the
   pod (``Recreate``: the old one is gone first) and the new operator handles a new search.
5. ``helm uninstall`` removes the operator's objects, its pod and process, and keeps the CRD.

The values add what the simulated node cannot take from an image: ``PYTHONPATH`` naming
the checkout and ``TMPDIR=/tmp``, which the node maps to the pod's emptyDir.
"""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.render import CHART_DIR, ROOT
from tests.cluster.simnode import MODE_LABEL

helm_python = pytest.importorskip("helm_python")

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CRD = "jointsearches.nas-bohb.io"
DATA = ROOT.parent / "shared/data/cifar-10-python.tar.gz"

# The fixed part of a tiny network; only the learning rate is searched.
SMALL_NET = {
    "nr_residual_blocks_1": 1, "nr_residual_blocks_2": 1, "nr_residual_blocks_3": 1,
    "initial_filters": 8, "widen_factor_1": 0.5, "widen_factor_2": 1, "widen_factor_3": 1,
    "res_branches_1": 1, "res_branches_2": 1, "res_branches_3": 1, "batch_size": 128,
    "weight_decay": 0.0001, "momentum": 0.9, "alpha": 0, "length": 0, "death_rate": 0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0,
             explain: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(every)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def search_document(name: str, cache: Path) -> dict[str, Any]:
    parameters = [{"name": k, "type": "constant", "value": v} for k, v in SMALL_NET.items()]
    parameters.append({"name": "learning_rate", "type": "float", "low": 0.01, "high": 0.3,
                       "log": True})
    return {
        "apiVersion": "nas-bohb.io/v1alpha1", "kind": "JointSearch",
        "metadata": {"name": name},
        "spec": {
            "budgets": {"min": 1, "max": 3, "eta": 3},
            "maxIterations": 1, "maxTrialCount": 2, "parallelTrialCount": 1, "seed": 3,
            "searchSpace": {"preset": "none", "parameters": parameters},
            "trainer": {"device": "cpu", "threads": 1},
            "dataset": {"path": str(DATA)},
            "trialTemplate": {
                "image": "nas-bohb/trainer:0.1.0", "cacheDir": "/cache",
                "resources": {"limits": {"cpu": "1"}},
                # One extracted copy of CIFAR-10 for both trials.
                "volumes": [{"name": "cache", "hostPath": {"path": str(cache)}}],
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            },
        },
    }


def adopt_crd(api: Any, release: str, namespace: str) -> bool:
    """Let this release take over a CRD another test applied from manifests/."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    try:
        ext.read_custom_resource_definition(CRD)
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    ext.patch_custom_resource_definition(CRD, {"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": release,
                        "meta.helm.sh/release-namespace": namespace}}})
    return True


def answers(url: str) -> bool:
    """Whether an HTTP endpoint answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def running_pod(core: Any, namespace: str, selector: str, *, flag: str | None = None) -> Any:
    """The one Running pod of the selector (whose container has ``flag`` among its args)."""
    pods = [pod for pod in core.list_namespaced_pod(namespace, label_selector=selector).items
            if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp
            and (flag is None or flag in (pod.spec.containers[0].args or []))]
    return pods[0] if len(pods) == 1 else None


def search_status(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    body = custom.get_namespaced_custom_object_status(
        "nas-bohb.io", "v1alpha1", namespace, "jointsearches", name)
    return dict(body.get("status") or {})


def pod_log(cluster: Any, namespace: str, name: str, tail: int = 3000) -> str:
    """The end of an exec-mode pod's log, for assertion messages."""
    path = cluster.pod_log(namespace, name)
    return path.read_text(errors="replace")[-tail:] if path is not None else "(no log)"


@pytest.mark.skipif(not DATA.exists(), reason="the local CIFAR-10 archive is not present")
def test_chart_installs_and_its_operator_pod_runs_a_search_with_moving_metrics(
    kube_cluster: Any, kube_namespace: str, tmp_path: Path,
) -> None:
    from kubernetes import client

    ns, release = kube_namespace, "nas-bohb"
    metrics_port, health_port = free_port(), free_port()
    healthz = f"http://127.0.0.1:{health_port}/healthz"
    values: dict[str, Any] = {
        "watchNamespaces": [ns],
        "metrics": {"port": metrics_port},
        "health": {"port": health_port},
        # A node that runs the pod's command (simulate-mode nodes are tainted anyway).
        "nodeSelector": {MODE_LABEL: "exec"},
        "operator": {"extraEnv": [{"name": "PYTHONPATH", "value": str(ROOT)},
                                  {"name": "TMPDIR", "value": "/tmp"}]},
        "dashboard": {"enabled": True},
    }
    api = kube_cluster.api_client()
    config = helm_python.Config(kubeconfig_path=str(kube_cluster.kubeconfig), namespace=ns)
    adopted = adopt_crd(api, release, ns)
    config.install(str(CHART_DIR), release, values, namespace=ns, timeout=60)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    deployment = apps.read_namespaced_deployment(release, ns)
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
    try:
        # 1. Everything the chart promises exists.
        rbac = client.RbacAuthorizationV1Api(api)
        assert deployment.spec.template.spec.service_account_name == release
        core.read_namespaced_service_account(release, ns)
        core.read_namespaced_service(f"{release}-metrics", ns)
        core.read_namespaced_config_map(f"{release}-defaults", ns)
        dashboard = core.read_namespaced_config_map(f"{release}-dashboard", ns)
        assert dashboard.metadata.labels["grafana_dashboard"] == "1"
        role = rbac.read_namespaced_role(release, ns)
        assert {r for rule in role.rules for r in rule.resources} >= {"jobs", "jointsearches"}
        rbac.read_namespaced_role_binding(release, ns)
        crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"

        # 2. The operator runs as the Deployment's pod, with the pod's service account.
        pod = wait_for("the operator pod to run", lambda: running_pod(core, ns, selector), 120)
        name = pod.metadata.name
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels[MODE_LABEL] == "exec"
        wait_for("the operator's liveness endpoint", lambda: answers(healthz), 90,
                 explain=lambda: pod_log(kube_cluster, ns, name))
        wait_for("/metrics", lambda: scrape(metrics_port) is not None, 30)
        assert "with the service account in" in pod_log(kube_cluster, ns, name, 100_000), \
            pod_log(kube_cluster, ns, name)

        # 3. A two-trial search; the counters move as each trial finishes.
        cache = tmp_path / "cache"
        cache.mkdir()
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            "nas-bohb.io", "v1alpha1", ns, "jointsearches", search_document("tiny", cache))
        seen_finished: list[float] = []
        most_running = 0.0
        deadline = time.monotonic() + 420
        phase = None
        while time.monotonic() < deadline:
            pod_phase = core.read_namespaced_pod(name, ns).status.phase
            assert pod_phase == "Running", f"operator pod {pod_phase}:\n" + pod_log(
                kube_cluster, ns, name)
            samples = scrape(metrics_port)
            finished = total(samples, "nas_bohb_trials_finished_total", search="tiny")
            if not seen_finished or finished != seen_finished[-1]:
                seen_finished.append(finished)
            most_running = max(most_running, total(samples, "nas_bohb_trials",
                                                   search="tiny", state="running"))
            status = search_status(custom, ns, "tiny")
            phase = status.get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        assert phase == "Succeeded", f"phase {phase}; operator log:\n" + pod_log(
            kube_cluster, ns, name)

        # The status is patched before the gauges of the same handler run: give the
        # operator a few seconds to bring its metrics in line with the final status.
        mine = {"namespace": ns, "search": "tiny"}
        deadline = time.monotonic() + 15
        while True:
            samples = scrape(metrics_port)
            settled = (total(samples, "nas_bohb_trials", state="succeeded", **mine) == 2
                       and total(samples, "nas_bohb_trials", state="running", **mine) == 0)
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert seen_finished[0] == 0 and 1 in seen_finished, seen_finished
        assert most_running == 1  # parallelTrialCount
        assert total(samples, "nas_bohb_trials", state="running", **mine) == 0
        assert total(samples, "nas_bohb_trials_started_total", **mine) == 2
        assert total(samples, "nas_bohb_trials_finished_total", state="ok", **mine) == 2
        assert total(samples, "nas_bohb_trials", state="succeeded", **mine) == 2
        assert total(samples, "nas_bohb_gpu_seconds_total", **mine) == 0  # CPU trials
        assert total(samples, "nas_bohb_trial_duration_seconds_count", **mine) == 2
        # Each attempt's first report observes its wait from Job creation to trainer start.
        assert total(samples, "nas_bohb_trial_scheduling_wait_seconds_count", **mine) == 2
        best = total(samples, "nas_bohb_best_loss", **mine)
        incumbent = status["bestLoss"]
        assert 0 < best < 1 and best == pytest.approx(incumbent)

        # 4. An upgrade re-renders the Deployment; a pod of the new template takes over.
        config.upgrade(str(CHART_DIR), release,
                       {**values, "operator": {**values["operator"], "verbose": True}},
                       namespace=ns, timeout=60)
        upgraded = apps.read_namespaced_deployment(release, ns)
        assert "--verbose" in upgraded.spec.template.spec.containers[0].args
        assert upgraded.metadata.generation > deployment.metadata.generation
        new = wait_for("the upgraded operator pod to run",
                       lambda: running_pod(core, ns, selector, flag="--verbose"), 120)
        assert new.metadata.uid != pod.metadata.uid
        with pytest.raises(client.ApiException) as gone:  # Recreate: the old pod went first.
            core.read_namespaced_pod(name, ns)
        assert gone.value.status == 404

        def new_log() -> str:
            return pod_log(kube_cluster, ns, new.metadata.name)

        def handover_failed() -> dict[str, Any] | None:
            handover = search_status(custom, ns, "handover")
            return handover if handover.get("phase") == "Failed" else None

        wait_for("the new operator's liveness endpoint", lambda: answers(healthz), 90,
                 explain=new_log)
        # The new operator acts: a spec the schema accepts but no search can run fails.
        invalid = search_document("handover", cache)
        invalid["spec"]["budgets"] = {"min": 10, "max": 5}
        custom.create_namespaced_custom_object("nas-bohb.io", "v1alpha1", ns, "jointsearches",
                                               invalid)
        judged = wait_for("the new operator to judge a new search", handover_failed, 60,
                          explain=new_log)
        assert any(c["type"] == "Invalid" and c["status"] == "True"
                   for c in judged["conditions"]), judged
        assert " DEBUG " in pod_log(kube_cluster, ns, new.metadata.name, 100_000)
        # The finished search's gauges were replayed from its ledger and status.
        replayed = wait_for("the finished search's gauges after the restart", lambda: scrape(
            metrics_port) if total(scrape(metrics_port), "nas_bohb_trials", state="succeeded",
                                   **mine) == 2 else None, 30, explain=new_log)
        assert total(replayed, "nas_bohb_best_loss", **mine) == pytest.approx(incumbent)
        assert total(replayed, "nas_bohb_budget_best_loss", **mine) > 0
    finally:
        # 5. Uninstall removes the operator's objects and keeps the CRD.
        config.uninstall(release, timeout=60)
        config.close()
    with pytest.raises(client.ApiException):
        apps.read_namespaced_deployment(release, ns)
    wait_for("the operator pod to go", lambda: not core.list_namespaced_pod(
        ns, label_selector=selector).items, 90)
    assert not answers(healthz)  # Its process ended with it.
    client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
    api.close()
    if adopted:
        print("The CRD existed before the install and was adopted by the release.")
