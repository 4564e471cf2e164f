"""Scale benchmark of the operator: hundreds of simulated trials in flight at once.

What it runs: a local Kubernetes control plane (``tests.cluster``; or the cluster of
``--kubeconfig``), the CRD and RBAC from ``manifests/``, the operator as a separate
process authenticated as its ServiceAccount, and simulate-mode nodes with enough
``nvidia.com/gpu`` for ``--parallel`` trials. One ``JointSearch`` of ``--trials`` trials
(budgets 1, 3 and 9 units, Hyperband's eta 3) runs with ``parallelTrialCount =
--parallel``. A simulated trial trains ``budget x --unit-seconds`` seconds (+-50 %, fixed
per trial), then writes its result into the search's status with its own trainer
ServiceAccount token through :mod:`trainer.report`, as a trainer pod would, and its pod
ends when the operator deletes the Job (or, if the result never got through, after the
reporter's deadline).

The operator runs with the plain environment settings of ``manifests/deployment.yaml``
(``MALLOC_ARENA_MAX``), as installed.

What it prints: the operator's CPU seconds and peak memory (from ``/proc``: RSS alone and
with its child, the BOHB model process, and the summed PSS of both, which is what the
pod's memory cgroup is charged: shared libraries count once), dispatch latency per
trial (``dispatch=`` of the status lines: from the event that freed a slot to the Job's
creation; median and 99th percentile), the outcomes, the operator's API calls per trial
(counted by its client), all API server requests per trial (from the server's
``apiserver_request_total``), the most trials seen in flight, and the size of the
status and of the ledger ConfigMaps at the end.

    python benchmarks/operator_scale.py                       # 1,000 trials, 300 at once
    python benchmarks/operator_scale.py --trials 300 --json out.json

Measured on a shared 2-core machine (figures in the README); figures vary with
load. Targets: median dispatch under 1 s, operator memory under 300 MB, status under
1 MiB at 1,000 trials.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import heapq
import json
import math
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.kube import status as kube_status  # noqa: E402
from tests.cluster import control, simnode  # noqa: E402
from tests.kube import support  # noqa: E402
from trainer import report  # noqa: E402

NAME = "scale"
#: ``--tracemalloc``: runs the operator with tracemalloc and writes its largest allocation
#: sites to a file each time the traced total reaches a new high (diagnosis, ~2x slower).
TRACEMALLOC_LAUNCHER = """
import runpy, sys, threading, time, tracemalloc
out = sys.argv.pop(1)
tracemalloc.start(6)
def watch():
    base, high = tracemalloc.take_snapshot(), 0
    while True:
        time.sleep(20)
        current = tracemalloc.get_traced_memory()[0]
        if current <= high * 1.02:
            continue
        high = current
        diff = tracemalloc.take_snapshot().compare_to(base, "traceback")
        lines = [f"traced {current / 2**20:.1f} MiB; growth since start by place:"]
        for stat in diff[:25]:
            lines += ["", str(stat), *stat.traceback.format()]
        with open(out, "w") as handle:
            handle.write("\\n".join(lines) + "\\n")
