"""The chart and manifests/ do not drift, and the operator's RBAC is what the chart lists."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.chart import manifests
from tests.chart.render import CHART_DIR, by_kind, one, render

pytest.importorskip("helm_python")


# -- manifests/ is the chart, rendered ----------------------------------------------------


def test_manifests_match_the_chart_semantically() -> None:
    assert manifests.differences(manifests.chart_objects(), manifests.manifest_objects()) == []


def test_manifests_are_exactly_what_make_manifests_writes() -> None:
    assert manifests.main(["--check"]) == 0, "run `make manifests`"


def test_differences_notice_a_changed_rule_and_a_changed_crd() -> None:
    chart = manifests.chart_objects()
    edited = manifests.chart_objects()
    one(edited, "ClusterRole")["rules"][0]["verbs"].append("delete")
    crd = one(edited, "CustomResourceDefinition")
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"] = []
    found = manifests.differences(chart, edited)
    assert any("rules differ" in f for f in found) and any("CRD spec" in f for f in found)


# -- CRD lifecycle ------------------------------------------------------------------------


def test_crd_is_templated_and_kept_on_uninstall_by_default() -> None:
    crd = one(render(), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "annotations" not in one(render({"crds": {"keep": False}}),
                                    "CustomResourceDefinition")["metadata"]
    assert by_kind(render({"crds": {"install": False}}), "CustomResourceDefinition") == []


# -- RBAC: least privilege, every grant explained ----------------------------------------


def expand(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group or "core", resource, verb) for r in rules for group in r["apiGroups"]
            for resource in r["resources"] for verb in r["verbs"]}


def readme_table() -> set[tuple[str, str, str]]:
    text = (CHART_DIR / "README.md").read_text()
    section = text.split("## What the operator may do (RBAC)")[1].split("\n## ")[0]
    grants = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("API group", "---"):
            continue
        group, resource, verbs, why = cells
        assert why, f"no reason given for {resource}"
        grants |= {(group, resource, v.strip()) for v in verbs.split(",")}
    return grants


# kopf needs namespaces only when it watches a list of them, not cluster-wide.
NAMESPACE_READS = {("core", "namespaces", "list"), ("core", "namespaces", "watch")}
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}


def test_cluster_role_grants_exactly_what_the_readme_lists_with_reasons() -> None:
    rules = one(render(), "ClusterRole")["rules"]
    assert expand(rules) == readme_table() - NAMESPACE_READS


def test_cluster_role_has_no_wildcards_secrets_or_escalation_verbs() -> None:
    grants = expand(one(render(), "ClusterRole")["rules"])
    assert not [g for g in grants if "*" in g]
    resources = {r for _, r, _ in grants}
    assert not resources & {"secrets", "nodes", "clusterroles", "clusterrolebindings",
                            "pods/exec", "nodes/proxy"}
    assert not {v for *_, v in grants} & {"escalate", "bind", "impersonate", "deletecollection"}
    # Cluster-scoped objects are only read.
    assert {v for _, r, v in grants if r in CLUSTER_SCOPED} <= {"list", "watch"}


def test_every_rule_is_commented_with_its_purpose() -> None:
    lines = (CHART_DIR / "templates/_rules.tpl").read_text().splitlines()
    rules = [i for i, ln in enumerate(lines) if ln.startswith("- apiGroups:")]
    assert rules
    for i in rules:
        # Walk back over the rules of the same group to the comment that explains them.
        j = i - 1
        while j >= 0 and lines[j].startswith(("- ", "  ")):
            j -= 1
        assert j >= 0 and lines[j].startswith("#"), f"rule at line {i + 1} has no comment"


def test_watched_namespaces_get_roles_and_only_kopfs_reads_cluster_wide() -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    namespaced = {g for g in readme_table() if g[1] not in CLUSTER_SCOPED}
    assert all(expand(r["rules"]) == namespaced for r in roles)
    # Only kopf's read-only scanning stays cluster-wide.
    scanning = one(objects, "ClusterRole")
    assert expand(scanning["rules"]) == readme_table() - namespaced
    bindings = by_kind(objects, "RoleBinding")
    assert {b["subjects"][0]["namespace"] for b in bindings} == {"nas-bohb"}
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_rule_comments_survive_into_manifests() -> None:
    text = (manifests.MANIFESTS / "rbac.yaml").read_text()
    assert re.search(r"# Trials: one Job per trial", text)
