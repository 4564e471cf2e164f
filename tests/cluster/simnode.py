"""Simulated Kubernetes nodes: run a pod's command as a local process, or only pretend to.

The test cluster has no kubelet and no container runtime. A :class:`SimNode` does what KWOK
does for the API: it registers a Ready ``Node`` with the capacity asked for (``cpu``,
``memory``, ``pods`` and ``nvidia.com/gpu``, so GPU-requesting pods schedule), removes the
``node.kubernetes.io/not-ready`` taint (the node-lifecycle controller is off), renews the
node's ``Lease``, watches the pods bound to it and drives each through
``Pending -> Running -> Succeeded | Failed`` with container statuses, exit codes and reasons.
Two modes:

``exec``
    The pod's first container's ``command`` + ``args`` run as a local process in a new
    session, with the container's environment resolved as the kubelet would (``value`` with
    ``$(VAR)`` expansion, ``fieldRef``, ``resourceFieldRef``, ``secretKeyRef``,
    ``configMapKeyRef``, ``envFrom``), ``PATH`` prefixed by the running interpreter's folder
    (so ``python -m trainer`` uses the project's environment), ``KUBERNETES_SERVICE_HOST`` and
    ``KUBERNETES_SERVICE_PORT`` pointing at the API server, and ``NAS_BOHB_SERVICEACCOUNT_DIR``
    naming a folder with the pod's service-account ``token``, ``ca.crt`` and ``namespace``.
    Stdout and stderr go to a per-pod log file (:meth:`SimNode.log_path`).
``simulate``
    No process: a hook ``(pod) -> (seconds, exit_code)`` decides how long the pod "runs" and
    how it ends (by default the annotations ``nas-bohb.io/simulate-seconds`` and
    ``nas-bohb.io/simulate-exit-code``), so a benchmark can drive thousands of pods cheaply.
    Simulated nodes carry the taint ``nas-bohb.io/simulated=true:NoSchedule`` by default, so
    only pods that tolerate it land there and exec pods of other tests never do.

Deleting a pod (by a user, or by the Job controller enforcing a Job's deadline) stops its
process (SIGTERM to the process group, SIGKILL after the grace period) and then removes the
pod with grace period 0, as a kubelet would; as in 1.20, no terminal phase is written first.
A pod's own ``activeDeadlineSeconds`` fails it
with reason ``DeadlineExceeded``. Pods are handled as plain JSON dicts, as the API sends
them; per-pod API writes run on a small pool of ordered lanes, so hundreds of pods in flight
do not queue behind one another.

Volumes in exec mode: ``emptyDir``, ``secret``, ``configMap`` and ``projected`` (secret,
configMap, downward API, service-account token) volumes become per-pod folders, and
``hostPath`` volumes their host path. A process cannot see a container's file system, so
every argument, environment value and ``workingDir`` that starts with a volume's
``mountPath`` is rewritten to the local folder.

.. note::
   Known gaps, by design of a simulation: only the first container of a pod runs (others
   are reported with the same state); init containers, probes and ``restartPolicy``
   ``Always``/``OnFailure`` restarts are not implemented (a container that ends ends the
   pod); images are ignored (the command runs on this machine); resource limits are not
   enforced; a ``workingDir`` outside a volume is replaced by the pod's folder. A pod
   found ``Running`` when a node (re)starts cannot be adopted and is failed with reason
   ``SimNodeRestarted``.

Termination messages, a simulation detail: a local process cannot write the container's
``terminationMessagePath`` (``/dev/termination-log`` by default), so in exec mode that
path is mapped, like a volume, to an empty file ``termination-log`` in the pod's folder
(created before the command starts, as the kubelet creates the real one): arguments and
environment values that name the path are rewritten to the file, so the Job template's
explicit ``NAS_BOHB_TERMINATION_LOG=/dev/termination-log`` reaches the trainer as the
local file, and ``NAS_BOHB_TERMINATION_LOG`` names it when the pod sets nothing. In
simulate mode the hook gets the pod with environment values that name the path rewritten
the same way (the file is made only then), so a hook that reports like a trainer can
leave a message. When the container ends, the file's last 4096 bytes (what a kubelet
keeps) become ``containerStatuses[].state.terminated.message``; with
``FallbackToLogsOnError``, the log's tail does when the file is empty and the exit code
is not 0.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import heapq
import itertools
import json
import logging
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Pod = dict[str, Any]
#: ``(pod) -> (seconds, exit_code)``: how a pod on a simulate-mode node runs and ends.
SimulateHook = Callable[[Pod], tuple[float, int]]
#: Called with the pod as the API returned it after its final status was written.
FinishHook = Callable[[Pod], None]

SIMULATE_SECONDS_ANNOTATION = "nas-bohb.io/simulate-seconds"
SIMULATE_EXIT_CODE_ANNOTATION = "nas-bohb.io/simulate-exit-code"
SIMULATED_TAINT = {"key": "nas-bohb.io/simulated", "value": "true", "effect": "NoSchedule"}
MODE_LABEL = "nas-bohb.io/simnode-mode"
GPU_RESOURCE = "nvidia.com/gpu"
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_NODE_TAINTS_REMOVED = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
_LOG_TAIL_BYTES = 2048
#: A container's default ``terminationMessagePath``, and the most of it a kubelet keeps.
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
_TERMINATION_MESSAGE_BYTES = 4096


class KubeApiError(RuntimeError):
    """A request to the API server failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class KubeApi:
    """Raw-JSON requests over the official client's configured transport.

    The typed models of the ``kubernetes`` package are slow for thousands of pods and strict
    about fields that older servers omit; dicts are what the API sends and what hooks get.
    """

    def __init__(self, api_client: Any) -> None:
        self.client = api_client

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str] | None = None) -> KubeApi:
        from kubernetes import config  # imported late: only the cluster tests need it

        api_client = config.new_client_from_config(config_file=str(path) if path else None)
        api_client.configuration.connection_pool_maxsize = 32
        api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
        return cls(api_client)

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    @property
    def ca_cert_file(self) -> str | None:
        return self.client.configuration.ssl_ca_cert or None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
        raw: bool = False,
    ) -> Any:
        """Send one request; return the decoded JSON answer (the bytes when ``raw``)."""
        response = self._send(method, path, query, body, content_type, timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            raise KubeApiError(response.status, _error_message(data))
        if raw:
            return data
        return json.loads(data) if data else None

    def get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: Any, *, strategic: bool = True) -> Any:
        kind = "strategic-merge-patch" if strategic else "merge-patch"
        return self.request("PATCH", path, body=body, content_type=f"application/{kind}+json")

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body=body)

    def watch(
        self, path: str, query: Mapping[str, str], *, on_open: Callable[[Any], None] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield watch events as dicts until the server ends the stream."""
        response = self._send("GET", path, {**query, "watch": "true"}, None, "", (10.0, None))
        if response.status != 200:
            data = response.read()
            raise KubeApiError(response.status, _error_message(data))
        raw = response.response
        if on_open is not None:
            on_open(raw)
        buffer = b""
        chunks = raw.stream(65536, decode_content=True)
        try:
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                except Exception as error:  # a broken stream, as urllib3 reports it
                    raise KubeApiError(0, f"watch stream broke: {error}") from error
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            with contextlib.suppress(Exception):
                raw.release_conn()

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: Any,
        content_type: str,
        timeout: Any,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self.client.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        try:
            return self.client.call_api(*serialized, _request_timeout=timeout)
        except Exception as error:  # urllib3 and socket errors: the server did not answer
            if isinstance(error, KubeApiError):
                raise
            raise KubeApiError(0, f"{type(error).__name__}: {error}") from error


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message", data[:300]))
    except (ValueError, AttributeError):
        return data[:300].decode(errors="replace")


@dataclasses.dataclass(frozen=True)
class NodeCapacity:
    """What a simulated node offers the scheduler (no limits are enforced)."""

    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    gpus: int = 4
    ephemeral_storage: str = "100Gi"

    def resources(self) -> dict[str, str]:
        resources = {
            "cpu": self.cpu, "memory": self.memory, "pods": str(self.pods),
            "ephemeral-storage": self.ephemeral_storage,
        }
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
        return resources


def default_simulate_hook(pod: Pod) -> tuple[float, int]:
    """Read the run time and exit code from the pod's annotations (default 1 s, exit 0)."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    seconds = float(annotations.get(SIMULATE_SECONDS_ANNOTATION, "1"))
    exit_code = int(annotations.get(SIMULATE_EXIT_CODE_ANNOTATION, "0"))
    return seconds, exit_code


@dataclasses.dataclass
class NodeStats:
    """Counters of what a node did, for tests and benchmarks."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    killed: int = 0
    #: Full lists of the node's pods: one at start, one after each expired watch.
    lists: int = 0


@dataclasses.dataclass
class _PodRun:
    """A pod this node handles. Mutated only on the pod's lane (see :class:`_Lanes`)."""

    uid: str
    namespace: str
    name: str
    pod: Pod
    state: str = "new"  # new -> running -> finished | killed
    started_at: str = ""
    started: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    directory: Path | None = None
    exit_code: int = 0
    deleted: bool = False
    termination_file: Path | None = None  # Stands in for the terminationMessagePath.


class _StartError(Exception):
    def __init__(self, reason: str, message: str, exit_code: int = 128) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


class _Lanes:
    """Worker threads that run each pod's API writes in order, pods in parallel."""

    def __init__(self, count: int, name: str) -> None:
        self._queues: list[queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None]] = [
            queue.Queue() for _ in range(count)
        ]
        self._threads = [
            threading.Thread(target=self._work, args=(q,), name=f"{name}-lane-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str, function: Callable[..., None], *args: Any) -> None:
        self._queues[hash(key) % len(self._queues)].put((function, args))

    def close(self, timeout: float = 10.0) -> None:
        for lane in self._queues:
            lane.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @staticmethod
    def _work(lane: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None]) -> None:
        while True:
            item = lane.get()
            if item is None:
                return
            function, args = item
            try:
                function(*args)
            except Exception:  # a failed step is logged; the lane serves the next pod
                logger.exception("Simulated node step %s failed.", function.__name__)


class SimNode:
    """One simulated node; :meth:`start` registers it and runs it in background threads.

    Args:
        api: the API connection (:meth:`KubeApi.from_kubeconfig`).
        name: the Node's name.
        mode: ``"exec"`` (run the first container's command) or ``"simulate"``.
        capacity: resources offered to the scheduler.
        work_dir: folder for per-pod logs, credentials and volumes (a temporary folder when
            omitted, removed by :meth:`stop`).
        simulate: simulate-mode hook; :func:`default_simulate_hook` when omitted.
        on_finish: called with the final pod after it succeeded or failed (both modes).
        labels: extra Node labels.
        taints: Node taints; by default none in exec mode and :data:`SIMULATED_TAINT` in
            simulate mode.
        lanes: number of worker threads for API writes.
        heartbeat_seconds: how often the node's Lease is renewed.
        max_grace_seconds: cap on the grace period given to a deleted pod's process.
        die_with_parent: have the kernel kill pod processes if this process dies (tests).
    """

    def __init__(
        self,
        api: KubeApi,
        name: str,
        *,
        mode: str = "exec",
        capacity: NodeCapacity | None = None,
        work_dir: Path | None = None,
        simulate: SimulateHook | None = None,
        on_finish: FinishHook | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] | None = None,
        lanes: int = 8,
        heartbeat_seconds: float = 10.0,
        max_grace_seconds: float = 30.0,
        die_with_parent: bool = False,
    ) -> None:
        if mode not in ("exec", "simulate"):
            raise ValueError(f"mode must be 'exec' or 'simulate', got {mode!r}")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
            raise ValueError(f"name must be a DNS subdomain, got {name!r}")
        self.api = api
        self.name = name
        self.mode = mode
        self.capacity = capacity or NodeCapacity()
        self._own_work_dir = work_dir is None
        self.work_dir = work_dir or Path(_mkdtemp(f"simnode-{name}-"))
        self.simulate = simulate or default_simulate_hook
        self.on_finish = on_finish
        self.labels = dict(labels or {})
        default_taints = [SIMULATED_TAINT] if mode == "simulate" else []
        self.taints = [dict(taint) for taint in (default_taints if taints is None else taints)]
        self.heartbeat_seconds = heartbeat_seconds
        self.max_grace_seconds = max_grace_seconds
        self.die_with_parent = die_with_parent
        self.stats = NodeStats()
        self._stats_lock = threading.Lock()
        self._lane_count = lanes
        self._runs: dict[str, _PodRun] = {}
        self._runs_lock = threading.Lock()
        self._logs: dict[tuple[str, str], Path] = {}
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lanes: _Lanes | None = None
        self._watch_response: Any = None
        # Resource version the pod watch resumes from; None: list (and reconcile) first.
        self._watch_version: str | None = None
        self._node_uid = ""
        self._service_port = urllib.parse.urlsplit(api.host).port or 443

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SimNode:
        """Register the Node and start watching its pods; return self."""
        (self.work_dir / "pods").mkdir(parents=True, exist_ok=True)
        self._register()
        self._lanes = _Lanes(self._lane_count, self.name)
        for target, label in ((self._watch_loop, "watch"), (self._event_loop, "loop"),
                              (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=f"{self.name}-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("Simulated node %s (%s mode) is Ready.", self.name, self.mode)
        return self

    def stop(self, *, delete_node: bool = True) -> None:
        """Stop the node's threads and kill its processes; delete the Node if asked.

        Pods still bound to a deleted Node are removed by the pod garbage collector; their
        Jobs then see them as lost, as with a real node that went away.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        response = self._watch_response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
        with self._runs_lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.process is not None and run.process.poll() is None:
                _kill_group(run.process, grace=2.0)
        if self._lanes is not None:
            self._lanes.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if delete_node:
            with contextlib.suppress(KubeApiError):
                self.api.delete(f"/api/v1/nodes/{self.name}")
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        logger.info("Simulated node %s stopped.", self.name)

    def __enter__(self) -> SimNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_path(self, namespace: str, name: str) -> Path | None:
        """Log file of the latest exec-mode run of pod ``namespace/name`` on this node."""
        return self._logs.get((namespace, name))

    # --- the Node object ----------------------------------------------------------------------

    def _register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "type": "nas-bohb-simnode", MODE_LABEL: self.mode,
            **self.labels,
        }
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": self.taints},
        }
        try:
            created = self.api.post("/api/v1/nodes", node)
        except KubeApiError as error:
            if error.status != 409:
                raise
            # A node of this name is left from an earlier run: take it over.
            created = self.api.patch(f"/api/v1/nodes/{self.name}",
                                     {"metadata": {"labels": labels}}, strategic=True)
        self._node_uid = created["metadata"]["uid"]
        self.api.patch(f"/api/v1/nodes/{self.name}/status", {"status": self._node_status()})

        # Admission adds the not-ready taint to new Nodes; no node-lifecycle controller
        # removes it here, so the node does (keeping its own taints).
        current = self.api.get(f"/api/v1/nodes/{self.name}")
        taints = [taint for taint in current.get("spec", {}).get("taints") or []
                  if taint.get("key") not in _NODE_TAINTS_REMOVED]
        for taint in self.taints:
            if taint not in taints:
                taints.append(taint)
        self.api.patch(f"/api/v1/nodes/{self.name}", {"spec": {"taints": taints or None}},
                       strategic=False)
        self._renew_lease()

    def _node_status(self) -> dict[str, Any]:
        now = _now()
        conditions = [
            {"type": kind, "status": "False", "reason": f"KubeletHasSufficient{kind[:-8]}",
             "lastHeartbeatTime": now, "lastTransitionTime": now}
            for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": f"simulated node ({self.mode} mode) is ready",
                           "lastHeartbeatTime": now, "lastTransitionTime": now})
        return {
            "capacity": self.capacity.resources(),
            "allocatable": self.capacity.resources(),
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": self.name, "systemUUID": self.name, "bootID": str(uuid.uuid4()),
                "kernelVersion": os.uname().release, "osImage": "nas-bohb simulated node",
                "containerRuntimeVersion": f"simnode://{self.mode}",
                "kubeletVersion": "v0.0.0-simnode", "kubeProxyVersion": "v0.0.0-simnode",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        }

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        renew = {"spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40,
                          "renewTime": _now(micro=True)}}
        try:
            self.api.patch(path, renew, strategic=False)
        except KubeApiError as error:
            if error.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name,
                     "uid": self._node_uid}
            self.api.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "ownerReferences": [owner]},
                **renew,
            })

    def _heartbeat_loop(self) -> None:
        beats = 0
        while not self._stop.wait(self.heartbeat_seconds):
            beats += 1
            try:
                self._renew_lease()
                if beats % 6 == 0:
                    self.api.patch(f"/api/v1/nodes/{self.name}/status",
                                   {"status": {"conditions": self._node_status()["conditions"]}})
            except KubeApiError as error:
                logger.warning("Simulated node %s: heartbeat failed: %s.", self.name, error)

    # --- watching pods ------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.name}"}
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if self._watch_version is None:
                    listing = self.api.get("/api/v1/pods", selector)
                    self._watch_version = listing["metadata"]["resourceVersion"]
                    self._count("lists")
                    self._events.put(("sync", listing.get("items") or []))
                query = {**selector, "resourceVersion": self._watch_version,
                         "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
                for event in self.api.watch("/api/v1/pods", query, on_open=self._watching):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            # The resource version expired: list again and reconcile.
                            logger.info("Simulated node %s: watch expired; listing again.",
                                        self.name)
                            self._watch_version = None
                            break
                        raise KubeApiError(int(obj.get("code") or 0), str(obj.get("message")))
                    self._watch_version = obj.get("metadata", {}).get(
                        "resourceVersion", self._watch_version)
                    if kind != "BOOKMARK":
                        self._events.put(("pod", kind, obj))
                backoff = 0.5
            except (KubeApiError, ValueError, OSError) as error:
                if self._stop.is_set():
                    return
                if isinstance(error, KubeApiError) and error.status == 410:
                    self._watch_version = None
                logger.warning("Simulated node %s: pod watch failed (%s); resuming.", self.name,
                               error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("Simulated node %s: pod watch broke; resuming.", self.name)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _watching(self, response: Any) -> None:
        self._watch_response = response

    def _event_loop(self) -> None:
        """Dispatch watch events and timers to the lanes; the only reader of the event queue."""
        timers: list[tuple[float, int, str, str]] = []
        counter = itertools.count()
        while not self._stop.is_set():
            wait = 0.5 if not timers else max(0.0, min(0.5, timers[0][0] - time.monotonic()))
            try:
                item = self._events.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None:
                if item[0] == "timer":
                    _, due, uid, kind = item
                    heapq.heappush(timers, (due, next(counter), uid, kind))
                elif item[0] == "sync":
                    self._on_sync(item[1])
                else:
                    self._on_pod_event(item[1], item[2])
            while timers and timers[0][0] <= time.monotonic():
                _, _, uid, kind = heapq.heappop(timers)
                run = self._run(uid)
                if run is not None:
                    self._submit(run, self._on_timer, run, kind)

    def _on_sync(self, pods: list[Pod]) -> None:
        present = {pod["metadata"]["uid"] for pod in pods}
        with self._runs_lock:
            gone = [run for uid, run in self._runs.items() if uid not in present]
        for run in gone:
            self._on_pod_event("DELETED", run.pod)
        for pod in pods:
            self._on_pod_event("ADDED", pod)

    def _on_pod_event(self, kind: str, pod: Pod) -> None:
        metadata = pod.get("metadata", {})
        uid = metadata.get("uid", "")
        run = self._run(uid)
        if kind == "DELETED":
            if run is not None:
                with self._runs_lock:
                    self._runs.pop(uid, None)
                self._submit(run, self._on_delete, run, True)
            return
        phase = pod.get("status", {}).get("phase", "Pending")
        deleting = bool(metadata.get("deletionTimestamp"))
        if run is None:
            if phase in ("Succeeded", "Failed"):
                if deleting:
                    self._submit_uid(uid, self._delete_pod, metadata, uid)
                return
            run = _PodRun(uid, metadata.get("namespace", ""), metadata.get("name", ""), pod)
            with self._runs_lock:
                self._runs[uid] = run
            if deleting:
                self._submit(run, self._on_delete, run, False)
            elif phase == "Running":
                self._submit(run, self._fail_orphan, run)
            else:
                self._submit(run, self._start_pod, run)
            return
        run.pod = pod
        if deleting:
            self._submit(run, self._on_delete, run, False)

    def _count(self, field: str) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _run(self, uid: str) -> _PodRun | None:
        with self._runs_lock:
            return self._runs.get(uid)

    def _submit(self, run: _PodRun, function: Callable[..., None], *args: Any) -> None:
        self._submit_uid(run.uid, function, *args)

    def _submit_uid(self, uid: str, function: Callable[..., None], *args: Any) -> None:
        if self._lanes is not None and not self._stop.is_set():
            self._lanes.submit(uid, function, *args)

    def _timer(self, run: _PodRun, seconds: float, kind: str) -> None:
        self._events.put(("timer", time.monotonic() + seconds, run.uid, kind))

    # --- per-pod steps (each on the pod's lane) -----------------------------------------------

    def _start_pod(self, run: _PodRun) -> None:
        if run.state != "new" or run.deleted:
            return
        run.started_at = _now()
        run.started = time.monotonic()
        self._count("started")
        if self.mode == "exec":
            try:
                run.process = self._spawn(run)
            except Exception as error:  # as a kubelet would: a pod that cannot start fails
                start_error = error if isinstance(error, _StartError) else _StartError(
                    "ContainerCannotRun", f"{type(error).__name__}: {error}")
                logger.info("Simulated node %s: pod %s/%s could not start: %s.", self.name,
                            run.namespace, run.name, error)
                run.state = "running"
                self._finish(run, start_error.exit_code, reason=start_error.reason,
                             message=str(start_error))
                return
            run.state = "running"
            process = run.process
            threading.Thread(target=self._wait_process, args=(run, process),
                             name=f"{self.name}-wait-{run.name}", daemon=True).start()
        else:
            try:
                seconds, exit_code = self.simulate(self._simulated_pod(run))
            except Exception as error:  # the hook is user code: its failure fails the pod
                logger.warning("Simulated node %s: hook failed for %s/%s: %s.", self.name,
                               run.namespace, run.name, error)
                run.state = "running"
                self._finish(run, 128, reason="SimulateHookError", message=str(error))
                return
            run.state = "running"
            run.exit_code = int(exit_code)
            self._timer(run, max(0.0, float(seconds)), "finish")
        self._patch_status(run, self._running_status(run))
        deadline = run.pod.get("spec", {}).get("activeDeadlineSeconds")
        if deadline is not None:
            self._timer(run, float(deadline), "deadline")

    def _wait_process(self, run: _PodRun, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        self._submit(run, self._on_exit, run, code)

    def _on_exit(self, run: _PodRun, code: int) -> None:
        if run.state != "running":
            return
        process = run.process
        if process is not None:
            # Like a container's end: nothing the command started outlives it.
            _kill_group(process, grace=0.0)
        self._finish(run, _exit_code(code))

    def _on_timer(self, run: _PodRun, kind: str) -> None:
        if run.state != "running":
            return
        if kind == "finish":
            self._finish(run, run.exit_code)
            return
        # The pod's own activeDeadlineSeconds: the kubelet kills it and fails the pod.
        code = 137
        if run.process is not None:
            code = _exit_code(_kill_group(run.process, grace=self._grace(run)))
        self._finish(run, code, pod_reason="DeadlineExceeded",
                     message="Pod was active on the node longer than the specified deadline")

    def _on_delete(self, run: _PodRun, gone: bool) -> None:
        if run.deleted:
            return
        run.deleted = True
        if run.state == "running":
            run.state = "killed"
            self._count("killed")
            code = 137
            if run.process is not None:
                code = _exit_code(_kill_group(run.process, grace=self._grace(run)))
            logger.info("Simulated node %s: pod %s/%s deleted; its process ended with %d.",
                        self.name, run.namespace, run.name, code)
            # Like a 1.20 kubelet, no terminal phase is written for a deleted pod: a Failed
            # phase seen just before removal would count against a Job's backoffLimit.
        run.state = "killed" if run.state != "finished" else run.state
        if not gone:
            self._delete_pod(run.pod.get("metadata", {}), run.uid)

    def _fail_orphan(self, run: _PodRun) -> None:
        if run.state != "new" or run.deleted:
            return
        run.state = "running"
        self._finish(run, 137, reason="SimNodeRestarted",
                     message="the simulated node restarted while the pod ran")

    def _delete_pod(self, metadata: Mapping[str, Any], uid: str) -> None:
        path = f"/api/v1/namespaces/{metadata.get('namespace')}/pods/{metadata.get('name')}"
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}}
        try:
            self.api.delete(path, body)
        except KubeApiError as error:
            if error.status not in (404, 409):
                raise

    def _grace(self, run: _PodRun) -> float:
        metadata, spec = run.pod.get("metadata", {}), run.pod.get("spec", {})
        grace = metadata.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return min(float(grace), self.max_grace_seconds)

    def _finish(
        self,
        run: _PodRun,
        code: int,
        *,
        reason: str = "",
        message: str = "",
        pod_reason: str = "",
    ) -> None:
        run.state = "finished"
        if code == 0:
            self._count("succeeded")
        else:
            self._count("failed")
        reason = reason or ("Completed" if code == 0 else "Error")
        container = _first_container(run.pod)
        written = self._termination_message(run)
        if code != 0 and not message and not written and (
            container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = self._log_tail(run)
        status = self._terminated_status(run, code, reason, written or message)
        if pod_reason:
            status["reason"] = pod_reason
            status["message"] = message
        final = self._patch_status(run, status)
        logger.info("Simulated node %s: pod %s/%s finished with exit code %d (%s).", self.name,
                    run.namespace, run.name, code, reason)
        if self.on_finish is not None and final is not None:
            try:
                self.on_finish(final)
            except Exception:
                logger.exception("Simulated node %s: on_finish hook failed for %s/%s.",
                                 self.name, run.namespace, run.name)

    def _patch_status(self, run: _PodRun, status: dict[str, Any]) -> Pod | None:
        path = f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status"
        try:
            result: Pod = self.api.patch(path, {"metadata": {"uid": run.uid}, "status": status})
            return result
        except KubeApiError as error:
            if error.status in (404, 409, 422):
                # The pod is gone or was replaced by another of the same name.
                logger.debug("Simulated node %s: status of %s/%s not written: %s.", self.name,
                             run.namespace, run.name, error)
                return None
            raise

    # --- statuses -----------------------------------------------------------------------------

    def _running_status(self, run: _PodRun) -> dict[str, Any]:
        now = _now()
        ready = [
            {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
            for kind in ("Initialized", "Ready", "ContainersReady")
        ]
        return {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}], "startTime": run.started_at, "conditions": ready,
            "containerStatuses": [
                {**self._container_base(run, container), "ready": True, "started": True,
                 "state": {"running": {"startedAt": run.started_at}}}
                for container in run.pod.get("spec", {}).get("containers", [])
            ],
        }

    def _terminated_status(
        self, run: _PodRun, code: int, reason: str, message: str
    ) -> dict[str, Any]:
        now = _now()
        not_ready = [
            {"type": kind, "status": "False", "reason": "PodCompleted", "lastProbeTime": None,
             "lastTransitionTime": now}
            for kind in ("Ready", "ContainersReady")
        ]
        terminated: dict[str, Any] = {
            "exitCode": code, "reason": reason, "startedAt": run.started_at or now,
            "finishedAt": now,
        }
        if message:
            terminated["message"] = message
        return {
            "phase": "Succeeded" if code == 0 else "Failed",
            "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": run.started_at or now, "conditions": not_ready,
            "containerStatuses": [
                {**self._container_base(run, container), "ready": False, "started": False,
                 "state": {"terminated": {
                     **terminated,
                     "containerID": f"simnode://{run.uid}/{container.get('name')}"}}}
                for container in run.pod.get("spec", {}).get("containers", [])
            ],
        }

    @staticmethod
    def _container_base(run: _PodRun, container: Mapping[str, Any]) -> dict[str, Any]:
        image = str(container.get("image", ""))
        return {
            "name": container.get("name"), "image": image, "imageID": f"simnode://{image}",
            "containerID": f"simnode://{run.uid}/{container.get('name')}", "restartCount": 0,
        }

    def _termination_message(self, run: _PodRun) -> str:
        """The last 4096 bytes of what the container wrote to its termination-message file."""
        path = run.termination_file
        if path is None or not path.is_file():
            return ""
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - _TERMINATION_MESSAGE_BYTES))
            return handle.read(_TERMINATION_MESSAGE_BYTES).decode(errors="replace")

    def _termination_file(
        self, run: _PodRun, container: Mapping[str, Any], directory: Path
    ) -> tuple[str, Path]:
        """The container's terminationMessagePath and the empty local file standing in."""
        path = str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
        directory.mkdir(parents=True, exist_ok=True)
        local = directory / "termination-log"
        local.touch()
        run.termination_file = local
        return path, local

    def _simulated_pod(self, run: _PodRun) -> Pod:
        """The pod as a simulate hook sees it: env values naming the termination path local."""
        container = _first_container(run.pod)
        path = str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
        env = container.get("env") or []
        if not any(variable.get("value") == path for variable in env):
            return run.pod
        _, local = self._termination_file(run, container, self._pod_directory(run))
        container["env"] = [{**variable, "value": str(local)}
                            if variable.get("value") == path else variable for variable in env]
        spec = dict(run.pod.get("spec") or {})
        spec["containers"] = [container, *(spec.get("containers") or [])[1:]]
        return {**run.pod, "spec": spec}

    def _pod_directory(self, run: _PodRun) -> Path:
        return self.work_dir / "pods" / f"{run.namespace}_{run.name}_{run.uid[:8]}"

    def _log_tail(self, run: _PodRun) -> str:
        log = self._logs.get((run.namespace, run.name))
        if log is None or not log.exists():
            return ""
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - _LOG_TAIL_BYTES))
            return handle.read().decode(errors="replace")

    # --- exec mode: the local process ---------------------------------------------------------

    def _spawn(self, run: _PodRun) -> subprocess.Popen[bytes]:
        pod = run.pod
        container = _first_container(pod)
        directory = self._pod_directory(run)
        directory.mkdir(parents=True, exist_ok=True)
        run.directory = directory
        log_path = directory / f"{container.get('name', 'main')}.log"
        self._logs[(run.namespace, run.name)] = log_path

        mounts = self._prepare_volumes(run, container, directory)
        # The termination-message file is mapped like a file volume (longest paths first).
        termination_path, termination_file = self._termination_file(run, container, directory)
        mounts = sorted([*mounts, (termination_path, termination_file)],
                        key=lambda item: len(item[0]), reverse=True)
        env = self._environment(run, container, mounts, directory)
        env.setdefault("NAS_BOHB_TERMINATION_LOG", str(termination_file))
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not argv:
            raise _StartError("ContainerCannotRun",
                              "container has no command; a simulated node has no image "
                              "entrypoint to fall back on", 128)
        argv = [_rewrite_path(_expand(arg, env), mounts) for arg in argv]
        executable = shutil.which(argv[0], path=env.get("PATH"))
        if executable is None:
            raise _StartError("ContainerCannotRun",
                              f"executable {argv[0]!r} not found in PATH", 127)
        working = _rewrite_path(str(container.get("workingDir") or ""), mounts)
        cwd = Path(working) if working and Path(working).is_dir() else directory
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                [executable, *argv[1:]], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent_preexec() if self.die_with_parent else None,
            )

    def _environment(
        self,
        run: _PodRun,
        container: Mapping[str, Any],
        mounts: list[tuple[str, Path]],
        directory: Path,
    ) -> dict[str, str]:
        pod = run.pod
        interpreter_dir = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{interpreter_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(directory),
            "HOSTNAME": run.name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self._service_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self._service_port),
        }
        # A few host settings a local process needs (locale, certificates, temp folder).
        for key in ("LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                    "PYTHONPATH"):
            if key in os.environ:
                env[key] = os.environ[key]
        account_dir = self._service_account_dir(run, mounts, directory)
        if account_dir is not None:
            env["NAS_BOHB_SERVICEACCOUNT_DIR"] = str(account_dir)

        namespace = run.namespace
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._object_data("configmaps", namespace, ref, binary=False)
            else:
                ref = source.get("secretRef") or {}
                data = self._object_data("secrets", namespace, ref, binary=True)
            env.update({prefix + key: value for key, value in data.items()})
        for variable in container.get("env") or []:
            name = variable.get("name", "")
            if "value" in variable:
                env[name] = _rewrite_path(_expand(str(variable["value"]), env), mounts)
            elif "valueFrom" in variable:
                value = self._value_from(pod, container, variable["valueFrom"], name)
                if value is not None:
                    env[name] = value
            else:
                env[name] = ""
        return env

    def _value_from(
        self, pod: Pod, container: Mapping[str, Any], source: Mapping[str, Any], name: str
    ) -> str | None:
        namespace = pod["metadata"].get("namespace", "")
        if "fieldRef" in source:
            return _field_value(pod, str(source["fieldRef"].get("fieldPath", "")))
        if "resourceFieldRef" in source:
            return _resource_value(container, source["resourceFieldRef"], self.capacity)
        for kind, key in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                data = self._object_data(kind, namespace, ref, binary=kind == "secrets")
                if ref.get("key") in data:
                    return data[ref["key"]]
                if ref.get("optional"):
                    return None
                raise _StartError("CreateContainerConfigError",
                                  f"env {name}: key {ref.get('key')!r} not found in "
                                  f"{kind[:-1]} {ref.get('name')!r}")
        raise _StartError("CreateContainerConfigError", f"env {name}: unsupported valueFrom")

    def _object_data(
        self, kind: str, namespace: str, ref: Mapping[str, Any], *, binary: bool
    ) -> dict[str, str]:
        try:
            obj = self.api.get(f"/api/v1/namespaces/{namespace}/{kind}/{ref.get('name')}")
        except KubeApiError as error:
            if error.status == 404 and ref.get("optional"):
                return {}
            raise _StartError("CreateContainerConfigError",
                              f"{kind[:-1]} {ref.get('name')!r} not readable: {error}") from error
        data: dict[str, str] = dict(obj.get("data") or {})
        if binary:
            data = {key: base64.b64decode(value).decode(errors="replace")
                    for key, value in data.items()}
        return data

    def _prepare_volumes(
        self, run: _PodRun, container: Mapping[str, Any], directory: Path
    ) -> list[tuple[str, Path]]:
        """Make each mounted volume a local folder; return (mountPath, folder), longest first."""
        volumes = {volume.get("name"): volume
                   for volume in run.pod.get("spec", {}).get("volumes") or []}
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name"))
            if volume is None:
                continue
            if "hostPath" in volume:
                local = Path(volume["hostPath"].get("path", "/"))
            else:
                local = directory / "volumes" / str(mount.get("name"))
                if not local.exists():
                    local.mkdir(parents=True)
                    self._fill_volume(run, volume, local)
            if mount.get("subPath"):
                local = local / str(mount["subPath"])
            mounts.append((str(mount.get("mountPath", "")).rstrip("/") or "/", local))
        mounts.sort(key=lambda item: len(item[0]), reverse=True)
        return mounts

    def _fill_volume(self, run: _PodRun, volume: Mapping[str, Any], local: Path) -> None:
        namespace = run.namespace
        if "secret" in volume:
            ref = {"name": volume["secret"].get("secretName"),
                   "optional": volume["secret"].get("optional")}
            _write_items(local, self._object_data("secrets", namespace, ref, binary=True),
                         volume["secret"].get("items"))
        elif "configMap" in volume:
            _write_items(local, self._object_data("configmaps", namespace, volume["configMap"],
                                                  binary=False),
                         volume["configMap"].get("items"))
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                if "secret" in source:
                    _write_items(local, self._object_data("secrets", namespace, source["secret"],
                                                          binary=True),
                                 source["secret"].get("items"))
                elif "configMap" in source:
                    _write_items(local, self._object_data("configmaps", namespace,
                                                          source["configMap"], binary=False),
                                 source["configMap"].get("items"))
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items") or []:
                        value = _field_value(run.pod, item.get("fieldRef", {}).get("fieldPath", ""))
                        _write_file(local / item.get("path", "value"), value or "")
                elif "serviceAccountToken" in source:
                    spec = source["serviceAccountToken"]
                    token = self._request_token(run, spec.get("audience"),
                                                spec.get("expirationSeconds", 3600))
                    _write_file(local / spec.get("path", "token"), token)
        # emptyDir and anything else: an empty folder.

    def _service_account_dir(
        self, run: _PodRun, mounts: list[tuple[str, Path]], directory: Path
    ) -> Path | None:
        """Folder holding the pod's service-account token, ca.crt and namespace."""
        for mount_path, local in mounts:
            if mount_path == SERVICE_ACCOUNT_MOUNT and (local / "token").exists():
                return local
        spec = run.pod.get("spec", {})
        if spec.get("automountServiceAccountToken") is False:
            return None
        # No token volume (another admission setup): fetch what the kubelet would mount.
        local = directory / "serviceaccount"
        local.mkdir(exist_ok=True)
        account = spec.get("serviceAccountName") or "default"
        token = self._request_token(run, None, 3600)
        _write_file(local / "token", token)
        _write_file(local / "namespace", run.namespace)
        if self.api.ca_cert_file and Path(self.api.ca_cert_file).exists():
            shutil.copyfile(self.api.ca_cert_file, local / "ca.crt")
        logger.debug("Simulated node %s: token of %s/%s requested for %s.", self.name,
                     run.namespace, account, run.name)
        return local

    def _request_token(self, run: _PodRun, audience: str | None, seconds: int) -> str:
        account = run.pod.get("spec", {}).get("serviceAccountName") or "default"
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": max(600, int(seconds)),
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": run.name,
                                        "uid": run.uid}},
        }
        if audience:
            body["spec"]["audiences"] = [audience]
        path = f"/api/v1/namespaces/{run.namespace}/serviceaccounts/{account}/token"
        try:
            return str(self.api.post(path, body)["status"]["token"])
        except KubeApiError as error:
            raise _StartError("CreateContainerConfigError",
                              f"no token for service account {account!r}: {error}") from error


