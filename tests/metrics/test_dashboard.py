"""The Grafana dashboard shipped in the chart: valid structure, and only real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from controller import metrics

DASHBOARD = Path(__file__).parents[2] / "charts/nas-bohb/files/nas-bohb-dashboard.json"

# Grafana replaces these before a query reaches Prometheus; a parser needs plain durations.
_GRAFANA_DURATIONS = re.compile(r"\$__(rate_interval|interval|range)\b")
_LABELS = {"namespace", "search", "budget", "state", "budget_low", "budget_high", "le"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in query_panels(dashboard) for t in p["targets"]]


def parse(expr: str) -> Any:
    return promql_parser.parse(_GRAFANA_DURATIONS.sub("5m", expr))


def selectors(node: Any) -> list[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        return [node]
    found = []
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None:
            found += selectors(child)
    for arg in getattr(node, "args", None) or []:
        found += selectors(arg)
    return found


# -- structure ----------------------------------------------------------------------------


def test_dashboard_has_the_fields_grafana_requires(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "search"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"


def test_panel_ids_are_unique_and_grid_positions_do_not_overlap(
    dashboard: dict[str, Any],
) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_every_panel_queries_the_selected_datasource(dashboard: dict[str, Any]) -> None:
    for p in query_panels(dashboard):
        assert p["title"] and p["targets"], p["id"]
        assert p["datasource"]["uid"] == "${datasource}"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip()


def test_dashboard_survives_grafanas_schema_model_unchanged(dashboard: dict[str, Any]) -> None:
    # Grafana's Foundation SDK models are generated from Grafana's dashboard schema; a key
    # the schema does not know is dropped on the way through, a wrong shape raises.
    model = pytest.importorskip("grafana_foundation_sdk.models.dashboard")
    encoder = pytest.importorskip("grafana_foundation_sdk.cog.encoder")
    again = json.loads(json.dumps(model.Dashboard.from_json(dashboard),
                                  cls=encoder.JSONEncoder))

    def lost(a: Any, b: Any, path: str) -> list[str]:
        if isinstance(a, dict):
            return [x for k, v in a.items()
                    for x in (lost(v, b[k], f"{path}/{k}") if k in b else [f"{path}/{k}"])]
        if isinstance(a, list):
            if len(a) != len(b):
                return [path]
            return [x for i, (u, v) in enumerate(zip(a, b, strict=True))
                    for x in lost(u, v, f"{path}[{i}]")]
        return [] if a == b else [path]

    assert lost(dashboard, again, "") == []


# -- queries ------------------------------------------------------------------------------


def test_every_query_parses_as_promql(dashboard: dict[str, Any]) -> None:
    for expr in expressions(dashboard):
        parse(expr)  # raises on a syntax error


def test_every_query_names_only_metrics_the_controller_exports(
    dashboard: dict[str, Any],
) -> None:
    exported = metrics.series_names()
    for expr in expressions(dashboard):
        found = selectors(parse(expr))
        assert found, f"query names no metric: {expr}"
        for s in found:
            assert s.name in exported, f"{s.name} is not exported (query {expr})"
            matched = {m.name for m in s.matchers.matchers}
            assert matched <= _LABELS, f"unknown label in {expr}"


def test_every_exported_family_appears_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    used = {s.name for e in expressions(dashboard) for s in selectors(parse(e))}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in metrics.series_names()}
    unused = {f for f in families
              if not any(u == f or u.startswith(f + "_") for u in used)}
    assert unused == set()


def test_queries_filter_by_the_namespace_and_search_variables(
    dashboard: dict[str, Any],
) -> None:
    for expr in expressions(dashboard):
        for s in selectors(parse(expr)):
            values = {m.name: m.value for m in s.matchers.matchers}
            assert values.get("namespace") == "$namespace", expr
            assert values.get("search") == "$search", expr
