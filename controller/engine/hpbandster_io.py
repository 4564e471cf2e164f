"""hpbandster-compatible result files, so existing BOHB tools can read a search.

hpbandster's ``json_result_logger`` writes ``configs.json`` (one line per configuration:
``[[iteration, stage, index], config, info]``) and ``results.json`` (one line per run:
``[id, budget, {submitted, started, finished}, {loss, info} or null, exception]``).
``hpbandster.core.result.logged_results_to_HBS_result`` and tools built on it (CAVE,
DeepCAVE's BOHB converter) read these two files; ``configspace.json`` (ConfigSpace's
own JSON) describes the space they pair with. The files are derived from the engine,
never read back by it, and rewritten atomically after every result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from controller.engine.core import Engine


def _write_lines(path: Path, lines: list[Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, allow_nan=False))
            handle.write("\n")
    # No fsync: the files are derived from the ledger and rewritten on every start.
    os.replace(tmp, path)


def write_files(engine: Engine, directory: str | os.PathLike[str]) -> None:
    """Write ``configs.json``, ``results.json`` and ``configspace.json`` into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "configs.json", engine.hpbandster_configs())
    _write_lines(folder / "results.json", engine.hpbandster_results())
    space_file = folder / "configspace.json"
    if not space_file.exists():
        tmp = folder / ".configspace.json.tmp"
        engine.space.configspace.to_json(tmp)
        os.replace(tmp, space_file)