# --- pure helpers -----------------------------------------------------------------------------


def _first_container(pod: Pod) -> dict[str, Any]:
    containers = pod.get("spec", {}).get("containers") or [{}]
    return dict(containers[0])


def _now(*, micro: bool = False) -> str:
    now = datetime.now(timezone.utc)
    if micro:
        return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def _rewrite_path(text: str, mounts: Sequence[tuple[str, Path]]) -> str:
    for mount_path, local in mounts:
        if text == mount_path:
            return str(local)
        if text.startswith(mount_path + "/"):
            return str(local) + text[len(mount_path):]
    return text


def _field_value(pod: Pod, path: str) -> str | None:
    # Pod and host addresses are always the loopback address on a simulated node.
    metadata, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": metadata.get("name"), "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
    }
    if path in simple:
        value = simple[path]
        return None if value is None else str(value)
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = metadata.get(path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    raise _StartError("CreateContainerConfigError", f"unsupported fieldRef {path!r}")


_QUANTITY_SUFFIXES = {
    "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}


def parse_quantity(text: str) -> float:
    """Value of a Kubernetes quantity such as ``500m``, ``2Gi`` or ``1e3``."""
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(text).strip())
    if not match or match.group(2) not in _QUANTITY_SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(match.group(1)) * _QUANTITY_SUFFIXES[match.group(2)]


def _resource_value(
    container: Mapping[str, Any], ref: Mapping[str, Any], capacity: NodeCapacity
) -> str:
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None:
        # As the kubelet does: an unset limit is the node's allocatable amount.
        value = capacity.resources().get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    return str(math.ceil(parse_quantity(str(value)) / divisor))


def _write_items(local: Path, data: Mapping[str, str], items: Any) -> None:
    if items:
        for item in items:
            if item.get("key") in data:
                _write_file(local / item.get("path", item["key"]), data[item["key"]])
    else:
        for key, value in data.items():
            _write_file(local / key, value)


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)


