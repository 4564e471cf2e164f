"""A stand-in trainer for the operator's fault tests: real reporting, no training.

It takes the trainer's command line (``docs/architecture.md``), sleeps instead of
training, and reports through the real :mod:`trainer.report` into the real API server,
so everything the operator sees is what a trainer pod would write. What it does per
trial comes from ``FAKE_TRAINER_PLAN`` (JSON ``{trial id: mode}``; ``"*"`` is the
default mode):

``ok``       report progress, then a result whose validation error follows the config
``exit1``    crash: exit code 1 with nothing reported
``exit2``    refuse the configuration: exit code 2
``nan``      report a result whose validation error is NaN (the reporter sends null)
``silent``   exit 0 without reporting anything
``hang``     sleep until the Job's deadline kills the pod
``badtype``  write a result whose validation error is a string (bypassing the reporter's
             checks), then exit 0
``slow``     ``ok`` after ``FAKE_TRAINER_SLOW_SECONDS`` (default 8): time to delete its Job
``unreachable``
             ``ok``, but the reporter is pointed at a closed port of the API server's host
             with a 2 s deadline: the result can leave only through the termination
             message the reporter writes (``NAS_BOHB_TERMINATION_LOG``)
``unreachable_crash``
             as ``unreachable``, then exit code 3 (the Job fails)
``wrongid``  write a well-formed termination message for another trial, report nothing,
             exit 0
``garbage``  write garbage into the termination message, report nothing, exit 0
``killed``   attempt 1 is killed by SIGKILL (as a node or runtime would kill it); later
             attempts run as ``ok``

Every start appends ``<trial id> <attempt> <pid>`` to ``FAKE_TRAINER_LOG``, which is how
the tests check that no trial ran twice. ``FAKE_TRAINER_SECONDS`` (default 1) is the
simulated training time; the budget is ignored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time

from trainer import report


def _validation_error(config: dict[str, float], budget: float) -> float:
    """A deterministic, config-dependent error in (0, 1) that improves with the budget."""
    lr = float(config.get("learning_rate", 0.1))
    distance = abs(math.log10(lr) + 1.0)  # Best at learning rate 0.1.
    return round(min(0.95, 0.1 + 0.2 * distance + 0.3 / math.sqrt(budget)), 5)


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--config", "--budget", "--data", "--data-md5", "--cache-dir", "--output",
                 "--seed", "--device", "--threads", "--report"):
        parser.add_argument(flag)
    args, _ = parser.parse_known_args()
    trial_id = os.environ["NAS_BOHB_TRIAL_ID"]
    attempt = int(os.environ.get("NAS_BOHB_TRIAL_ATTEMPT", "1"))
    plan = json.loads(os.environ.get("FAKE_TRAINER_PLAN", "{}"))
    mode = plan.get(trial_id, plan.get("*", "ok"))
    if mode == "slow":
        mode = "ok"
        os.environ["FAKE_TRAINER_SECONDS"] = os.environ.get("FAKE_TRAINER_SLOW_SECONDS", "8")
    log = os.environ.get("FAKE_TRAINER_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{trial_id} {attempt} {os.getpid()}\n")
    seconds = float(os.environ.get("FAKE_TRAINER_SECONDS", "1"))
    config = json.loads(args.config)
    budget = float(args.budget)

    if mode == "killed":
        if attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        mode = "ok"
    if mode == "exit1":
        print("fake trainer: crashing on purpose", file=sys.stderr)
        return 1
    if mode == "exit2":
        print("parameter 'learning_rate': refused on purpose", file=sys.stderr)
        return 2
    if mode == "hang":
        time.sleep(3600)
        return 0
    if mode.startswith("unreachable"):
        # Nothing listens on port 1: every status write is refused until the deadline.
        os.environ["KUBERNETES_SERVICE_PORT"] = "1"
        os.environ["NAS_BOHB_REPORT_DEADLINE"] = "2"
    reporter = report.make_reporter(args.report)
    if mode == "silent":
        time.sleep(seconds)
        return 0
    if mode in ("wrongid", "garbage"):
        time.sleep(seconds)
        message = report.termination_message("9-9-9-b9", {
            "status": "ok", "validation_error": 0.01, "attempt": attempt})
        data = message if mode == "wrongid" and message else b"{not json at all"
        report.write_termination_message(os.environ["NAS_BOHB_TERMINATION_LOG"], data)
        return 0
    reporter.on_progress({"epoch": 1, "train_seconds": budget / 2, "budget_seconds": budget,
                          "train_loss": 1.5, "lr": 0.1, "validation_error": None})
    time.sleep(seconds)
    error = _validation_error(config, budget)
    record = {
        "status": "ok", "validation_error": error, "test_error": error + 0.01,
        "validation_loss": 1.0, "train_loss": 0.9, "budget_seconds": budget,
        "train_seconds": budget, "wall_seconds": seconds, "epochs": 1.0, "steps": 10,
        "n_params": 1000, "learning_curve": [], "device": "cpu", "seed": int(args.seed or 0),
        "config": config, "message": "",
    }
    if mode == "nan":
        record["validation_error"] = float("nan")
        record["test_error"] = float("inf")
    if mode == "badtype" and isinstance(reporter, report.KubeReporter):
        body = json.dumps({"status": {"trials": {trial_id: {"result": {
            "status": "ok", "validation_error": "0.1", "attempt": attempt}}}}}).encode()
        reporter._http_patch(body)
        return 0
    reporter.on_result(record)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(report.json_safe(record), handle)
    return 3 if mode == "unreachable_crash" else 0


if __name__ == "__main__":
    sys.exit(main())
