"""BOHB's model in a child process, so its CPU time never holds the controller's GIL.

A model-based proposal is tens to hundreds of milliseconds of Python and numpy work
inside hpbandster. In a thread of the controller it competes for the interpreter lock
with the dispatch path: measured on a loaded two-core machine, ``record_result`` then
took about 100 ms on average instead of about 1 ms. Here the model lives in a child
process (``python -m controller.engine.model_server``) that speaks JSON lines on its
stdin/stdout; :class:`ModelProcess` is the parent's handle, with the same interface as
:class:`controller.engine.model.BohbModel`. The sampler thread talks to it and is
blocked on a pipe (lock released) while the child computes.

The parent keeps every observation it sent; if the child dies, a new one is started and
fed the same history, so a crash of the model costs a refit, never a result.

Protocol, one JSON object per line: ``{"op": "init", "spec": <normalised spec>, "seed": n}``,
``{"op": "observe", "values": {...}, "budget": b, "loss": l}`` (``loss`` null for +inf),
``{"op": "reseed", "seed": n}``, and ``{"op": "propose"}``, the only one answered:
``{"values": {...}, "model_based": bool, "model_budgets": [...]}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from controller.space import Value

logger = logging.getLogger(__name__)

_RESTARTS = 3


class ModelProcess:
    """The parent's handle on a model server; methods are called from one thread."""

    def __init__(self, spec_dict: Mapping[str, Any], seed: int) -> None:
        self._spec = dict(spec_dict)
        self._seed = seed
        self._history: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._budgets: list[float] = []
        self.observations = 0
        self._restarts = 0
        self._process: subprocess.Popen[str] | None = None
        self._start()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "controller.engine.model_server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            # Its own session: a Ctrl-C at the terminal is the controller's to handle.
            start_new_session=True,
        )
        self._send({"op": "init", "spec": self._spec, "seed": self._seed})
        for message in self._history:
            self._send(message)

    def _send(self, message: Mapping[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(message, allow_nan=False) + "\n")
        self._process.stdin.flush()

    def _restart(self, exc: BaseException) -> None:
        self._restarts += 1
        if self._restarts > _RESTARTS:
            raise RuntimeError(f"the BOHB model process failed {self._restarts} times") from exc
        logger.error("The BOHB model process failed (%s); restarting it with %d results.",
                     exc, len(self._history))
        self.close()
        self._start()

    @property
    def model_budgets(self) -> list[float]:
        """Budgets with a fitted KDE, as of the last proposal (cached, no round trip)."""
        return list(self._budgets)

    def observe(self, values: Mapping[str, Value], budget: float, loss: float) -> None:
        message = {"op": "observe", "values": dict(values), "budget": float(budget),
                   "loss": float(loss) if math.isfinite(loss) else None}
        with self._lock:
            self._history.append(message)
            self.observations += 1
            try:
                self._send(message)
            except (OSError, ValueError) as exc:
                self._restart(exc)

    def reseed(self, seed: int) -> None:
        message = {"op": "reseed", "seed": seed}
        with self._lock:
            self._history.append(message)
            try:
                self._send(message)
            except (OSError, ValueError) as exc:
                self._restart(exc)

    def propose(self) -> Any:
        from controller.engine.model import Proposal

        with self._lock:
            while True:
                try:
                    self._send({"op": "propose"})
                    assert self._process is not None and self._process.stdout is not None
                    line = self._process.stdout.readline()
                    if not line:
                        raise EOFError("the model process exited")
                    reply = json.loads(line)
                    break
                except (OSError, ValueError, EOFError) as exc:
                    self._restart(exc)
            self._budgets = [float(b) for b in reply["model_budgets"]]
            return Proposal(values=reply["values"], model_based=bool(reply["model_based"]))

    def close(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    """The child's loop: build the model on ``init``, then answer until stdin closes."""
    from controller import space as space_mod
    from controller import spec as spec_mod
    from controller.engine.model import BohbModel

    model: BohbModel | None = None
    for line in stdin:
        message = json.loads(line)
        op = message["op"]
        if op == "init":
            spec = spec_mod.load_spec(message["spec"])
            model = BohbModel(space_mod.build(spec.search_space, seed=message["seed"]),
                              spec.bohb, message["seed"])
            continue
        if model is None:
            raise RuntimeError(f"model server: {op!r} before init")
        if op == "observe":
            loss = message["loss"]
            model.observe(message["values"], message["budget"],
                          math.inf if loss is None else loss)
        elif op == "reseed":
            model.reseed(message["seed"])
        elif op == "propose":
            proposal = model.propose()
            stdout.write(json.dumps({"values": proposal.values,
                                     "model_based": proposal.model_based,
                                     "model_budgets": model.model_budgets},
                                    allow_nan=False) + "\n")
            stdout.flush()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="model server: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hpbandster").setLevel(logging.ERROR)
    # The controller went away (closed pipe, or a stray Ctrl-C): so do we, quietly.
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin, sys.stdout)