def _exit_code(returncode: int) -> int:
    # A process ended by signal N reports 128 + N, as a container runtime does.
    return 128 - returncode if returncode < 0 else returncode


def _kill_group(process: subprocess.Popen[bytes], *, grace: float) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit status."""
    if process.poll() is None and grace > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


_LIBC: Any = None


def die_with_parent_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when its parent thread ends.

    The C library is loaded here, in the parent, so the child between fork and exec only
    makes one system call (no import, no lock another thread could hold).
    """
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    prctl = _LIBC.prctl
    pr_set_pdeathsig, sigkill = 1, int(signal.SIGKILL)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigkill)

    return preexec


def _mkdtemp(prefix: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=prefix)


def find_pod_log(work_dir: Path, namespace: str, name: str) -> Path | None:
    """Latest log of pod ``namespace/name`` in a node's ``work_dir`` (for nodes run as
    processes, whose :meth:`SimNode.log_path` is out of reach)."""
    candidates = sorted((work_dir / "pods").glob(f"{namespace}_{name}_*/*.log"),
                        key=lambda path: path.stat().st_mtime)
    return candidates[-1] if candidates else None


# --- command line (used by `python -m tests.cluster up`) --------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.simnode",
                                     description="Run one simulated Kubernetes node.")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--mode", choices=("exec", "simulate"), default="exec")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--cpu", default=NodeCapacity.cpu)
    parser.add_argument("--memory", default=NodeCapacity.memory)
    parser.add_argument("--pods", type=int, default=NodeCapacity.pods)
    parser.add_argument("--gpus", type=int, default=NodeCapacity.gpus)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    capacity = NodeCapacity(cpu=args.cpu, memory=args.memory, pods=args.pods, gpus=args.gpus)
    node = SimNode(KubeApi.from_kubeconfig(args.kubeconfig), args.name, mode=args.mode,
                   capacity=capacity, work_dir=args.work_dir)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    node.start()
    stopping.wait()
    node.stop(delete_node=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
