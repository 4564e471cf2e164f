"""pytest plugin: one real Kubernetes API server for the whole test session.

Load it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.cluster.fixtures"]``.

``kube_cluster`` (session scope) starts the local control plane of
:mod:`tests.cluster.control` in a private temporary state folder, plus one exec-mode
simulated node, sets ``KUBECONFIG`` for the session (so ``kubectl``, kopf and the client's
default loader find it) and stops everything at the end, also after Ctrl-C; the components
and pod processes are additionally tied to the test process with ``PR_SET_PDEATHSIG``, so a
killed session leaves nothing running. When ``KUBECONFIG`` is already set and
``NAS_BOHB_TEST_CLUSTER`` is not ``local``, that cluster is used instead and nothing is
started but the simulated node.

``kube_namespace`` gives each test a fresh namespace, whose ``default`` service account is
ready, and deletes it afterwards. Tests that use either fixture are marked ``cluster``.

.. note::
   The session's cluster is shared: Nodes are cluster-wide, so a test that starts extra
   nodes should stop them (``with kube_cluster.node(...)``). Simulate-mode nodes are tainted
   (:data:`tests.cluster.simnode.SIMULATED_TAINT`), so their pods need that toleration and
   exec pods never land on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import control, simnode

logger = logging.getLogger(__name__)

#: Name of the exec-mode node every session starts.
DEFAULT_NODE = "nas-bohb-exec-0"


@dataclasses.dataclass
class KubeCluster:
    """The cluster a test session talks to, and helpers to use it.

    Attributes:
        kubeconfig: kubeconfig file for the admin user (also in ``$KUBECONFIG``).
        apiserver_url: ``https://127.0.0.1:PORT`` for the local cluster.
        apiserver_port: the API server's port.
        admin_token: bearer token of the admin user (None for a given cluster without one).
        state_dir: the local cluster's state folder (logs in ``logs/``); None when given.
        local: whether this session started the cluster.
        default_node: the exec-mode node started for the session.
    """

    kubeconfig: Path
    apiserver_url: str
    apiserver_port: int
    admin_token: str | None
    state_dir: Path | None
    local: bool
    default_node: simnode.SimNode | None = None
    _nodes: list[simnode.SimNode] = dataclasses.field(default_factory=list)

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` for this cluster (close it when done)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kube_api(self) -> simnode.KubeApi:
        """A raw-JSON API connection (:class:`tests.cluster.simnode.KubeApi`)."""
        return simnode.KubeApi.from_kubeconfig(self.kubeconfig)

    def start_node(
        self,
        name: str | None = None,
        *,
        mode: str = "exec",
        capacity: simnode.NodeCapacity | None = None,
        simulate: simnode.SimulateHook | None = None,
        on_finish: simnode.FinishHook | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] | None = None,
    ) -> simnode.SimNode:
        """Start a simulated node in this process; it is stopped at the session's end."""
        node = simnode.SimNode(
            self.kube_api(), name or f"nas-bohb-{mode}-{secrets.token_hex(3)}", mode=mode,
            capacity=capacity, simulate=simulate, on_finish=on_finish, labels=labels,
            taints=taints, die_with_parent=True,
        )
        node.start()
        self._nodes.append(node)
        return node

    @contextlib.contextmanager
    def node(self, name: str | None = None, **options: Any) -> Iterator[simnode.SimNode]:
        """:meth:`start_node` for the length of a ``with`` block (then the Node is deleted)."""
        started = self.start_node(name, **options)
        try:
            yield started
        finally:
            self.stop_node(started)

    def stop_node(self, node: simnode.SimNode) -> None:
        node.stop(delete_node=True)
        if node in self._nodes:
            self._nodes.remove(node)

    def pod_log(self, namespace: str, name: str) -> Path | None:
        """Log file of exec-mode pod ``namespace/name`` on any node of this session."""
        for node in self._nodes:
            path = node.log_path(namespace, name)
            if path is not None:
                return path
        # A given cluster made by `python -m tests.cluster up` keeps its nodes' work folders
        # beside its kubeconfig.
        for work_dir in sorted((self.kubeconfig.parent / "nodes").glob("*")):
            path = simnode.find_pod_log(work_dir, namespace, name)
            if path is not None:
                return path
        return None

    def close(self) -> None:
        for node in list(self._nodes):
            with contextlib.suppress(Exception):
                self.stop_node(node)


