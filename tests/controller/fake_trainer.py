"""A stand-in for ``python -m trainer`` with the same command line and exit codes.

It sleeps ``budget x FAKE_TRAINER_SCALE`` seconds (default 0.01) and writes a record whose
validation error is a smooth function of the configuration and budget, so searches run in
seconds. Behaviour knobs (environment variables, for tests):

- ``FAKE_TRAINER_CRASH_IF``: a Python expression over ``config`` and ``budget``; when true
  the trainer exits 1 without a record (a crashed run).
- ``FAKE_TRAINER_DIVERGE_IF``: likewise, but writes a record with status ``diverged``.
- ``FAKE_TRAINER_LOG``: append one line ``<output path>`` per start to this file, so tests
  can count how often each trial ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--budget", type=float, required=True)
    p.add_argument("--data")
    p.add_argument("--data-md5")
    p.add_argument("--cache-dir")
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    with open(args.config) as handle:
        config = json.load(handle)
    if len(config) != 17 or any(type(v) not in (int, float) for v in config.values()):
        print(f"trainer: error: bad configuration {config}", file=sys.stderr)
        return 2
    log = os.environ.get("FAKE_TRAINER_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"{args.output}\n")
    scope = {"config": config, "budget": args.budget, "math": math}
    time.sleep(args.budget * float(os.environ.get("FAKE_TRAINER_SCALE", "0.01")))
    crash = os.environ.get("FAKE_TRAINER_CRASH_IF")
    if crash and eval(crash, scope):
        print("fake trainer: crashing on purpose", file=sys.stderr)
        return 1
    diverge = os.environ.get("FAKE_TRAINER_DIVERGE_IF")
    lr = float(config["learning_rate"])
    error = min(1.0, abs(math.log10(lr) + 1.0) / 3 + 2.0 / (args.budget + 2.0) * 0.5)
    status = "diverged" if diverge and eval(diverge, scope) else "ok"
    record = {
        "status": status,
        "validation_error": error if status == "ok" else None,
        "test_error": error + 0.01 if status == "ok" else None,
        "budget_seconds": args.budget,
        "train_seconds": args.budget,
        "wall_seconds": args.budget,
        "seed": args.seed,
        "config": config,
        "message": None if status == "ok" else "loss became NaN",
    }
    tmp = args.output + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(record, handle)
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
