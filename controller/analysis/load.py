"""Read a search's hpbandster files into typed records, tolerating partial and damaged input.

Every BOHB tool reads hpbandster's two line-oriented files, so the analysis does too:
``configs.json`` holds ``[config_id, config, info]`` per configuration (``info`` may say
``model_based_pick``), ``results.json`` holds ``[config_id, budget, timestamps, result,
exception]`` per finished run. A search that is still running, a file cut off mid-line or a
run without a result must still give a report, so every defect becomes a note (a sentence
for the report and stderr) and the line is skipped, never an exception.

A run *failed* when it raised, has no result, or its loss is missing or not finite; failed
runs are kept (they count in trajectories and tables) but carry ``loss=None``.

.. note::
   Timestamps are taken as seconds on one clock (hpbandster writes ``time.time()``) and
   shifted so the earliest ``submitted`` is 0. When a configuration was evaluated twice on
   the same budget (a re-run), the later line wins and a note says so.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.analysis import AnalysisError

logger = logging.getLogger(__name__)

CONFIGS_FILE = "configs.json"
RESULTS_FILE = "results.json"
BASELINES_FILE = "baselines.json"

# Per-line defects listed in full before they are only counted.
_MAX_LISTED_DEFECTS = 3


@dataclass(frozen=True)
class Configuration:
    """One sampled configuration: its id ``"i-0-k"``, values, and how it was picked."""

    config_id: str
    values: Mapping[str, Any]
    model_based: bool | None  # None when the file does not say


@dataclass(frozen=True)
class Run:
    """One configuration evaluated on one budget (a trial), times relative to the search start."""

    config_id: str
    budget: float
    loss: float | None  # None when the run failed
    status: str  # the trainer's status ("ok", "diverged", ...) or "failed"
    message: str | None
    submitted: float | None
    started: float | None
    finished: float | None
    info: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.loss is not None


@dataclass(frozen=True)
class Baseline:
    """A named reference configuration trained by the same pipeline (``baselines.json``)."""

    name: str
    config: Mapping[str, Any]
    budget: float | None
    record: Mapping[str, Any] | None


@dataclass
class Search:
    """Everything read from one source, plus the notes about what could not be read."""

    source: str
    folder: Path
    configs: dict[str, Configuration]
    runs: list[Run]
    baselines: list[Baseline]
    notes: list[str] = field(default_factory=list)

    @property
    def budgets(self) -> list[float]:
        return sorted({r.budget for r in self.runs})

    def runs_on(self, budget: float) -> list[Run]:
        return [r for r in self.runs if r.budget == budget]


def config_id_text(raw: object) -> str | None:
    """hpbandster's id triple as ``"i-0-k"``; None when ``raw`` is not three integers."""
    if isinstance(raw, str):
        parts: Sequence[object] = raw.split("-")
        try:
            parts = [int(str(p)) for p in parts]
        except ValueError:
            return None
    elif isinstance(raw, (list, tuple)):
        parts = raw
    else:
        return None
    if len(parts) != 3 or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        return None
    return "-".join(str(p) for p in parts)


def load_search(folder: Path, source: str | None = None) -> Search:
    """Read ``configs.json``, ``results.json`` and (if present) ``baselines.json`` in ``folder``.

    Raises :class:`AnalysisError` only when there is nothing to read: the folder is missing
    or holds neither file. Everything else becomes a note in :attr:`Search.notes`.
    """
    if not folder.is_dir():
        raise AnalysisError(f"source {str(folder)!r} is not a folder")
    configs_path, results_path = folder / CONFIGS_FILE, folder / RESULTS_FILE
    if not configs_path.is_file() and not results_path.is_file():
        raise AnalysisError(
            f"source {str(folder)!r} holds neither {CONFIGS_FILE} nor {RESULTS_FILE}; "
            "give a run folder of `nas-bohb search` or of hpbandster's json_result_logger"
        )

    notes: list[str] = []
    configs = _read_configs(configs_path, notes)
    runs = _read_results(results_path, notes)

    # A run whose configuration line is missing still counts; its values are unknown.
    orphans = sorted({r.config_id for r in runs if r.config_id not in configs})
    if orphans:
        notes.append(
            f"{len(orphans)} run(s) name configurations missing from {CONFIGS_FILE} "
            f"(first: {orphans[0]}); they are left out of the importance analysis."
        )

    # Configurations without any result are still running, pending, or were lost.
    with_result = {r.config_id for r in runs}
    waiting = [c for c in configs if c not in with_result]
    if waiting:
        notes.append(
            f"{len(waiting)} of {len(configs)} configuration(s) have no result yet "
            "(still running, pending, or lost); the analysis covers finished runs only."
        )
    if not runs:
        notes.append(f"{RESULTS_FILE} holds no finished run; there is nothing to analyse yet.")

    baselines = _read_baselines(folder / BASELINES_FILE, notes)
    search = Search(
        source=source or str(folder), folder=folder, configs=configs, runs=runs,
        baselines=baselines, notes=notes,
    )
    logger.info(
        "Search %s: read %d configuration(s), %d run(s) on %d budget(s), %d baseline(s).",
        search.source, len(configs), len(runs), len(search.budgets), len(baselines),
    )
    return search


def _json_lines(path: Path, notes: list[str]) -> list[tuple[int, Any]]:
    """The parsed lines of a JSON-lines file; bad lines become one summarised note."""
    if not path.is_file():
        notes.append(f"{path.name} is missing; read as empty.")
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        notes.append(f"{path.name} could not be read ({exc}); read as empty.")
        return []

    lines = text.splitlines()
    parsed: list[tuple[int, Any]] = []
    bad: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            # Python's json accepts the NaN/Infinity tokens hpbandster may write for a loss.
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            last = number == len(lines)
            why = "cut off (the search may still be writing it)" if last else f"not JSON: {exc}"
            bad.append(f"line {number} {why}")
    _note_defects(path.name, bad, notes)
    return parsed


