"""The trainer's command line: one trial in, one JSON record out (docs/architecture.md).

Exit codes: ``0`` a record was written, whatever its status; ``2`` invalid configuration or
arguments, including a data source that is missing, corrupt or fails its checksum (the message
names the parameter; no record); ``1`` anything else: an unexpected crash, or a download that
failed for network reasons (retrying may help). A fixed-width line per epoch goes to stderr.

With ``--report KIND`` the operator's reporter (:mod:`trainer.report`, imported only then) is
told about every epoch and the final record; a failing reporter never stops training.

.. note::
   Give each trainer ``--threads 1`` when several share a CPU: on a loaded 2-core machine one
   trainer with two OpenMP threads measured up to seven times slower than with one thread.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from trainer import data as data_mod
from trainer import params, schedule
from trainer import train as train_mod

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_CRASH, EXIT_INVALID = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.prepare_data:
        return _prepare_data(args)
    missing = [f"--{n}" for n in ("config", "budget", "output") if getattr(args, n) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    # Refuse bad input before any data is loaded or the reporter is started.
    try:
        config = params.validate_config(_read_config(args.config))
        train_mod.resolve_device(args.device)
        _check_output(args.output)
    except params.ConfigError as exc:
        return _invalid(str(exc))
    reporter = None
    if args.report:
        try:
            reporter = _make_reporter(args.report)
        except Exception as exc:
            return _invalid(f"--report: cannot make a reporter of kind {args.report!r}: {exc}")

    # Every epoch: a line on stderr, then the reporter, whose failures are only logged.
    printer = ProgressPrinter(sys.stderr)

    def progress(point: dict[str, Any]) -> None:
        printer(point)
        if reporter is not None:
            _call_safely(reporter.on_progress, point)

    try:
        record = train_mod.train(
            config,
            args.budget,
            args.data,
            data_md5=args.data_md5,
            cache_dir=args.cache_dir,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            eval_every_epoch=args.eval_every_epoch,
            sgdr_min_period=args.sgdr_min_period,
            progress=progress,
        )
    except params.ConfigError as exc:
        return _invalid(str(exc))
    # Unreachable data may come back (exit 1); a wrong or damaged archive will not (exit 2).
    except data_mod.DataUnavailable as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        return EXIT_CRASH
    except data_mod.DataError as exc:
        return _invalid(str(exc))
    except Exception:
        logger.exception("The trainer crashed; no record written.")
        return EXIT_CRASH

    # The record is on disk before the reporter hears of it, so it survives a slow reporter.
    write_json_atomic(args.output, record)
    logger.info("Record with status %s written to %s.", record["status"], args.output)
    if reporter is not None:
        _call_safely(reporter.on_result, record)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train one configuration of the joint space on CIFAR-10 for a budget of "
        "training seconds and write its result record (JSON).",
    )
    p.add_argument("--config", help="configuration: a JSON file or inline JSON (required)")
    p.add_argument("--budget", type=_positive_float, help="training seconds (required)")
    p.add_argument(
        "--data",
        default=data_mod.default_source(),
        help="CIFAR-10 python archive URL, archive file or extracted folder "
        "(default: $NAS_BOHB_DATA, else the official URL)",
    )
    p.add_argument(
        "--data-md5",
        help="expected MD5 of the archive (default for URLs: the official archive's)",
    )
    p.add_argument(
        "--cache-dir",
        default=str(data_mod.default_cache_dir()),
        help="where extracted data is cached (default: $NAS_BOHB_CACHE, else ~/.cache/nas-bohb)",
    )
    p.add_argument("--output", type=Path, help="where to write the record (required)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="PyTorch CPU threads (default: PyTorch's); use 1 when trainers share the CPU",
    )
    p.add_argument("--report", metavar="KIND", help="also report progress via trainer.report")
    p.add_argument(
        "--eval-every-epoch",
        action="store_true",
        help="measure validation error after every epoch (off the budget, costs wall time)",
    )
    p.add_argument(
        "--sgdr-min-period",
        type=_positive_float,
        default=schedule.PAPER_MIN_PERIOD,
        help="shortest first SGDR period in seconds (default 400, the paper's table)",
    )
    p.add_argument(
        "--prepare-data",
        action="store_true",
        help="only fetch, verify and cache the dataset, then exit (0 ready, 2 bad data, "
        "1 unreachable); needs no --config, --budget or --output",
    )
    return p


def _prepare_data(args: argparse.Namespace) -> int:
    """Fetch, check and cache CIFAR-10 once, so a search can refuse bad data before trials."""
    try:
        data_mod.load_cifar10(args.data, md5=args.data_md5, cache_dir=args.cache_dir)
    except data_mod.DataUnavailable as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        return EXIT_CRASH
    except data_mod.DataError as exc:
        return _invalid(str(exc))
    return EXIT_OK


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _read_config(text: str) -> Any:
    """Inline JSON when ``text`` starts with ``{``, else the path of a JSON file."""
    where = "inline JSON"
    try:
        if not text.lstrip().startswith("{"):
            where = text
            text = Path(text).read_text()
        return json.loads(text)
    except OSError as exc:
        raise params.ConfigError("--config", f"cannot read {where}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise params.ConfigError("--config", f"{where} is not valid JSON: {exc}") from exc


def _check_output(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise params.ConfigError("--output", f"cannot create {path.parent}: {exc}") from exc
    if path.is_dir():
        raise params.ConfigError("--output", f"{path} is a directory")


def _make_reporter(kind: str) -> Any:
    # import_module (not ``from trainer import report``) goes through sys.modules, so the
    # module can be swapped or hidden, and is imported only when a reporter is asked for.
    try:
        report = importlib.import_module("trainer.report")
    except ImportError as exc:
        raise RuntimeError(f"the reporting module trainer.report is not available ({exc})") from exc
    return report.make_reporter(kind)


def _call_safely(method: Any, payload: Any) -> None:
    try:
        method(payload)
    except Exception:
        logger.warning("Reporter call %s failed; training goes on.", method, exc_info=True)


def _invalid(message: str) -> int:
    print(f"trainer: error: {message}", file=sys.stderr)
    return EXIT_INVALID


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as strict JSON (no NaN) to a temporary file, then rename it over."""
    target = Path(path)
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    # Same folder, so the rename is atomic: readers never see a half-written record.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ProgressPrinter:
    """One fixed-width line per epoch, under a header printed once."""

    HEADER = "   epoch  train_s  budget_s  train_loss        lr  val_error   wall_s"

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self._header_done = False

    def __call__(self, point: dict[str, Any]) -> None:
        if not self._header_done:
            print(self.HEADER, file=self.stream)
            self._header_done = True
        print(self.format(point, time.perf_counter() - self.started), file=self.stream, flush=True)

    @staticmethod
    def format(point: dict[str, Any], wall: float) -> str:
        loss, val = point.get("train_loss"), point.get("validation_error")
        loss_s = f"{loss:11.4f}" if isinstance(loss, float) else f"{'-':>11}"
        val_s = f"{val:10.4f}" if isinstance(val, float) else f"{'-':>10}"
        return (
            f"{point['epoch']:8.2f} {point['train_seconds']:8.1f} {point['budget_seconds']:9.1f} "
            f"{loss_s} {point['lr']:9.5f} {val_s} {wall:8.1f}"
        )