def _external_cluster() -> KubeCluster:
    path = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0]).expanduser()
    config = yaml.safe_load(path.read_text()) or {}
    current = config.get("current-context")
    context: dict[str, Any] = next((item["context"] for item in config.get("contexts") or []
                    if item.get("name") == current), {})
    cluster: dict[str, Any] = next((item["cluster"] for item in config.get("clusters") or []
                    if item.get("name") == context.get("cluster")), {})
    user: dict[str, Any] = next((item["user"] for item in config.get("users") or []
                 if item.get("name") == context.get("user")), {})
    server = str(cluster.get("server", ""))
    port = urllib.parse.urlsplit(server).port or 443
    return KubeCluster(kubeconfig=path, apiserver_url=server, apiserver_port=port,
                       admin_token=user.get("token"), state_dir=None, local=False)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """A real Kubernetes API server with one exec-mode simulated node, for the session."""
    given = os.environ.get("KUBECONFIG")
    use_given = bool(given) and os.environ.get("NAS_BOHB_TEST_CLUSTER") != "local"
    state_dir: Path | None = None
    previous = os.environ.get("KUBECONFIG")
    if use_given:
        cluster = _external_cluster()
        logger.info("Tests use the cluster of KUBECONFIG at %s.", cluster.apiserver_url)
    else:
        state_dir = tmp_path_factory.mktemp("kube-cluster")
        try:
            info = control.start_cluster(state_dir, die_with_parent=True)
        except control.ClusterError as error:
            pytest.fail(f"the local test cluster did not start: {error}", pytrace=False)
        cluster = KubeCluster(kubeconfig=info.kubeconfig, apiserver_url=info.apiserver_url,
                              apiserver_port=info.apiserver_port,
                              admin_token=info.admin_token, state_dir=state_dir, local=True)
        os.environ["KUBECONFIG"] = str(info.kubeconfig)
    try:
        # On a shared cluster a fixed name could collide with another session's node.
        name = DEFAULT_NODE if cluster.local else f"{DEFAULT_NODE}-{secrets.token_hex(3)}"
        cluster.default_node = cluster.start_node(name, mode="exec")
        yield cluster
    finally:
        cluster.close()
        if state_dir is not None:
            control.stop_cluster(state_dir)
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (in the background) afterwards."""
    api = kube_cluster.kube_api()
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base or 'test'}-{secrets.token_hex(3)}"
    api.post("/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"nas-bohb.io/test": "true"}},
    })
    _wait_for_default_service_account(api, name, token=kube_cluster.local)
    try:
        yield name
    finally:
        with contextlib.suppress(simnode.KubeApiError):
            api.delete(f"/api/v1/namespaces/{name}",
                       {"kind": "DeleteOptions", "apiVersion": "v1",
                        "propagationPolicy": "Background"})


def _wait_for_default_service_account(api: simnode.KubeApi, namespace: str, *, token: bool) -> None:
    # Pods are refused until the service-account controller has made "default" (and, on
    # 1.20, the token secret that admission mounts into every pod).
    deadline = time.monotonic() + 30
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/default"
    while True:
        try:
            account = api.get(path)
            if not token or account.get("secrets"):
                return
        except simnode.KubeApiError as error:
            if error.status != 404:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {namespace}: no default service account after 30 s")
        time.sleep(0.1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the cluster fixtures ``cluster``."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "kube_cluster" in names or "kube_namespace" in names:
            item.add_marker(pytest.mark.cluster)
