"""The CRD from manifests/: apply-time validation, printer columns, the ledger's storage."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import spec as spec_mod
from controller.kube import template as tpl
from controller.kube.client import KubeClient
from controller.kube.ledger import ConfigMapLedger, LedgerConflict
from tests.cluster.simnode import KubeApiError
from tests.kube import support

pytestmark = pytest.mark.cluster


def make_valid(name: str = "valid") -> dict[str, Any]:
    return support.fake_search(name, plan={}, log=Path("/dev/null"))


def broken(path: str, value: Any) -> dict[str, Any]:
    body = make_valid()
    node = body["spec"]
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return body


_DELETE = object()


@pytest.mark.parametrize(("path", "value"), [
    pytest.param("budgets", _DELETE, id="no-budgets"),
    pytest.param("budgets.eta", 1, id="eta-below-2"),
    pytest.param("budgets.min", -5, id="negative-budget"),
    pytest.param("parallelTrialCount", 0, id="no-parallelism"),
    pytest.param("maxIterations", "many", id="string-iterations"),
    pytest.param("dataset.md5", "not-a-checksum", id="bad-md5"),
    pytest.param("searchSpace", {"parameters": [{"name": "lr", "type": "bool"}]},
                 id="unknown-parameter-type"),
    pytest.param("trialTemplate.image", "", id="empty-image"),
    pytest.param("bohb.topNPercent", 150, id="top-n-above-99"),
])
def test_malformed_spec_is_refused_when_applied(operator_install: support.OperatorInstall,
                                                kube_namespace: str, path: str,
                                                value: Any) -> None:
    with pytest.raises(KubeApiError) as caught:
        support.create_search(operator_install.api, kube_namespace, broken(path, value))
    assert caught.value.status == 422
    assert path.split(".")[-1] in str(caught.value)


def test_valid_spec_is_accepted(operator_install: support.OperatorInstall,
                                kube_namespace: str) -> None:
    created = support.create_search(operator_install.api, kube_namespace, make_valid())
    assert created["spec"]["budgets"] == {"min": 1, "max": 9, "eta": 3}


@pytest.mark.parametrize("path", ["manifests/search.yaml", "examples/cpu-search.yaml"])
def test_shipped_searches_are_accepted_and_valid(operator_install: support.OperatorInstall,
                                                 kube_namespace: str, path: str) -> None:
    document = yaml.safe_load((support.ROOT / path).read_text())
    created = support.create_search(operator_install.api, kube_namespace, document)
    search = spec_mod.load_spec(created)
    template = tpl.parse_template(search.trial_template)
    assert tpl.data_argument(search.dataset).startswith("https://")
    assert template.image.startswith("nas-bohb/trainer:")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_lists_phase_trials_and_best_loss(operator_install: support.OperatorInstall,
                                                  kube_namespace: str, kube_cluster: Any
                                                  ) -> None:
    api = operator_install.api
    support.create_search(api, kube_namespace, make_valid("shown"))
    api.patch(f"{support.SEARCHES.format(ns=kube_namespace)}/shown/status",
              {"status": {"phase": "Running", "progress": "3/17", "trialsRunning": 2,
                          "bestLoss": 0.0812}}, strategic=False)
    out = subprocess.run(["kubectl", "get", "js", "-n", kube_namespace], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig)}).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "AGE"]
    assert row.split()[:5] == ["shown", "Running", "3/17", "2", "0.0812"]


def test_ledger_survives_reloading_and_spreads_over_shards(
        operator_install: support.OperatorInstall, kube_namespace: str) -> None:
    owner = support.create_search(operator_install.api, kube_namespace, make_valid("led"))
    events = [{"event": "sampled", "n": i, "pad": "x" * 100} for i in range(12)]

    async def scenario() -> tuple[list[dict[str, Any]], int, bool]:
        client = KubeClient.from_environment()
        try:
            writer = ConfigMapLedger(client, owner, shard_bytes=400)
            await writer.load()
            for event in events[:5]:
                writer.append(event)
            await writer.flush()
            for event in events[5:]:
                writer.append(event)
            await writer.flush()
            reader = ConfigMapLedger(client, owner)
            await reader.load()

            # Two writers from the same stored state: the second must notice the first.
            other = ConfigMapLedger(client, owner, shard_bytes=10_000)
            await other.load()
            mine = ConfigMapLedger(client, owner, shard_bytes=10_000)
            await mine.load()
            other.append({"event": "x"})
            await other.flush()
            mine.append({"event": "y"})
            try:
                await mine.flush()
                conflict = False
            except LedgerConflict:
                conflict = True
            return reader.read_all(), reader.shard_count, conflict
        finally:
            await client.close()

    stored, shards, conflict = asyncio.run(scenario())
    assert stored == copy.deepcopy(events)
    assert shards > 2
    assert conflict