def _note_defects(file_name: str, defects: list[str], notes: list[str]) -> None:
    if not defects:
        return
    listed = "; ".join(defects[:_MAX_LISTED_DEFECTS])
    more = len(defects) - _MAX_LISTED_DEFECTS
    tail = f"; and {more} more" if more > 0 else ""
    notes.append(f"{file_name}: skipped {len(defects)} line(s): {listed}{tail}.")


def _read_configs(path: Path, notes: list[str]) -> dict[str, Configuration]:
    configs: dict[str, Configuration] = {}
    bad: list[str] = []
    for number, entry in _json_lines(path, notes):
        # hpbandster writes [id, config, info]; older logs have [id, config].
        if not isinstance(entry, list) or len(entry) not in (2, 3):
            bad.append(f"line {number} is not [config_id, config, info]")
            continue
        cid = config_id_text(entry[0])
        if cid is None:
            bad.append(f"line {number} has config_id {entry[0]!r}, not three integers")
            continue
        values = entry[1]
        if not isinstance(values, dict):
            bad.append(f"line {number} ({cid}) has a config that is not an object")
            continue
        info = entry[2] if len(entry) == 3 and isinstance(entry[2], dict) else {}
        pick = info.get("model_based_pick")
        configs[cid] = Configuration(
            cid, values, bool(pick) if isinstance(pick, (bool, int)) else None
        )
    _note_defects(path.name, bad, notes)
    return configs


def _number(value: object) -> float | None:
    """A finite float, or None for anything else (null, NaN, strings, booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _read_results(path: Path, notes: list[str]) -> list[Run]:
    raw: list[tuple[str, float, dict[str, float | None], Any, Any]] = []
    bad: list[str] = []
    for number, entry in _json_lines(path, notes):
        if not isinstance(entry, list) or len(entry) < 4:
            bad.append(f"line {number} is not [config_id, budget, timestamps, result, exception]")
            continue
        cid = config_id_text(entry[0])
        budget = _number(entry[1])
        if cid is None or budget is None or budget <= 0:
            bad.append(f"line {number} has a bad config_id {entry[0]!r} or budget {entry[1]!r}")
            continue
        stamps = entry[2] if isinstance(entry[2], dict) else {}
        times = {k: _number(stamps.get(k)) for k in ("submitted", "started", "finished")}
        exception = entry[4] if len(entry) > 4 else None
        raw.append((cid, budget, times, entry[3], exception))
    _note_defects(path.name, bad, notes)

    # Shift all times so the search starts at 0, whatever clock the writer used.
    stamps_seen = [t for entry in raw for t in entry[2].values() if t is not None]
    t0 = min(stamps_seen) if stamps_seen else 0.0

    runs: dict[tuple[str, float], Run] = {}
    repeated = 0
    for cid, budget, times, result, exception in raw:
        run = _make_run(cid, budget, times, result, exception, t0)
        if (cid, budget) in runs:
            repeated += 1
        runs[(cid, budget)] = run
    if repeated:
        notes.append(
            f"{repeated} run(s) appear more than once in {RESULTS_FILE} "
            "(same configuration and budget); the last line of each was used."
        )
    return list(runs.values())


def _make_run(
    cid: str, budget: float, times: dict[str, float | None], result: object, exception: object,
    t0: float,
) -> Run:
    def rel(t: float | None) -> float | None:
        return None if t is None else t - t0

    info: Mapping[str, Any] = {}
    loss: float | None = None
    message: str | None = None
    if isinstance(result, dict):
        raw_info = result.get("info")
        info = raw_info if isinstance(raw_info, dict) else {}
        loss = _number(result.get("loss"))

    # The trainer's own status wins; otherwise the shape of the line decides.
    status = info.get("status") if isinstance(info.get("status"), str) else None
    if exception:
        # hpbandster logs a crashed job's traceback here; nas-bohb logs "status: reason".
        loss = None
        status = "failed"
        message = str(exception).strip().splitlines()[-1] if str(exception).strip() else None
    elif result is None:
        status = status or "failed"
        message = "no result"
    elif loss is None:
        status = status if status and status != "ok" else "failed"
        message = "loss missing or not finite"
    else:
        status = status or "ok"
    if isinstance(info.get("message"), str) and not message:
        message = info["message"]
    return Run(
        config_id=cid, budget=budget, loss=loss, status=status, message=message,
        submitted=rel(times["submitted"]), started=rel(times["started"]),
        finished=rel(times["finished"]), info=info,
    )


def _read_baselines(path: Path, notes: list[str]) -> list[Baseline]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{BASELINES_FILE} could not be read ({exc}); no baselines compared.")
        return []
    if not isinstance(data, list):
        notes.append(f"{BASELINES_FILE} is not a JSON list; no baselines compared.")
        return []

    baselines: list[Baseline] = []
    for index, entry in enumerate(data):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            notes.append(f"{BASELINES_FILE}: entry {index} has no 'name'; skipped.")
            continue
        config = entry.get("config")
        record = entry.get("record")
        baselines.append(
            Baseline(
                name=name,
                config=config if isinstance(config, dict) else {},
                budget=_number(entry.get("budget")),
                record=record if isinstance(record, dict) else None,
            )
        )
    return baselines
