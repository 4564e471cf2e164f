"""``nas-bohb``: run a search on this machine, look at one, analyse one.

``nas-bohb search SPEC.yaml --out DIR`` validates the spec, plans the brackets, then runs
the search with the local executor and a live progress view; running the same command
again continues an interrupted search from its ledger. ``nas-bohb status DIR`` reads a
run directory (while it runs or after) and ``--json`` gives the same for scripts.
``nas-bohb analyze`` is provided by :mod:`controller.analysis.cli`, imported only when
used (it needs the ``analysis`` extra).

Exit codes: 0 the search succeeded (or the status was shown), 1 it failed, 2 invalid
input (spec, data, run directory), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from controller import __version__
from controller import spec as spec_mod

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_INVALID
    result: int = args.func(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas-bohb",
        description="Joint neural architecture and hyperparameter search with BOHB.",
    )
    parser.add_argument("--version", action="version", version=f"nas-bohb {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    search = sub.add_parser("search", help="run (or continue) a search on this machine",
                            description="Run a BOHB search with local trainer processes. "
                            "Running the same command again continues it.")
    search.add_argument("spec", metavar="SPEC.yaml", help="a JointSearch document or bare spec")
    search.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="run directory (ledger, trials, result files)")
    search.add_argument("--data", help="CIFAR-10 archive, folder or URL (overrides "
                        "spec.dataset)")
    search.add_argument("--data-md5", help="expected MD5 of the --data archive")
    search.add_argument("--cache-dir", help="where trainers cache the extracted dataset")
    search.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    search.set_defaults(func=_search)

    status = sub.add_parser("status", help="show the state of a run directory",
                            description="Show a search's progress, running or finished.")
    status.add_argument("dir", type=Path, metavar="DIR")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    try:
        from controller.analysis import cli as analysis_cli
    except ImportError as exc:
        reason = str(exc)
        analyze = sub.add_parser("analyze", help="analyse a search (needs the analysis extra)")
        analyze.add_argument("rest", nargs=argparse.REMAINDER)
        analyze.set_defaults(func=lambda _args: _analysis_missing(reason))
    else:
        analysis_cli.add_parser(sub)
    return parser


def _analysis_missing(reason: str) -> int:
    print("nas-bohb analyze: error: the analysis module cannot be imported "
          f"({reason}); install the extra with: pip install 'nas-bohb[analysis]'",
          file=sys.stderr)
    return EXIT_INVALID


# --- search ----------------------------------------------------------------------------


def _data_source(args: argparse.Namespace, spec: spec_mod.SearchSpec) -> Any:
    """Where trainers get CIFAR-10: --data, else the spec's path (if present), else its url."""
    from controller.local.runner import DataSource

    data, md5 = args.data, args.data_md5
    field = "--data"
    if data is None:
        ds = spec.dataset
        if ds.path and (Path(ds.path).exists() or not ds.url):
            data, field = ds.path, "spec.dataset.path"
        elif ds.url:
            data, field = ds.url, "spec.dataset.url"
        md5 = md5 or ds.md5
    if data is not None and "://" not in data:
        local = Path(data).expanduser()
        if not local.exists():
            raise spec_mod.SpecError(field, f"no such file or folder: {data}")
        data = str(local.resolve())
    return DataSource(data=data, md5=md5, cache_dir=args.cache_dir)


def _setup_logging(view: Any, run_dir: Path, verbose: bool) -> None:
    from controller.local.view import ViewHandler

    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = ViewHandler(view)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    run_dir.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(run_dir / "search.log", encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_file)
    for noisy in ("hpbandster",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _plan_lines(spec: spec_mod.SearchSpec) -> list[str]:
    from controller.engine import schedule

    b = spec.budgets
    budgets = schedule.budgets(b.min, b.max, b.eta)
    lines = [f"Budgets: {', '.join(f'{x:g}' for x in budgets)} s (eta {b.eta})."]
    count = len(budgets)
    for it in range(min(count, spec.max_iterations or count)):
        br = schedule.bracket(it, b.min, b.max, b.eta)
        rungs = ", ".join(f"{n} x {x:g} s" for n, x in zip(br.num_configs, br.budgets,
                                                           strict=True))
        lines.append(f"Bracket {br.s}: {rungs} ({br.total_budget:,.0f} budget seconds).")
    if spec.max_iterations is not None:
        total = sum(x.total_budget for x in schedule.plan(b.min, b.max, b.eta,
                                                          spec.max_iterations))
        lines.append(f"{spec.max_iterations} iterations: {total:,.0f} budget seconds in all, "
                     f"{spec.parallel_trial_count} trials at a time.")
    return lines


def _prepare_data(spec: spec_mod.SearchSpec, data: Any) -> str | None:
    """Fetch, verify and cache CIFAR-10 once, before any trial; the reason if that fails.

    A wrong checksum or an unreachable URL is a problem of the search, not of a
    configuration: without this check every trial would fail alike and count against the
    model. Runs only with the built-in trainer (a custom ``trainer.command`` may not know
    ``--prepare-data``). Nothing in the run directory is touched.
    """
    if spec.trainer.command:
        return None
    command = [sys.executable, "-m", "trainer", "--prepare-data"]
    if data.data:
        command += ["--data", data.data]
    if data.md5:
        command += ["--data-md5", data.md5]
    if data.cache_dir:
        command += ["--cache-dir", data.cache_dir]
    logger.info("Checking the dataset once before any trial starts.")
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    if done.returncode == 0:
        return None
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("trainer: error:")]
    reason = lines[-1].removeprefix("trainer: error: ") if lines else done.stderr.strip()[-500:]
    return f"the dataset is not usable: {reason}"


