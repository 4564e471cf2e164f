"""The Helm chart rendered offline by the real Helm engine: lint, schema, security, options."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.chart.render import CHART_DIR, by_kind, notes, one, render

helm_python = pytest.importorskip("helm_python")


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return render()


def operator_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


# -- lint and schema ----------------------------------------------------------------------


def test_chart_passes_strict_lint() -> None:
    for values in ({}, {"metrics": {"serviceMonitor": {"enabled": True}},
                        "dashboard": {"enabled": True}, "watchNamespaces": ["a", "b"]}):
        report = helm_python.lint(str(CHART_DIR), values, strict=True, kube_version="v1.20.2")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("values", [
    pytest.param({"bogus": 1}, id="top-level"),
    pytest.param({"metrics": {"serviceMonitor": {"enabeld": True}}}, id="nested-typo"),
    pytest.param({"securityContext": {"runAsRoot": True}}, id="security-context"),
    pytest.param({"trialDefaults": {"image": {"name": "x"}}}, id="trial-image"),
    pytest.param({"dataset": {"md5": "not-hex"}}, id="bad-md5"),
    pytest.param({"replicaCount": 0}, id="zero-replicas"),
])
def test_schema_rejects_unknown_keys_and_bad_values(values: dict[str, Any]) -> None:
    chart = helm_python.Chart.load(str(CHART_DIR))
    with pytest.raises(helm_python.HelmError):
        chart.validate_schema(values)


def test_schema_forbids_extra_properties_at_every_level() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    free_form = {"stringMap", "quantityMap", "affinity", "valueFrom", "seLinuxOptions"}

    def walk(node: Any, path: str) -> list[str]:
        bad = []
        if isinstance(node, dict):
            strict = node.get("additionalProperties") is False
            if node.get("type") == "object" and path.rsplit("/", 1)[-1] not in free_form \
                    and not strict:
                bad.append(path)
            for key, child in node.items():
                bad += walk(child, f"{path}/{key}")
        return bad

    assert walk(schema, "") == []


def test_every_value_has_a_comment_above_it() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    defs = schema["$defs"]

    def described(node: dict[str, Any]) -> dict[str, Any]:
        return defs[node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else node

    # Walk values.yaml's key lines alongside the schema: a key whose schema parent lists
    # properties (a chart setting, not a free-form map) needs a comment on the line above.
    missing, stack = [], [(-1, schema)]
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w./-]*):", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = described(stack[-1][1]) if stack else {}
        node = parent.get("properties", {}).get(key)
        if node is None:
            stack.append((indent, {}))
            continue
        if not lines[i - 1].strip().startswith("#"):
            missing.append(key)
        stack.append((indent, described(node)))
    assert missing == []


def test_both_monitors_at_once_are_refused() -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}
    with pytest.raises(helm_python.HelmError, match="Enable one of them"):
        render(values)


def test_several_replicas_are_refused_as_nothing_elects_a_leader() -> None:
    with pytest.raises(helm_python.HelmError, match="replicaCount"):
        render({"replicaCount": 2})


# -- security -----------------------------------------------------------------------------


def test_rendered_pods_run_as_non_root_without_privilege_escalation(
    default_objects: list[dict[str, Any]],
) -> None:
    pods = [d["spec"]["template"]["spec"] for d in by_kind(default_objects, "Deployment")]
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = {**pod["securityContext"], **c["securityContext"]}
            assert sc["runAsNonRoot"] is True and int(sc["runAsUser"]) > 0, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc.get("privileged", False) is False, c["name"]
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
            assert not c["securityContext"]["capabilities"].get("add"), c["name"]
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v]


def test_read_only_root_leaves_only_tmp_writable(default_objects: list[dict[str, Any]]) -> None:
    pod = operator_pod(default_objects)
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    assert writable == ["/tmp"]


# -- labels and names ---------------------------------------------------------------------


def test_objects_carry_standard_labels_and_selectors_use_three(
    default_objects: list[dict[str, Any]],
) -> None:
    standard = {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                "app.kubernetes.io/component", "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of"}
    for obj in default_objects:
        assert standard <= set(obj["metadata"]["labels"]), obj["kind"]
    selector_keys = {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                     "app.kubernetes.io/component"}
    deployment = one(default_objects, "Deployment")
    assert set(deployment["spec"]["selector"]["matchLabels"]) == selector_keys
    service = one(default_objects, "Service")
    assert set(service["spec"]["selector"]) == selector_keys


# -- options ------------------------------------------------------------------------------


def test_service_monitor_and_pod_monitor_are_optional() -> None:
    assert not by_kind(render(), "ServiceMonitor") and not by_kind(render(), "PodMonitor")
    sm = one(render({"metrics": {"serviceMonitor": {"enabled": True,
                                                      "labels": {"release": "prom"}}}}),
             "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    pm = one(render({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_metrics_service_targets_the_metrics_port(default_objects: list[dict[str, Any]]) -> None:
    service = one(default_objects, "Service")
    ports = {p["name"]: p for p in operator_pod(default_objects)["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert ports["metrics"]["containerPort"] == 8080


def test_dashboard_configmap_carries_the_sidecar_label_and_the_json() -> None:
    objects = render({"dashboard": {"enabled": True, "namespace": "monitoring"}})
    cm = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("dashboard")]
    assert len(cm) == 1
    assert cm[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm[0]["metadata"]["namespace"] == "monitoring"
    shipped = json.loads((CHART_DIR / "files/nas-bohb-dashboard.json").read_text())
    assert json.loads(cm[0]["data"]["nas-bohb-dashboard.json"]) == shipped


def test_trial_defaults_reach_the_operator() -> None:
    objects = render({"trialDefaults": {"nodeSelector": {"pool": "gpu"},
                                        "resources": {"limits": {"nvidia.com/gpu": 2}}},
                      "dataset": {"url": "http://mirror.example/cifar.tgz", "md5": ""}})
    cm = next(c for c in by_kind(objects, "ConfigMap")
              if c["metadata"]["name"].endswith("defaults"))
    defaults = yaml.safe_load(cm["data"]["defaults.yaml"])
    assert defaults["trialTemplate"]["image"] == "nas-bohb/trainer:0.1.0"
    assert defaults["trialTemplate"]["nodeSelector"] == {"pool": "gpu"}
    assert defaults["trialTemplate"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert defaults["dataset"] == {"url": "http://mirror.example/cifar.tgz"}


def test_notes_warn_before_next_steps() -> None:
    text = notes({"crds": {"keep": False}})
    assert text.index("WARNING: crds.keep is false") < text.index("Next steps")
    assert "WARNING" not in notes()