threading.Thread(target=watch, daemon=True).start()
runpy.run_module("controller.kube", run_name="__main__", alter_sys=True)
"""
#: How long a simulated trainer keeps trying to deliver its result (the reporter's own).
REPORT_DEADLINE = 120.0


@dataclass
class Reports:
    """Sends simulated trainers' results at their time, from a few worker threads."""

    api: simnode.KubeApi
    namespace: str
    server: str
    ca_file: str | None
    unit_seconds: float
    workers: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(32))
    heap: list[tuple[float, int, dict[str, str]]] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)
    token_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    sent: int = 0
    failed: int = 0
    counter: int = 0
    stopped: bool = False
    ssl_context: Any = None
    write_seconds: list[float] = field(default_factory=list)

    def hook(self, pod: dict[str, Any]) -> tuple[float, int]:
        """Simulate-mode hook: the pod runs ``budget x unit`` s; its result comes just before."""
        env = {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}
        # Trainers are not all equally fast: +-50 %, fixed per trial.
        spread = 0.5 + (zlib.crc32(env["NAS_BOHB_TRIAL_ID"].encode()) % 1000) / 1000
        seconds = float(env["NAS_BOHB_BUDGET"]) * self.unit_seconds * spread
        with self.lock:
            self.counter += 1
            heapq.heappush(self.heap, (time.monotonic() + seconds, self.counter, env))
            self.lock.notify()
        # A real trainer exits only after its report went through (or its reporter gave up,
        # REPORT_DEADLINE later); the operator deletes the Job as soon as it has the result.
        return seconds + REPORT_DEADLINE + 10, 0

    def loop(self) -> None:
        while True:
            with self.lock:
                while not self.stopped and (not self.heap or self.heap[0][0] > time.monotonic()):
                    wait = self.heap[0][0] - time.monotonic() if self.heap else 1.0
                    self.lock.wait(max(0.005, min(wait, 1.0)))
                if self.stopped:
                    return
                _, _, env = heapq.heappop(self.heap)
            self.workers.submit(self.send, env)

    def token_path(self, search: str) -> str:
        path = self.token_dir / f"{search}.token"
        if not path.exists():
            answer = self.api.post(
                f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{search}-trainer/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                 "spec": {"expirationSeconds": 3 * 3600}})
            path.write_text(answer["status"]["token"])
        return str(path)

    def send(self, env: dict[str, str]) -> None:
        budget = float(env["NAS_BOHB_BUDGET"])
        target = report.KubeTarget(
            api_url=self.server, namespace=env["NAS_BOHB_SEARCH_NAMESPACE"],
            search=env["NAS_BOHB_SEARCH_NAME"], trial_id=env["NAS_BOHB_TRIAL_ID"],
            attempt=int(env["NAS_BOHB_TRIAL_ATTEMPT"]),
            token_path=self.token_path(env["NAS_BOHB_SEARCH_NAME"]), ca_path=self.ca_file,
            deadline_seconds=REPORT_DEADLINE,
            # The simulated node's per-pod file for the container's termination message.
            termination_log=env.get("NAS_BOHB_TERMINATION_LOG"))
        # A made-up validation error that improves with the budget, differs by config.
        noise = (zlib.crc32(env["NAS_BOHB_CONFIG_ID"].encode()) % 1000) / 5000
        error = round(min(0.9, 0.1 + noise + 0.5 / math.sqrt(budget)), 5)
        reporter = report.KubeReporter(target, ssl_context=self.ssl_context)
        began = time.monotonic()
        reporter.on_result({"status": "ok", "validation_error": error,
                            "test_error": error + 0.01, "budget_seconds": budget,
                            "train_seconds": budget, "epochs": 1.0, "learning_curve": []})
        with self.lock:
            self.write_seconds.append(time.monotonic() - began)
            if reporter.stats.sent:
                self.sent += 1
            else:
                self.failed += 1


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the engine may run its model in a child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _proc_stats(pid: int) -> tuple[float, int, int]:
    """CPU seconds (user + system, reaped children included), RSS and PSS of one process.

    PSS (proportional set size) divides each shared page among the processes that map it:
    summed over the operator and its model process it is what the pod's memory cgroup is
    charged, while summed RSS counts the shared libraries both map twice.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = sum(int(f) for f in fields[11:15]) / ticks
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    pss = int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1)) * 1024  # type: ignore[union-attr]
    return cpu, rss, pss


@dataclass
class Usage:
    """CPU and memory of the operator process, alone and with its child processes."""

    cpu: float = 0.0
    cpu_tree: float = 0.0
    rss: int = 0
    rss_tree: int = 0
    peak: int = 0
    peak_tree: int = 0
    peak_pss_tree: int = 0

    def sample(self, pid: int) -> None:
        per = {}
        for proc in _descendants(pid):
            with contextlib.suppress(OSError):
                per[proc] = _proc_stats(proc)
        if pid not in per:
            return
        self.cpu, self.rss, _ = per[pid]
        self.cpu_tree = max(self.cpu_tree, sum(c for c, _, _ in per.values()))
        self.rss_tree = sum(r for _, r, _ in per.values())
        self.peak = max(self.peak, self.rss)
        self.peak_tree = max(self.peak_tree, self.rss_tree)
        self.peak_pss_tree = max(self.peak_pss_tree, sum(p for _, _, p in per.values()))


def _apiserver_requests(api: simnode.KubeApi) -> float:
    text = api.request("GET", "/metrics", raw=True).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("apiserver_request_total{"))


def _spec(trials: int, parallel: int) -> dict[str, Any]:
    return {
        "apiVersion": "nas-bohb.io/v1alpha1", "kind": "JointSearch",
        "metadata": {"name": NAME},
        "spec": {
            "budgets": {"min": 1, "max": 9, "eta": 3},
            "maxIterations": 1000,
            "maxTrialCount": trials,
            "parallelTrialCount": parallel,
            "seed": 7,
            "dataset": {"url": "http://127.0.0.1:9/unused.tar.gz",
                        "md5": "de808eed20bae32db8b324f967887cf8"},
            "trainer": {"overrunFactor": 10, "startupAllowanceSeconds": 600},
            "trialTemplate": {
                "image": "nas-bohb/trainer:0.1.0",
                "tolerations": [{"key": "nas-bohb.io/simulated", "operator": "Exists",
                                 "effect": "NoSchedule"}],
            },
        },
    }


@contextlib.contextmanager
def _cluster(kubeconfig: str | None) -> Iterator[Path]:
    if kubeconfig:
        yield Path(kubeconfig)
        return
    state = Path(tempfile.mkdtemp(prefix="nas-bohb-bench-"))
    info = control.start_cluster(state, die_with_parent=True)
    try:
        yield Path(info.kubeconfig)
    finally:
        control.stop_cluster(state)
        shutil.rmtree(state, ignore_errors=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    with _cluster(args.kubeconfig) as kubeconfig:
        api = simnode.KubeApi.from_kubeconfig(kubeconfig)
        support.install(api)
        work = Path(tempfile.mkdtemp(prefix="nas-bohb-bench-op-"))
        operator_config = support.operator_kubeconfig(api, kubeconfig, work / "kubeconfig")
        namespace = f"bench-{int(time.time())}"
        api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": namespace}})
        support.wait_for(lambda: _has_default_account(api, namespace), 60,
                         "the namespace's default ServiceAccount")

        reports = Reports(api, namespace, api.host, api.ca_cert_file, args.unit_seconds)
        reports.ssl_context = ssl.create_default_context(cafile=api.ca_cert_file)
        threading.Thread(target=reports.loop, daemon=True).start()
        per_node = math.ceil(args.parallel * 1.1 / args.nodes) + 5
        capacity = simnode.NodeCapacity(cpu="1000", memory="4000Gi", pods=per_node,
                                        gpus=per_node)
        nodes = [simnode.SimNode(api, f"bench-sim-{i}", mode="simulate", capacity=capacity,
                                 simulate=reports.hook,
                                 lanes=16, die_with_parent=True)
                 for i in range(args.nodes)]
        for node in nodes:
            node.start()
        requests_before = _apiserver_requests(api)

        log_path = work / "operator.log"
        env = {**os.environ, **_deployment_env(), "KUBECONFIG": str(operator_config),
               "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "controller.kube", "-n", namespace]
        if args.profile:
            # cProfile of the operator's event-loop thread, written when it stops.
            command[1:1] = ["-m", "cProfile", "-o", str(args.profile)]
        if args.tracemalloc:
            command[1:3] = ["-c", TRACEMALLOC_LAUNCHER, str(args.tracemalloc)]
        with open(log_path, "wb") as log:
            operator = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT,
                                        preexec_fn=simnode.die_with_parent_preexec())
        usage = Usage()
        dispatch_seen: dict[str, float] = {}  # status.results keeps only the latest lines.
        most_in_flight = 0
        status_bytes_max = 0
        started = time.monotonic()
        body: dict[str, Any] = {}
        try:
            support.create_search(api, namespace, _spec(args.trials, args.parallel))
            while time.monotonic() - started < args.timeout:
                time.sleep(1.0)
                usage.sample(operator.pid)
                body = support.get_search(api, namespace, NAME)
                status = body.get("status") or {}
                for key in ("results", "active"):
                    for trial_id, line in (status.get(key) or {}).items():
                        value = kube_status.parse_line(line).get("dispatch")
                        if isinstance(value, float):
                            dispatch_seen[trial_id] = value
                most_in_flight = max(most_in_flight, status.get("trialsRunning", 0))
                status_bytes_max = max(status_bytes_max, len(json.dumps(
                    status, separators=(",", ":"))))
                if args.verbose:
                    print(f"{time.monotonic() - started:6.0f} s  {status.get('phase')}  "
                          f"{status.get('progress')}  running {status.get('trialsRunning')}  "
                          f"cpu {usage.cpu_tree:.1f} s  "
                          f"rss {usage.rss_tree / 2**20:.0f} MiB", flush=True)
                if status.get("phase") in ("Succeeded", "Failed"):
                    break
            elapsed = time.monotonic() - started
            usage.sample(operator.pid)
        finally:
            operator.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.wait(timeout=30)
            if operator.poll() is None:
                operator.kill()
            reports.stopped = True
            with reports.lock:
                reports.lock.notify_all()
            for node in nodes:
                node.stop(delete_node=True)
            operator_config.unlink(missing_ok=True)  # It holds a token.
            shutil.rmtree(reports.token_dir, ignore_errors=True)
        requests = _apiserver_requests(api) - requests_before

        status = body.get("status") or {}
        done = status.get("trialsDone", 0)
        dispatch = list(dispatch_seen.values())
        ledger_events = support.ledger_events(api, namespace, NAME)
        outcomes = collections.Counter(e["outcome"]["status"] for e in ledger_events
                                       if e["event"] == "finished")
        calls_line = re.search(r"API calls made: (\d+) in total \((.*)\)",
                               log_path.read_text(errors="replace"))
        calls = int(calls_line.group(1)) if calls_line else None
        ledger = api.get(f"/api/v1/namespaces/{namespace}/configmaps",
                         {"labelSelector": "app.kubernetes.io/component=ledger"})["items"]
        return {
            "trials": args.trials, "parallel": args.parallel, "unit_seconds": args.unit_seconds,
            "phase": status.get("phase"), "trials_done": done, "elapsed_seconds": elapsed,
            "most_in_flight_status": most_in_flight,
            "operator_cpu_seconds": usage.cpu,
            "operator_cpu_seconds_with_children": usage.cpu_tree,
            "operator_cpu_ms_per_trial": 1000 * usage.cpu_tree / max(done, 1),
            "operator_rss_mib_peak": usage.peak / 2**20,
            "operator_rss_mib_peak_with_children": usage.peak_tree / 2**20,
            "operator_pss_mib_peak_with_children": usage.peak_pss_tree / 2**20,
            "dispatch_median_seconds": statistics.median(dispatch) if dispatch else None,
            "dispatch_p99_seconds": _percentile(dispatch, 0.99) if dispatch else None,
            "dispatch_samples": len(dispatch),
            "operator_api_calls": calls,
            "operator_api_calls_per_trial": calls / max(done, 1) if calls else None,
            "operator_api_calls_by_kind": calls_line.group(2) if calls_line else None,
            "apiserver_requests_per_trial": requests / max(done, 1),
            "status_bytes_end": len(json.dumps(status, separators=(",", ":"))),
            "status_bytes_max": status_bytes_max,
            "ledger_configmaps": len(ledger),
            "ledger_bytes": sum(len(c["data"]["events.jsonl"]) for c in ledger),
            "outcomes": dict(outcomes),
            "report_write_median_seconds": statistics.median(reports.write_seconds)
            if reports.write_seconds else None,
            "report_write_p99_seconds": _percentile(reports.write_seconds, 0.99)
            if reports.write_seconds else None,
            "reports_sent": reports.sent, "reports_failed": reports.failed,
            "operator_log": str(log_path),
        }


def _deployment_env() -> dict[str, str]:
    """The operator container's plain settings in ``manifests/`` (``MALLOC_ARENA_MAX``...).

    The benchmark runs the operator with them, as the install does; ``NAS_BOHB_*`` values
    name the pod's files and ports and are left out.
    """
    import yaml

    for document in yaml.safe_load_all((ROOT / "manifests" / "deployment.yaml").read_text()):
        if isinstance(document, dict) and document.get("kind") == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            return {e["name"]: str(e["value"]) for e in container.get("env") or []
                    if "value" in e and not e["name"].startswith("NAS_BOHB_")}
    raise SystemExit("manifests/deployment.yaml holds no Deployment")


def _has_default_account(api: simnode.KubeApi, namespace: str) -> bool:
    try:
        account = api.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
    except simnode.KubeApiError:
        return False
    return bool(account.get("secrets"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=300)
    parser.add_argument("--unit-seconds", type=float, default=40.0,
                        help="simulated seconds per budget unit (budgets are 1, 3, 9 units)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting one")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="cProfile the operator into this file")
    parser.add_argument("--tracemalloc", type=Path,
                        help="write the operator's largest allocation sites into this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print progress")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the operator, the nodes and the cluster are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = run(args)
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    print()
    for line in _against_targets(result):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["phase"] == "Succeeded" else 1


def _against_targets(result: dict[str, Any]) -> list[str]:
    """The issue's targets next to what this run measured (the status at 1,000 trials)."""
    def shown(value: Any, unit: str, scale: float = 1.0) -> str:
        return "n/a" if value is None else f"{value * scale:.3g} {unit}"

    rows = [
        ("dispatch latency, median", shown(result["dispatch_median_seconds"], "s"), "< 1 s",
         result["dispatch_median_seconds"] is not None
         and result["dispatch_median_seconds"] < 1.0),
        ("pod memory (PSS, operator + model process)",
         shown(result["operator_pss_mib_peak_with_children"], "MiB"), "< 300 MB",
         result["operator_pss_mib_peak_with_children"] * 2**20 < 300e6),
        ("status object, largest", shown(result["status_bytes_max"], "KiB", 1 / 1024),
         "< 1 MiB", result["status_bytes_max"] < 2**20),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'measured':>12}  {'target':>9}"]
    lines += [f"{name:<{width}}  {value:>12}  {target:>9}  {'met' if ok else 'NOT MET'}"
              for name, value, target, ok in rows]
    return lines


if __name__ == "__main__":
    sys.exit(main())