def _check_run_dir(spec: spec_mod.SearchSpec, run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot take this search now, or ``None``; changes nothing.

    The executor checks the same again under its lock; this only makes the answer quick.
    """
    from controller.engine import Engine, LedgerError, MemoryLedger
    from controller.local.executor import LEDGER_FILE, holder

    pid = holder(run_dir)
    if pid is not None:
        return f"{run_dir} is in use by another nas-bohb process (pid {pid})"
    ledger_path = run_dir / LEDGER_FILE
    if not ledger_path.exists():
        return None
    try:
        Engine(spec, MemoryLedger(_read_events(ledger_path)), prefetch=False,
               model=False).close()
    except LedgerError as exc:
        return f"{ledger_path}: {exc}"
    return None


def _search(args: argparse.Namespace) -> int:
    from controller.local import devices
    from controller.local.executor import LocalExecutor, RunDirectoryBusy, read_baselines
    from controller.local.runner import SubprocessRunner
    from controller.local.view import LiveView, summary_lines

    try:
        spec = spec_mod.load_file(args.spec)
        data = _data_source(args, spec)
        slots = devices.plan_slots(spec.parallel_trial_count, spec.trainer)
    except spec_mod.SpecError as exc:
        print(f"nas-bohb search: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"nas-bohb search: error: cannot read {args.spec}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_INVALID

    run_dir: Path = args.out
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"nas-bohb search: error: --out: cannot use {run_dir} as the run directory: "
              f"{exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    name = spec.name or Path(args.spec).stem
    view = LiveView(sys.stderr, name)
    _setup_logging(view, run_dir, args.verbose)
    for line in _plan_lines(spec):
        logger.info(line)
    logger.info("Trials run on %s; data from %s.",
                ", ".join(s.describe() for s in slots), data.data or "the trainer's default")

    # Refusals that need no dataset come first: a busy or mismatched run directory is
    # reported at once, not after the dataset check.
    problem = _check_run_dir(spec, run_dir) or _prepare_data(spec, data)
    if problem is not None:
        view.close()
        print(f"nas-bohb search: error: {problem}", file=sys.stderr)
        return EXIT_INVALID

    executor = LocalExecutor(
        spec, run_dir, slots,
        lambda notify: SubprocessRunner(spec, run_dir, data, notify),
        on_progress=view.update,
    )
    interrupted: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name_ = signal.Signals(signum).name
        if interrupted:
            raise KeyboardInterrupt  # A second signal: leave now, trainers keep running.
        interrupted.append(name_)
        executor.stop(f"the controller received {name_}")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        engine = executor.run()
    except RunDirectoryBusy as exc:
        view.close()
        print(f"nas-bohb search: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:
        view.close()
        from controller.engine import LedgerError

        if isinstance(exc, LedgerError):
            print(f"nas-bohb search: error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    view.close()

    progress = engine.progress()
    print("\n".join(summary_lines(name, progress, read_baselines(run_dir), str(run_dir))))
    if interrupted:
        print(f"Interrupted by {interrupted[0]}; run the same command again to continue.")
        return EXIT_INTERRUPTED
    return EXIT_FAILED if progress.condition.type == "Failed" else EXIT_OK


# --- status ----------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from controller.engine import Engine, LedgerError, MemoryLedger
    from controller.local.executor import LEDGER_FILE, holder, read_baselines
    from controller.local.view import bracket_lines, headline, summary_lines

    ledger_path = args.dir / LEDGER_FILE
    if not ledger_path.exists():
        print(f"nas-bohb status: error: {args.dir} holds no search ({LEDGER_FILE} is missing)",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        events = _read_events(ledger_path)
        spec = spec_mod.load_spec(events[0]["spec"])
        engine = Engine(spec, MemoryLedger(events), model=False)
    except (LedgerError, spec_mod.SpecError, KeyError, IndexError) as exc:
        print(f"nas-bohb status: error: cannot read {ledger_path}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    progress = engine.progress()
    pid = holder(args.dir)
    name = events[0].get("name") or args.dir.name
    if args.json:
        payload = progress.to_dict()
        payload["controller_pid"] = pid
        payload["run_dir"] = str(args.dir)
        payload["name"] = name
        payload["baselines"] = read_baselines(args.dir)
        print(json.dumps(payload, indent=1, allow_nan=False))
        return EXIT_OK
    if pid is not None:
        print(f"A controller (pid {pid}) is running this search.")
    elif progress.condition.type == "Running":
        print("No controller is running this search; run `nas-bohb search` with the same "
              "spec and --out to continue it.")
    print(headline(name, progress))
    for line in bracket_lines(progress):
        print("  " + line)
    if progress.running:
        print("  running: " + ", ".join(progress.running))
    print("\n".join(summary_lines(name, progress, read_baselines(args.dir), str(args.dir))))
    return EXIT_OK


def _read_events(path: Path) -> list[dict[str, Any]]:
    """The ledger's events, read without repairing a torn tail (another process may write)."""
    from controller.engine import LedgerError

    events = []
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines[:-1], start=1):
        if raw.strip():
            try:
                events.append(json.loads(raw))
            except ValueError as exc:
                raise LedgerError(f"line {number} is not JSON ({exc})") from exc
    return events


if __name__ == "__main__":
    sys.exit(main())
