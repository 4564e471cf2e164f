"""A ``JointSearch`` as hpbandster's result files, for the tools that read BOHB runs.

The search's ledger (ConfigMaps owned by the resource) holds every configuration and
every result in full; replaying it into a read-only engine (no model) gives exactly the
lines hpbandster's ``json_result_logger`` would have written: ``configs.json``,
``results.json`` and ``configspace.json`` (:mod:`controller.engine.hpbandster_io`).
``status.json`` is the resource's status as it was read, for reference.

    python -m controller.kube.export NAMESPACE NAME DEST_DIR

Works on a running search too (its unfinished trials are simply not in ``results.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import spec as spec_mod
from controller.engine import Engine, MemoryLedger, hpbandster_io
from controller.kube import API_VERSION, PLURAL
from controller.kube.client import KubeClient, object_path
from controller.kube.ledger import ConfigMapLedger

logger = logging.getLogger(__name__)


class ExportError(Exception):
    """The search cannot be exported (missing, or without a ledger yet)."""


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_search` wrote."""

    directory: Path
    configs: int
    results: int
    phase: str | None


def export_search(namespace: str, name: str, dest_dir: str | Path, *,
                  context: str | None = None) -> ExportSummary:
    """Write hpbandster's files for search ``namespace/name`` into ``dest_dir``.

    Uses the current kubeconfig (or the in-cluster account); ``context`` picks a
    kubeconfig context. Raises :class:`ExportError` when the search or its ledger is
    missing.
    """
    return asyncio.run(export_search_async(namespace, name, dest_dir,
                                           client=KubeClient.from_environment(context)))


async def export_search_async(namespace: str, name: str, dest_dir: str | Path, *,
                              client: KubeClient) -> ExportSummary:
    """:func:`export_search` inside a running event loop, with a given client."""
    try:
        body = await client.get_or_none(object_path(API_VERSION, PLURAL, namespace, name))
        if body is None:
            raise ExportError(f"JointSearch {namespace}/{name} not found")
        ledger = ConfigMapLedger(client, body)
        count = await ledger.load()
    finally:
        await client.close()
    if count == 0:
        raise ExportError(f"JointSearch {namespace}/{name} has no ledger yet (not started, "
                          "or its spec is invalid)")
    events = ledger.read_all()
    stored: Any = events[0].get("spec") if events[0].get("event") == "search_started" else None
    search = spec_mod.load_spec(stored if isinstance(stored, dict) else body.get("spec") or {})
    engine = Engine(search, MemoryLedger(events), prefetch=False, model=False)
    try:
        folder = Path(dest_dir)
        hpbandster_io.write_files(engine, folder)
        status = body.get("status") or {}
        (folder / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True),
                                            encoding="utf-8")
        summary = ExportSummary(directory=folder, configs=len(engine.hpbandster_configs()),
                                results=len(engine.hpbandster_results()),
                                phase=status.get("phase"))
    finally:
        engine.close()
    logger.info("Search %s/%s exported to %s: %d configurations, %d results.", namespace, name,
                summary.directory, summary.configs, summary.results)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.kube.export",
                                     description="Write a JointSearch as hpbandster files.")
    parser.add_argument("namespace")
    parser.add_argument("name")
    parser.add_argument("dest_dir")
    parser.add_argument("--context", help="kubeconfig context")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = export_search(args.namespace, args.name, args.dest_dir, context=args.context)
    except (ExportError, spec_mod.SpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{summary.configs} configurations, {summary.results} results -> {summary.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
