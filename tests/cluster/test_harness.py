"""The test cluster harness against its real API server: control plane, nodes, command line.

Each test talks to the session's kube-apiserver 1.20 through the fixtures of
:mod:`tests.cluster.fixtures`; pods run as local processes on the exec-mode node or are only
simulated. Together they take well under a minute.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import simnode
from tests.cluster.fixtures import KubeCluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


# --- small factories --------------------------------------------------------------------------


def make_job(
    name: str,
    command: list[str],
    *,
    annotations: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
    resources: dict[str, Any] | None = None,
    active_deadline: int | None = None,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "localhost/nas-bohb:test",
                                 "command": command}
    if resources:
        container["resources"] = resources
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if tolerations:
        spec["tolerations"] = tolerations
    if node_selector:
        spec["nodeSelector"] = node_selector
    job: dict[str, Any] = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0,
                 "template": {"metadata": {"annotations": annotations or {}}, "spec": spec}},
    }
    if active_deadline is not None:
        job["spec"]["activeDeadlineSeconds"] = active_deadline
    return job


def make_pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "localhost/nas-bohb:test", "command": command}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def job_condition(api: simnode.KubeApi, namespace: str, name: str) -> str | None:
    job = api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    for condition in job.get("status", {}).get("conditions") or []:
        if condition["status"] == "True" and condition["type"] in ("Complete", "Failed"):
            return f"{condition['type']}:{condition.get('reason', '')}"
    return None


def job_pods(api: simnode.KubeApi, namespace: str, name: str) -> list[dict[str, Any]]:
    pods = api.get(f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": f"job-name={name}"})
    return list(pods.get("items") or [])


def exists(api: simnode.KubeApi, path: str) -> bool:
    try:
        api.get(path)
    except simnode.KubeApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def pid_in_log(cluster: KubeCluster, namespace: str, pod: str) -> int | None:
    log = cluster.pod_log(namespace, pod)
    if log is None or not log.exists():
        return None
    text = log.read_text().split()
    return int(text[0]) if text and text[0].isdigit() else None


SLEEP_FOREVER = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); "
                 "time.sleep(600)"]


# --- the control plane ------------------------------------------------------------------------


def test_api_server_answers_with_its_version_and_readiness(kube_cluster: KubeCluster) -> None:
    api = kube_cluster.kube_api()

    version = api.get("/version")
    readiness = api.request("GET", "/readyz", raw=True)

    if kube_cluster.local:
        assert version["gitVersion"] == "v1.20.2"
        assert kube_cluster.apiserver_url == f"https://127.0.0.1:{kube_cluster.apiserver_port}"
    assert readiness == b"ok"
    assert kube_cluster.default_node is not None
    nodes = api.get("/api/v1/nodes")["items"]
    default = next(node for node in nodes
                   if node["metadata"]["name"] == kube_cluster.default_node.name)
    assert {"type": "Ready", "status": "True"}.items() <= {
        key: value for condition in default["status"]["conditions"]
        if condition["type"] == "Ready" for key, value in condition.items()}.items()
    assert not [taint for taint in default["spec"].get("taints") or []
                if taint["key"].startswith("node.kubernetes.io/")]


# --- exec mode --------------------------------------------------------------------------------


def test_job_command_runs_as_local_process_and_its_log_is_kept(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    job = make_job("print-42", ["python", "-c", "print(42)"])

    api.post(f"/apis/batch/v1/namespaces/{kube_namespace}/jobs", job)
    result = wait_until(lambda: job_condition(api, kube_namespace, "print-42"), what="Job end")

    assert result == "Complete:"
    (pod,) = job_pods(api, kube_namespace, "print-42")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    log = kube_cluster.pod_log(kube_namespace, pod["metadata"]["name"])
    assert log is not None and log.read_text() == "42\n"


def test_pod_environment_resolves_fields_secrets_and_service_account(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    api.post(f"/api/v1/namespaces/{kube_namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"password": "s3cret"}})
    script = (
        "import os, pathlib; d = pathlib.Path(os.environ['NAS_BOHB_SERVICEACCOUNT_DIR']); "
        "print(os.environ['POD'], os.environ['NS'], os.environ['PASSWORD'], "
        "os.environ['GREETING'], os.environ['KUBERNETES_SERVICE_PORT'], "
        "(d / 'namespace').read_text(), len((d / 'token').read_text()) > 100, "
        "(d / 'ca.crt').read_text().startswith('-----BEGIN CERTIFICATE'))"
    )
    env = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PASSWORD",
         "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "GREETING", "value": "hello-$(POD)"},
    ]
    pod = make_pod("env-check", ["python", "-c", script], container={"env": env})

    api.post(f"/api/v1/namespaces/{kube_namespace}/pods", pod)
    path = f"/api/v1/namespaces/{kube_namespace}/pods/env-check"
    wait_until(lambda: api.get(path)["status"].get("phase") in ("Succeeded", "Failed"),
               what="pod end")

    assert api.get(path)["status"]["phase"] == "Succeeded"
    log = kube_cluster.pod_log(kube_namespace, "env-check")
    assert log is not None
    assert log.read_text().split() == [
        "env-check", kube_namespace, "s3cret", "hello-env-check",
        str(kube_cluster.apiserver_port), kube_namespace, "True", "True"]


def test_deleted_pod_process_is_killed(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    api = kube_cluster.kube_api()
    path = f"/api/v1/namespaces/{kube_namespace}/pods/sleeper"
    api.post(f"/api/v1/namespaces/{kube_namespace}/pods", make_pod("sleeper", SLEEP_FOREVER))
    pid = wait_until(lambda: pid_in_log(kube_cluster, kube_namespace, "sleeper"),
                     what="the pod's process to start")
    assert pid_alive(pid)

    api.delete(path)

    wait_until(lambda: not pid_alive(pid), timeout=10, what="the process to end")
    wait_until(lambda: not exists(api, path), timeout=10, what="the pod to be removed")


def test_job_deadline_kills_the_process_and_fails_the_job(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    job = make_job("too-slow", SLEEP_FOREVER, active_deadline=2)

    api.post(f"/apis/batch/v1/namespaces/{kube_namespace}/jobs", job)
    pod_name = wait_until(lambda: [pod["metadata"]["name"]
                                   for pod in job_pods(api, kube_namespace, "too-slow")],
                          what="the Job's pod")[0]
    pid = wait_until(lambda: pid_in_log(kube_cluster, kube_namespace, pod_name),
                     what="the pod's process to start")
    result = wait_until(lambda: job_condition(api, kube_namespace, "too-slow"), timeout=30,
                        what="the Job to fail")

    assert result == "Failed:DeadlineExceeded", [
        (pod["metadata"], pod["status"]) for pod in job_pods(api, kube_namespace, "too-slow")]
    wait_until(lambda: not pid_alive(pid), timeout=10, what="the process to end")


def test_pod_active_deadline_fails_the_pod(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    path = f"/api/v1/namespaces/{kube_namespace}/pods/bounded"

    api.post(f"/api/v1/namespaces/{kube_namespace}/pods",
             make_pod("bounded", SLEEP_FOREVER, activeDeadlineSeconds=1))
    status = wait_until(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        api.get(path)["status"]), what="the pod to fail")

    assert status["reason"] == "DeadlineExceeded"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 128 + 15  # SIGTERM ended it within the grace period


def test_failing_command_reports_exit_code_and_log_tail(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    path = f"/api/v1/namespaces/{kube_namespace}/pods/crasher"
    script = "import sys; print('loss is nan'); sys.exit(3)"

    api.post(f"/api/v1/namespaces/{kube_namespace}/pods", make_pod(
        "crasher", ["python", "-c", script],
        container={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    status = wait_until(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        api.get(path)["status"]), what="the pod to fail")

    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert terminated["message"] == "loss is nan\n"


def test_termination_message_file_becomes_the_containers_message(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    base = f"/api/v1/namespaces/{kube_namespace}/pods"
    # Names the path through its own variable, writes more than 4096 bytes, then fails:
    # the file wins over the log, and only its last 4096 bytes are kept.
    long_message = "import os, sys; print('log'); " \
        "open(os.environ['MESSAGE_FILE'], 'w').write('x' * 5000 + 'end'); sys.exit(1)"
    api.post(base, make_pod("long-message", ["python", "-c", long_message], container={
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": [{"name": "MESSAGE_FILE", "value": "/dev/termination-log"}]}))
    # Sets nothing: NAS_BOHB_TERMINATION_LOG names the file standing in for its own path.
    defaulted = "import os; open(os.environ['NAS_BOHB_TERMINATION_LOG'], 'w').write('done')"
    api.post(base, make_pod("defaulted", ["python", "-c", defaulted], container={
        "terminationMessagePath": "/var/run/done"}))

    def ended(name: str) -> dict[str, Any] | None:
        status: dict[str, Any] = api.get(f"{base}/{name}")["status"]
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    failed = wait_until(lambda: ended("long-message"), what="the first pod to end")
    succeeded = wait_until(lambda: ended("defaulted"), what="the second pod to end")

    terminated = failed["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1
    assert terminated["message"] == ("x" * 5000 + "end")[-4096:]
    assert succeeded["phase"] == "Succeeded"
    assert succeeded["containerStatuses"][0]["state"]["terminated"]["message"] == "done"


# --- scheduling -------------------------------------------------------------------------------


def test_gpu_requesting_pod_schedules_and_runs(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    gpu = {"limits": {"nvidia.com/gpu": "1"}}
    too_many = {"limits": {"nvidia.com/gpu": "1000"}}

    api.post(f"/api/v1/namespaces/{kube_namespace}/pods",
             make_pod("one-gpu", ["python", "-c", "pass"], container={"resources": gpu}))
    api.post(f"/api/v1/namespaces/{kube_namespace}/pods",
             make_pod("many-gpus", ["python", "-c", "pass"], container={"resources": too_many}))
    base = f"/api/v1/namespaces/{kube_namespace}/pods"
    wait_until(lambda: api.get(f"{base}/one-gpu")["status"].get("phase") == "Succeeded",
               what="the GPU pod to succeed")
    unschedulable = wait_until(lambda: [
        condition for condition in api.get(f"{base}/many-gpus")["status"].get("conditions") or []
        if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable"],
        what="the scheduler to refuse 1000 GPUs")

    node = api.get(f"/api/v1/nodes/{api.get(f'{base}/one-gpu')['spec']['nodeName']}")
    assert node["metadata"]["labels"][simnode.MODE_LABEL] == "exec"
    assert "nvidia.com/gpu" in unschedulable[0]["message"]


# --- simulate mode ----------------------------------------------------------------------------


def test_simulated_jobs_complete_or_fail_as_annotated(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    finished: list[str] = []
    toleration = [{"key": simnode.SIMULATED_TAINT["key"], "operator": "Exists",
                   "effect": "NoSchedule"}]
    jobs = {
        "sim-ok": {simnode.SIMULATE_SECONDS_ANNOTATION: "0.5"},
        "sim-crash": {simnode.SIMULATE_SECONDS_ANNOTATION: "0.2",
                      simnode.SIMULATE_EXIT_CODE_ANNOTATION: "3"},
    }

    with kube_cluster.node(mode="simulate",
                           on_finish=lambda pod: finished.append(pod["metadata"]["name"])) as node:
        for name, annotations in jobs.items():
            # The command does not exist here: proof that nothing is executed.
            job = make_job(name, ["/no/such/trainer"], annotations=annotations,
                           tolerations=toleration, resources={"limits": {"nvidia.com/gpu": "1"}},
                           node_selector={"kubernetes.io/hostname": node.name})
            api.post(f"/apis/batch/v1/namespaces/{kube_namespace}/jobs", job)
        results = {name: wait_until(functools.partial(job_condition, api, kube_namespace, name),
                                    what=f"Job {name} to end") for name in jobs}
        stats = node.stats
        pods = {name: job_pods(api, kube_namespace, name)[0] for name in jobs}

    assert results == {"sim-ok": "Complete:", "sim-crash": "Failed:BackoffLimitExceeded"}
    assert {pod["spec"]["nodeName"] for pod in pods.values()} == {node.name}
    crash = pods["sim-crash"]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert crash["exitCode"] == 3
    assert (stats.started, stats.succeeded, stats.failed) == (2, 1, 1)
    assert sorted(name.rsplit("-", 1)[0] for name in finished) == ["sim-crash", "sim-ok"]


def test_simulate_hook_decides_duration_and_exit_code(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    seen: list[str] = []

    def hook(pod: dict[str, Any]) -> tuple[float, int]:
        seen.append(pod["metadata"]["name"])
        return 0.0, 7

    with kube_cluster.node(mode="simulate", simulate=hook, taints=[]) as node:
        api.post(f"/api/v1/namespaces/{kube_namespace}/pods",
                 make_pod("hooked", ["true"], nodeName=node.name))
        path = f"/api/v1/namespaces/{kube_namespace}/pods/hooked"
        status = wait_until(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
            api.get(path)["status"]), what="the pod to fail")

    assert seen == ["hooked"]
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 7


def test_simulate_hook_can_leave_a_termination_message(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()

    def hook(pod: dict[str, Any]) -> tuple[float, int]:
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        Path(env["RESULT_FILE"]).write_text('{"loss": 0.25}')
        return 0.0, 0

    container = {"env": [{"name": "RESULT_FILE", "value": "/dev/termination-log"}]}
    with kube_cluster.node(mode="simulate", simulate=hook, taints=[]) as node:
        api.post(f"/api/v1/namespaces/{kube_namespace}/pods",
                 make_pod("reporter", ["true"], nodeName=node.name, container=container))
        path = f"/api/v1/namespaces/{kube_namespace}/pods/reporter"
        status = wait_until(lambda: (lambda s: s if s.get("phase") == "Succeeded" else None)(
            api.get(path)["status"]), what="the pod to succeed")

    assert status["containerStatuses"][0]["state"]["terminated"]["message"] == '{"loss": 0.25}'


def test_pod_watch_resumes_after_a_broken_stream_without_listing_again(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    api = kube_cluster.kube_api()
    path = f"/api/v1/namespaces/{kube_namespace}/pods/late"

    with kube_cluster.node(mode="simulate", taints=[]) as node:
        wait_until(lambda: node._watch_response is not None, what="the node's watch")
        node._watch_response.shutdown()
        api.post(f"/api/v1/namespaces/{kube_namespace}/pods",
                 make_pod("late", ["true"], nodeName=node.name))
        wait_until(lambda: api.get(path)["status"].get("phase") == "Succeeded",
                   what="the pod to succeed")

    assert node.stats.lists == 1


# --- command line -----------------------------------------------------------------------------


def test_command_line_up_env_status_and_idempotent_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KUBECONFIG", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tests.cluster", *args,
                               f"--state-dir={state}"], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=180, check=False)

    try:
        up = cli("up", "--node-mode=simulate", "--node-gpus=2")
        assert up.returncode == 0, up.stderr
        export = f"export KUBECONFIG={state / 'kubeconfig'}"
        assert up.stdout.strip().splitlines()[-1] == export
        assert cli("env").stdout.strip() == export
        status = cli("status")
        assert status.returncode == 0 and "node-nas-bohb-simulate-0" in status.stdout
        nodes = simnode.KubeApi.from_kubeconfig(state / "kubeconfig").get("/api/v1/nodes")
        assert [node["status"]["capacity"]["nvidia.com/gpu"] for node in nodes["items"]] == ["2"]
        pids = [int(path.read_text().split()[0]) for path in (state / "pids").glob("*.pid")]
        assert len(pids) == 5
    finally:
        down = cli("down")
    assert down.returncode == 0 and "kube-apiserver" in down.stdout
    assert not [pid for pid in pids if pid_alive(pid)]
    again = cli("down")
    assert again.returncode == 0 and again.stdout.strip() == "nothing was running"
