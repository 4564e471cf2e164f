"""``make manifests``: write manifests/ (the plain-YAML install) from the Helm chart.

The chart is the source of the operator's install: CRD, ServiceAccount, RBAC rules,
Deployment. This module renders it with the real Helm engine for release ``nas-bohb`` in
namespace ``nas-bohb-system`` (object names ``nas-bohb-operator``, as ``kubectl apply -k
manifests/`` has always installed), leaves out what only Helm needs (its ``helm.sh/*``
label and annotation, ``managed-by: Helm``) and writes ``crd.yaml``, ``rbac.yaml`` and
``deployment.yaml``; ``search.yaml`` and ``kustomization.yaml`` are hand-written.

    python -m tests.chart.manifests            # rewrite manifests/ from the chart
    python -m tests.chart.manifests --check    # exit 1 if manifests/ differs from the chart
    python -m tests.chart.manifests --sync-crd # copy manifests/crd.yaml's spec into the chart

:func:`differences` compares the chart with manifests/ semantically (same kinds and names,
identical CRD spec and RBAC rules, same container command/args/env/ports); tests/chart uses
it so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tests.chart.render import CHART_DIR, ROOT

MANIFESTS = ROOT / "manifests"
RELEASE = "nas-bohb"
NAMESPACE = "nas-bohb-system"
VALUES: dict[str, Any] = {"fullnameOverride": "nas-bohb-operator"}
GENERATED = "# Generated from charts/nas-bohb by `make manifests`: edit the chart, not this file.\n"

_NAMESPACE_DOC = f"""apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/name: nas-bohb
    app.kubernetes.io/part-of: nas-bohb
"""

# Which templates make which file, in order.
_FILES: dict[str, list[str]] = {
    "crd.yaml": ["crd.yaml"],
    "rbac.yaml": ["serviceaccount.yaml", "rbac.yaml"],
    "deployment.yaml": ["<namespace>", "defaults.yaml", "deployment.yaml", "service.yaml"],
}

# Helm-only lines: the chart label, managed-by Helm, and the keep policy with its comment.
_HELM_ONLY = re.compile(
    r"^ *helm\.sh/chart: .*\n|^ *app\.kubernetes\.io/managed-by: Helm\n"
    r"|^ *annotations:\n(?: *#.*\n)* *helm\.sh/resource-policy: keep\n",
    re.M,
)


def _render_templates() -> dict[str, str]:
    import helm_python

    chart = helm_python.Chart.load(str(CHART_DIR))
    try:
        rendered = chart.render(VALUES, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    return {path.rsplit("/", 1)[-1]: text for path, text in rendered.items()}


def render_files() -> dict[str, str]:
    """The text of each generated manifests/ file."""
    templates = _render_templates()
    files = {}
    for name, sources in _FILES.items():
        docs = []
        for source in sources:
            text = _NAMESPACE_DOC if source == "<namespace>" else templates[source]
            # A template may hold several documents; drop empty ones.
            for doc in re.split(r"^---\s*$\n?", _HELM_ONLY.sub("", text), flags=re.M):
                if any(ln.strip() and not ln.lstrip().startswith("#")
                       for ln in doc.splitlines()):
                    docs.append(doc.strip("\n") + "\n")
        files[name] = GENERATED + "---\n".join(docs)
    return files


def write(files: Mapping[str, str]) -> list[str]:
    changed = []
    for name, text in files.items():
        path = MANIFESTS / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
    return changed


def load(texts: Sequence[str]) -> list[dict[str, Any]]:
    return [d for t in texts for d in yaml.safe_load_all(t) if d]


def manifest_objects() -> list[dict[str, Any]]:
    return load([(MANIFESTS / n).read_text() for n in _FILES])


def chart_objects() -> list[dict[str, Any]]:
    return load(list(render_files().values()))


def _key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _container(obj: Mapping[str, Any]) -> dict[str, Any]:
    c = obj["spec"]["template"]["spec"]["containers"][0]
    return {k: c.get(k) for k in ("name", "image", "command", "args", "env", "ports")}


def _rules(obj: Mapping[str, Any]) -> list[tuple[tuple[str, ...], ...]]:
    return sorted(
        (tuple(sorted(r.get("apiGroups", []))), tuple(sorted(r.get("resources", []))),
         tuple(sorted(r.get("verbs", []))), tuple(sorted(r.get("resourceNames", []))))
        for r in obj.get("rules", [])
    )


def differences(chart: list[dict[str, Any]], manifests: list[dict[str, Any]]) -> list[str]:
    """How the chart's objects differ from manifests/, in words (empty: no drift)."""
    mine = {_key(o): o for o in chart}
    theirs = {_key(o): o for o in manifests}
    found = [f"only in the chart: {k}" for k in sorted(mine.keys() - theirs.keys())]
    found += [f"only in manifests/: {k}" for k in sorted(theirs.keys() - mine.keys())]
    for key in sorted(mine.keys() & theirs.keys()):
        a, b = mine[key], theirs[key]
        kind = key[0]
        if kind == "CustomResourceDefinition" and a["spec"] != b["spec"]:
            found.append(f"{key}: CRD spec differs")
        elif kind in ("ClusterRole", "Role") and _rules(a) != _rules(b):
            found.append(f"{key}: rules differ: {_rules(a)} != {_rules(b)}")
        elif kind in ("ClusterRoleBinding", "RoleBinding") and (
                a["roleRef"] != b["roleRef"] or a["subjects"] != b["subjects"]):
            found.append(f"{key}: binding differs")
        elif kind == "Deployment":
            if _container(a) != _container(b):
                found.append(f"{key}: container differs: {_container(a)} != {_container(b)}")
            if a["spec"]["selector"] != b["spec"]["selector"]:
                found.append(f"{key}: selector differs")
            if a["spec"].get("replicas") != b["spec"].get("replicas"):
                found.append(f"{key}: replicas differ")
        elif kind == "ConfigMap" and a.get("data") != b.get("data"):
            found.append(f"{key}: data differs")
        elif kind == "Service" and a["spec"] != b["spec"]:
            found.append(f"{key}: spec differs")
    return found


