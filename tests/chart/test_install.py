"""The chart installed by the real Helm engine on the test cluster, and a search run from it.

One test does the whole journey because each step needs the one before (budget: the two
real CIFAR-10 trials dominate, about a minute each on two cores):

1. ``helm install`` (helm_python, Helm v4 in-process) into a fresh namespace, watching only
   that namespace (so an operator of another test never sees this search); every object
   the chart promises exists, and the CRD carries the keep policy.
2. The operator runs exactly as the Deployment says: its command, arguments and environment
   come from the installed Deployment, its defaults file from the installed ConfigMap, and it
   authenticates as the chart's ServiceAccount (a token kubeconfig), so the chart's Role is
   all it may use.
3. A two-trial search on real CIFAR-10 runs to ``Succeeded`` while ``/metrics`` is scraped:
   the started/finished counters, trials by state and the best loss move as trials finish.
4. ``helm upgrade`` changes the Deployment; ``helm uninstall`` removes the operator's
   objects and keeps the CRD.

.. note::
   The operator runs as a local process, not as the Deployment's pod: the simulated node
   runs a pod's command, but the operator reads in-cluster credentials only from the
   standard service-account path, which a local process cannot have. The pod is therefore
   held ``Pending`` by a node selector that no node matches, and the same command runs here
   with the same ServiceAccount's token.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.render import CHART_DIR, ROOT

helm_python = pytest.importorskip("helm_python")

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CRD = "jointsearches.nas-bohb.io"
DATA = ROOT.parent / "shared/data/cifar-10-python.tar.gz"
HOLD_PENDING = {"nas-bohb.io/test-hold": "no-such-node"}

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


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
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


def token_kubeconfig(api: Any, cluster_kubeconfig: Path, namespace: str, account: str,
                     out: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``namespace/account``."""
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        account, namespace, request).status.token
    admin = yaml.safe_load(cluster_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    out.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": account,
                                                      "namespace": namespace}}],
    }))
    return out


@contextlib.contextmanager
def operator_process(deployment: Any, defaults_text: str, kubeconfig: Path,
                     folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run the Deployment's container command here, as its pod would run it."""
    container = deployment.spec.template.spec.containers[0]
    (folder / "etc").mkdir()
    (folder / "etc/defaults.yaml").write_text(defaults_text)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR", "HOME")}
    for var in container.env or []:
        # The defaults ConfigMap is mounted at /etc/nas-bohb in the pod; here at etc/.
        env[var.name] = var.value.replace("/etc/nas-bohb", str(folder / "etc"))
    env["KUBECONFIG"] = str(kubeconfig)
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable if a == "python" else a for a in container.command + container.args]
    log = (folder / "operator.log").open("wb")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


@pytest.mark.skipif(not DATA.exists(), reason="the local CIFAR-10 archive is not present")
def test_chart_installs_and_its_operator_runs_a_search_with_moving_metrics(
    kube_cluster: Any, kube_namespace: str, tmp_path: Path,
) -> None:
    from kubernetes import client

    ns, release = kube_namespace, "nas-bohb"
    metrics_port, health_port = free_port(), free_port()
    values = {
        "watchNamespaces": [ns],
        "metrics": {"port": metrics_port},
        "health": {"port": health_port},
        "nodeSelector": HOLD_PENDING,
        "dashboard": {"enabled": True},
    }
    api = kube_cluster.api_client()
    config = helm_python.Config(kubeconfig_path=str(kube_cluster.kubeconfig), namespace=ns)
    adopted = adopt_crd(api, release, ns)
    config.install(str(CHART_DIR), release, values, namespace=ns, timeout=60)
    try:
        # 1. Everything the chart promises exists.
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        rbac = client.RbacAuthorizationV1Api(api)
        deployment = apps.read_namespaced_deployment(release, ns)
        assert deployment.spec.template.spec.service_account_name == release
        core.read_namespaced_service_account(release, ns)
        core.read_namespaced_service(f"{release}-metrics", ns)
        defaults = core.read_namespaced_config_map(f"{release}-defaults", ns)
        dashboard = core.read_namespaced_config_map(f"{release}-dashboard", ns)
        assert dashboard.metadata.labels["grafana_dashboard"] == "1"
        role = rbac.read_namespaced_role(release, ns)
        assert {r for rule in role.rules for r in rule.resources} >= {"jobs", "jointsearches"}
        rbac.read_namespaced_role_binding(release, ns)
        crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"

        # 2. The operator, as the Deployment and the chart's ServiceAccount define it.
        kubeconfig = token_kubeconfig(api, kube_cluster.kubeconfig, ns, release,
                                      tmp_path / "operator.kubeconfig")
        with operator_process(deployment, defaults.data["defaults.yaml"], kubeconfig,
                              tmp_path) as operator:
            wait_for("the operator's liveness endpoint", lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{health_port}/healthz", timeout=2).status == 200, 60)
            wait_for("/metrics", lambda: scrape(metrics_port) is not None, 30)

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
                assert operator.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
                samples = scrape(metrics_port)
                finished = total(samples, "nas_bohb_trials_finished_total", search="tiny")
                if not seen_finished or finished != seen_finished[-1]:
                    seen_finished.append(finished)
                most_running = max(most_running, total(samples, "nas_bohb_trials",
                                                       search="tiny", state="running"))
                body = custom.get_namespaced_custom_object_status(
                    "nas-bohb.io", "v1alpha1", ns, "jointsearches", "tiny")
                phase = (body.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    break
                time.sleep(1)
            log = (tmp_path / "operator.log").read_text()
            assert phase == "Succeeded", f"phase {phase}; operator log:\n{log[-3000:]}"

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
            best = total(samples, "nas_bohb_best_loss", **mine)
            incumbent = body["status"]["bestLoss"]
            assert 0 < best < 1 and best == pytest.approx(incumbent)
        # 4. An upgrade re-renders the Deployment and keeps the CRD in place.
        config.upgrade(str(CHART_DIR), release, {**values, "operator": {"verbose": True}},
                       namespace=ns, timeout=60)
        upgraded = client.AppsV1Api(api).read_namespaced_deployment(release, ns)
        assert "--verbose" in upgraded.spec.template.spec.containers[0].args
        assert upgraded.metadata.generation > deployment.metadata.generation
    finally:
        # 5. Uninstall removes the operator's objects and keeps the CRD.
        config.uninstall(release, timeout=60)
        config.close()
    apps = client.AppsV1Api(api)
    with pytest.raises(client.ApiException):
        apps.read_namespaced_deployment(release, ns)
    client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
    api.close()
    if adopted:
        print("The CRD existed before the install and was adopted by the release.")
