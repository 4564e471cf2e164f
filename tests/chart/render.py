"""Rendering the Helm chart for tests and for ``make manifests``: small typed helpers.

The real Helm engine (``helm_python``, Helm v4 in-process) renders; these helpers only parse
its output into objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
CHART_DIR = ROOT / "charts/nas-bohb"
RELEASE = "nas-bohb"
NAMESPACE = "nas-bohb"

Obj = dict[str, Any]


def render(values: Mapping[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> list[Obj]:
    """The chart's objects for ``values`` (NOTES.txt left out), in template order."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART_DIR))
    try:
        rendered = chart.render(dict(values or {}), name=name, namespace=namespace)
    finally:
        chart.close()
    objects: list[Obj] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        objects += [d for d in yaml.safe_load_all(rendered[path]) if d]
    return objects


def notes(values: Mapping[str, Any] | None = None) -> str:
    import helm_python

    chart = helm_python.Chart.load(str(CHART_DIR))
    try:
        rendered = chart.render(dict(values or {}), name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    return next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str) -> Obj:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