def sync_crd() -> None:
    """Copy manifests/crd.yaml's leading comments and ``spec`` into templates/crd.yaml."""
    text = (MANIFESTS / "crd.yaml").read_text()
    if text.startswith(GENERATED):
        text = text[len(GENERATED):]
    lines = text.splitlines(keepends=True)
    header = "".join(ln for ln in lines[: next(i for i, ln in enumerate(lines)
                                               if ln.startswith("apiVersion:"))]
                     if ln.startswith("#"))
    spec = text[re.search(r"^spec:\s*$", text, re.M).start():]  # type: ignore[union-attr]
    name = yaml.safe_load(text)["metadata"]["name"]
    if "{{" in spec:
        raise SystemExit("manifests/crd.yaml contains '{{', which Helm would read as a template")
    (CHART_DIR / "templates/crd.yaml").write_text(
        "{{- if .Values.crds.install }}\n" + header +
        "apiVersion: apiextensions.k8s.io/v1\n"
        "kind: CustomResourceDefinition\n"
        "metadata:\n"
        f"  name: {name}\n"
        "  labels:\n"
        '    app.kubernetes.io/name: {{ include "nas-bohb.name" . }}\n'
        "    app.kubernetes.io/instance: {{ .Release.Name }}\n"
        "    app.kubernetes.io/component: crd\n"
        '    {{- include "nas-bohb.commonLabels" . | nindent 4 }}\n'
        "  {{- if .Values.crds.keep }}\n"
        "  annotations:\n"
        "    # Uninstalling the release keeps the CRD, and so every JointSearch and its results.\n"
        "    helm.sh/resource-policy: keep\n"
        "  {{- end }}\n" + spec.rstrip("\n") + "\n{{- end }}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chart.manifests",
                                     description="Render manifests/ from charts/nas-bohb.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="exit 1 when manifests/ differs from the chart; write nothing")
    mode.add_argument("--sync-crd", action="store_true",
                      help="copy manifests/crd.yaml's spec into the chart's CRD template")
    args = parser.parse_args(argv)
    if args.sync_crd:
        sync_crd()
        print("charts/nas-bohb/templates/crd.yaml updated from manifests/crd.yaml")
        return 0
    files = render_files()
    if args.check:
        stale = [n for n, t in files.items()
                 if not (MANIFESTS / n).exists() or (MANIFESTS / n).read_text() != t]
        for name in stale:
            print(f"manifests/{name} differs from the chart; run `make manifests`")
        return 1 if stale else 0
    changed = write(files)
    print("manifests/: " + (", ".join(changed) + " rewritten" if changed else "up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
