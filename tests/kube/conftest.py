"""Fixtures of the operator tests: the install from ``manifests/`` and operator processes.

``operator_install`` applies ``manifests/crd.yaml`` and ``manifests/rbac.yaml`` to the
session's cluster (the namespace comes from ``manifests/deployment.yaml``) and writes a
kubeconfig that authenticates as the operator's ServiceAccount, so every test operator
runs with exactly the permissions the manifests grant. ``operators`` starts
``python -m controller.kube`` as a local process with that kubeconfig, which lets the
fault tests kill it with SIGKILL at any moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube import support


def pytest_configure(config: pytest.Config) -> None:
    # The cluster fixtures, unless the top-level conftest has registered them already.
    if not config.pluginmanager.has_plugin("tests.cluster.fixtures"):
        config.pluginmanager.import_plugin("tests.cluster.fixtures")


@pytest.fixture(scope="session")
def operator_install(kube_cluster: Any, tmp_path_factory: pytest.TempPathFactory
                     ) -> support.OperatorInstall:
    """CRD and RBAC from ``manifests/``; a kubeconfig of the operator's ServiceAccount."""
    api = kube_cluster.kube_api()
    support.install(api)
    folder = tmp_path_factory.mktemp("operator")
    kubeconfig = support.operator_kubeconfig(api, Path(kube_cluster.kubeconfig),
                                             folder / "kubeconfig")
    return support.OperatorInstall(kubeconfig=kubeconfig, api=api, folder=folder)


class Operators:
    """Start, kill and stop ``python -m controller.kube`` processes for one test."""

    def __init__(self, install: support.OperatorInstall, folder: Path) -> None:
        self.install = install
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self, namespace: str) -> subprocess.Popen[bytes]:
        assert self.process is None or self.process.poll() is not None, "one at a time"
        self.started += 1
        log = self.folder / f"operator-{self.started}.log"
        env = {**os.environ, "KUBECONFIG": str(self.install.kubeconfig),
               "PYTHONPATH": str(support.ROOT)}
        env.pop("NAS_BOHB_SERVICEACCOUNT_DIR", None)
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller.kube", "-n", namespace,
                 "--resync-seconds", "5"],
                cwd=support.ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        return self.process

    def kill(self) -> None:
        """SIGKILL: no clean-up handlers, as a crash or an OOM kill would leave it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        parts = []
        for i in range(1, self.started + 1):
            path = self.folder / f"operator-{i}.log"
            if path.exists():
                parts.append(f"--- operator {i} ---\n{path.read_text(errors='replace')}")
        return "\n".join(parts)


@pytest.fixture
def operators(operator_install: support.OperatorInstall, tmp_path: Path
              ) -> Iterator[Operators]:
    """Operator processes of one test; whatever still runs is stopped afterwards."""
    started = Operators(operator_install, tmp_path)
    try:
        yield started
    finally:
        started.stop()
        time.sleep(0.1)
