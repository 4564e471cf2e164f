"""``nas-bohb analyze SOURCE [--out REPORT_DIR]``: the analysis as a subcommand.

SOURCE is a run folder of ``nas-bohb search``, a folder of hpbandster's
``json_result_logger`` output, or ``NAMESPACE/NAME`` of a ``JointSearch`` on the cluster
(exported to hpbandster's files by the operator package first). Notes about partial input
go to stderr as well as into the report; the exit status is 0 whenever a report was
written, 2 when SOURCE cannot be read at all, 1 on an unexpected failure (a bug).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import shutil
import sys
from pathlib import Path

from controller.analysis import AnalysisError

logger = logging.getLogger(__name__)

# A JointSearch is addressed as namespace/name, both DNS labels (names may hold dots).
_RESOURCE = re.compile(r"^([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)/([a-z0-9](?:[-.a-z0-9]*[a-z0-9])?)$")
_HPBANDSTER_FILES = ("configs.json", "results.json")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``analyze`` on the ``nas-bohb`` command line."""
    parser = subparsers.add_parser(
        "analyze",
        help="budget correlations, fANOVA importance, trajectories and plots of a search",
        description="Analyse a search and write a report folder (report.md, PNG plots, CSV "
                    "tables, summary.json).",
    )
    parser.add_argument(
        "source", metavar="SOURCE",
        help="a run folder of `nas-bohb search`, a folder with hpbandster's configs.json and "
             "results.json, or NAMESPACE/NAME of a JointSearch on the cluster",
    )
    parser.add_argument(
        "--out", metavar="REPORT_DIR", type=Path, default=None,
        help="where to write the report (default: SOURCE/analysis for a folder, "
             "./analysis-NAMESPACE-NAME for a JointSearch)",
    )
    parser.add_argument(
        "--forest-seeds", metavar="N", type=_positive_int, default=5,
        help="fANOVA forests fitted per budget; the spread of importances is over these "
             "(default: 5)",
    )
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Write the report for ``args.source``; 0 when written, 2 when SOURCE is unusable."""
    from controller.analysis import report  # matplotlib, optuna: only when analysing

    try:
        folder, label, out = resolve_source(args.source, args.out)
        result = report.analyze(folder, out, source=label, seeds=args.forest_seeds)
    except AnalysisError as exc:
        print(f"nas-bohb analyze: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nas-bohb analyze: error: cannot write the report: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: say so in one line, keep the trace
        logger.debug("Analysis of %s failed.", args.source, exc_info=True)
        print(f"nas-bohb analyze: error: unexpected {type(exc).__name__}: {exc} "
              "(a bug; please report it with the source's configs.json and results.json)",
              file=sys.stderr)
        return 1

    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"Report written to {out / report.REPORT_FILE} "
          f"({len(result.files)} files, {len(result.notes)} note(s)).")
    return 0


def resolve_source(source: str, out: Path | None) -> tuple[Path, str, Path]:
    """The folder to read, a label for the report, and the report folder."""
    # A local path wins over the namespace/name reading of the same text.
    path = Path(source)
    if path.exists():
        # A path to one of hpbandster's files means the folder that holds it.
        folder = path.parent if path.is_file() and path.name in _HPBANDSTER_FILES else path
        if not folder.is_dir():
            raise AnalysisError(f"source {source!r} is a file; give the folder that holds "
                                "configs.json and results.json")
        return folder, source, out if out is not None else folder / "analysis"

    match = _RESOURCE.match(source)
    if match is None:
        raise AnalysisError(
            f"source {source!r} is neither an existing folder nor NAMESPACE/NAME of a "
            "JointSearch"
        )
    namespace, name = match.groups()
    out = out if out is not None else Path(f"analysis-{namespace}-{name}")
    folder = out / "source"
    export_joint_search(namespace, name, folder)
    return folder, f"JointSearch {namespace}/{name}", out


def export_joint_search(namespace: str, name: str, dest: Path) -> None:
    """Have the operator package write the search's hpbandster files into ``dest``."""
    try:
        # The operator side, absent in analysis-only installs; imported by name on purpose.
        export = importlib.import_module("controller.kube.export")
    except ImportError as exc:
        raise AnalysisError(
            f"reading JointSearch {namespace}/{name} needs the operator package "
            f"(controller.kube.export), which cannot be imported here: {exc}; install the "
            "controller extra, or export the search's configs.json/results.json and give "
            "their folder"
        ) from exc
    export_search = getattr(export, "export_search", None)
    if not callable(export_search):
        raise AnalysisError("controller.kube.export has no export_search(namespace, name, "
                            "dest_dir); this version of the operator package cannot export")

    # The first folder this call creates: removed again if the export fails, so a failed
    # attempt leaves nothing behind (a folder that was there before is left alone).
    created = next((p for p in reversed((dest, *dest.parents)) if not p.exists()), None)
    dest.mkdir(parents=True, exist_ok=True)
    logger.info("JointSearch %s/%s: exporting its results to %s.", namespace, name, dest)
    try:
        export_search(namespace, name, dest)
    except Exception as exc:  # API errors, missing resource, no kubeconfig: all user-facing
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        # The search's own problems speak for themselves; anything else may be about
        # finding the cluster at all.
        known = getattr(export, "ExportError", None)
        hint = "" if isinstance(known, type) and isinstance(exc, known) else (
            " (the cluster is found through KUBECONFIG, ~/.kube/config or, in a pod, its "
            "service account)")
        raise AnalysisError(
            f"could not export JointSearch {namespace}/{name}: {exc}{hint}") from exc
