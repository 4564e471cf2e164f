"""BOHB's model in a child process, so its CPU time never holds the controller's GIL.

A model-based proposal is tens to hundreds of milliseconds of Python and numpy work
inside hpbandster. In a thread of the controller it competes for the interpreter lock
with the dispatch path: measured on a loaded two-core machine, ``record_result`` then
took about 100 ms on average instead of about 1 ms. Here the models live in a child
process (``python -m controller.engine.model_server``) that speaks JSON lines on its
stdin/stdout. :class:`ModelProcess` is one search's handle, with the same interface as
:class:`controller.engine.model.BohbModel`; the sampler thread talks to it and is blocked
on a pipe (lock released) while the child computes.

One child serves every search of a controller (:class:`ModelHost`, shared by default):
its libraries (numpy, scipy, ConfigSpace, statsmodels' KDE) cost about 100 MB, a model's
own state a few hundred kB, so an operator with ten searches needs one child, not ten.
Each model keeps its own random streams, so a search proposes the same configurations
whether or not it shares the child. Requests of different searches are served one at a
time; each search's sampler works ahead, so a dispatch never waits for them. The child
starts with the first handle and stops when the last one is closed.

Every handle keeps the observations it sent; if the child dies, a new one is started and
each model is rebuilt from its history before its next request, so a crash of the child
costs a refit, never a result.

Protocol, one JSON object per line, every request naming its ``"model"`` (a key unique in
the child): ``{"op": "init", "spec": <normalised spec>, "seed": n}``, ``{"op": "observe",
"values": {...}, "budget": b, "loss": l}`` (``loss`` null for +inf), ``{"op": "reseed",
"seed": n}``, ``{"op": "drop"}`` and ``{"op": "propose"}``, the only one answered:
``{"model": k, "values": {...}, "model_based": bool, "model_budgets": [...]}``, or
``{"model": k, "error": "..."}`` when that model cannot propose (a failed ``init``, say);
one model's failure never takes the others down.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from controller.engine.types import Proposal
from controller.space import Value

logger = logging.getLogger(__name__)

#: Consecutive failures of the child (without a successful request in between) tolerated.
_RESTARTS = 3

#: The KDE works on a few hundred points: one BLAS thread is plenty, and a many-core node's
#: default (one thread per core, each with its own buffers) only costs memory.
_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ModelServerError(RuntimeError):
    """The child answered a model's request with an error (the child itself is fine)."""


class ModelHost:
    """One model server child process, shared by the handles that use it.

    All pipe traffic happens under :attr:`lock`; ``generation`` grows with every new child,
    so a handle knows when its model must be rebuilt there.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.generation = 0
        self._process: subprocess.Popen[str] | None = None
        self._users = 0
        self._failures = 0
        self._keys = itertools.count(1)

    # --- handles come and go -----------------------------------------------------------

    def attach(self) -> str:
        """Register a new handle; returns its model key."""
        with self.lock:
            self._users += 1
            return f"m{next(self._keys)}"

    def detach(self, key: str) -> None:
        """A handle is done: drop its model; the last one out stops the child."""
        with self.lock:
            self._users = max(0, self._users - 1)
            if self._process is not None and self._users > 0:
                with contextlib.suppress(OSError, ValueError):
                    self.send({"op": "drop", "model": key})
            if self._users == 0:
                self._stop()

    @property
    def pid(self) -> int | None:
        """The child's pid, or ``None`` while none runs."""
        return None if self._process is None else self._process.pid

    # --- pipe traffic (callers hold the lock) --------------------------------------------

    def ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            logger.error("The BOHB model process ended (exit status %s); starting a new one.",
                         self._process.returncode)
            self._stop()
        if self._process is None:
            self._start()

    def send(self, message: Mapping[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(message, allow_nan=False) + "\n")
        self._process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise EOFError("the model process exited")
        reply: dict[str, Any] = json.loads(line)
        self._failures = 0
        return reply

    def failed(self, exc: BaseException, replay: int) -> None:
        """The child broke mid-request: start a new one (the handles rebuild their models)."""
        self._failures += 1
        if self._failures > _RESTARTS:
            raise RuntimeError(
                f"the BOHB model process failed {self._failures} times in a row") from exc
        logger.error("The BOHB model process failed (%s); restarting it, %d results to "
                     "replay.", exc, replay)
        self._stop()
        self._start()

    def _start(self) -> None:
        env = {**_CHILD_ENV, **os.environ}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "controller.engine.model_server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env,
            # Its own session: a Ctrl-C at the terminal is the controller's to handle.
            start_new_session=True,
        )
        self.generation += 1

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            if process.stdout is not None:
                process.stdout.close()


_shared_host: ModelHost | None = None
_shared_lock = threading.Lock()


def shared_host() -> ModelHost:
    """The controller-wide host that every :class:`ModelProcess` uses by default."""
    global _shared_host
    with _shared_lock:
        if _shared_host is None:
            _shared_host = ModelHost()
        return _shared_host


class ModelProcess:
    """One search's model, kept in a (shared) model server child; one thread calls it."""

    def __init__(self, spec_dict: Mapping[str, Any], seed: int,
                 host: ModelHost | None = None) -> None:
        self._host = host if host is not None else shared_host()
        self._init = {"op": "init", "spec": dict(spec_dict), "seed": seed}
        self._history: list[dict[str, Any]] = []
        self._budgets: list[float] = []
        self._generation = -1  # The child generation that holds this model (none yet).
        self.observations = 0
        self._closed = False
        self._key = self._host.attach()
        self._call(None)  # Start the child (or use the running one) and build the model.

    @property
    def model_budgets(self) -> list[float]:
        """Budgets with a fitted KDE, as of the last proposal (cached, no round trip)."""
        return list(self._budgets)

    def observe(self, values: Mapping[str, Value], budget: float, loss: float) -> None:
        message = {"op": "observe", "values": dict(values), "budget": float(budget),
                   "loss": float(loss) if math.isfinite(loss) else None}
        self._history.append(message)
        self.observations += 1
        self._call(message, sent_with_replay=True)

    def reseed(self, seed: int) -> None:
        message = {"op": "reseed", "seed": seed}
        self._history.append(message)
        self._call(message, sent_with_replay=True)

    def propose(self) -> Proposal:
        reply = self._call({"op": "propose"}, answered=True)
        assert reply is not None
        if "error" in reply:
            raise ModelServerError(f"the BOHB model cannot propose: {reply['error']}")
        self._budgets = [float(b) for b in reply["model_budgets"]]
        return Proposal(values=reply["values"], model_based=bool(reply["model_based"]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._host.detach(self._key)

    def _call(self, message: Mapping[str, Any] | None, *, answered: bool = False,
              sent_with_replay: bool = False) -> dict[str, Any] | None:
        """Send ``message`` (after rebuilding the model in a new child if needed).

        ``sent_with_replay``: the message is already in the history, so a rebuild sends it.
        """
        host = self._host
        with host.lock:
            while True:
                try:
                    host.ensure_started()
                    if self._generation != host.generation:
                        self._generation = host.generation
                        for item in (self._init, *self._history):
                            host.send({**item, "model": self._key})
                        if sent_with_replay:
                            return None
                    if message is not None:
                        host.send({**message, "model": self._key})
                    if not answered:
                        return None
                    reply = host.receive()
                    if reply.get("model") != self._key:
                        raise ValueError(f"an answer for model {reply.get('model')!r} "
                                         f"arrived for {self._key!r}")
                    return reply
                except (OSError, ValueError, EOFError) as exc:
                    host.failed(exc, len(self._history))


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    """The child's loop: one model per key, answering until stdin closes."""
    from controller import space as space_mod
    from controller import spec as spec_mod
    from controller.engine.model import BohbModel

    models: dict[str, BohbModel] = {}
    broken: dict[str, str] = {}  # key -> why that model cannot work
    for line in stdin:
        message = json.loads(line)
        key, op = str(message.get("model")), message["op"]
        try:
            if op == "init":
                broken.pop(key, None)
                spec = spec_mod.load_spec(message["spec"])
                models[key] = BohbModel(space_mod.build(spec.search_space, seed=message["seed"]),
                                        spec.bohb, message["seed"])
            elif op == "drop":
                models.pop(key, None)
                broken.pop(key, None)
            elif key in broken:
                pass  # Its failure is told on its next proposal.
            elif key not in models:
                raise RuntimeError(f"{op!r} before init")
            elif op == "observe":
                loss = message["loss"]
                models[key].observe(message["values"], message["budget"],
                                    math.inf if loss is None else loss)
            elif op == "reseed":
                models[key].reseed(message["seed"])
        except Exception as exc:  # One model's trouble must not end the others.
            models.pop(key, None)
            broken[key] = f"{type(exc).__name__}: {exc}"
            logger.error("Model %s: %s failed: %s", key, op, broken[key])
        if op != "propose":
            continue
        reply: dict[str, Any]
        if key in broken:
            reply = {"model": key, "error": broken[key]}
        else:
            try:
                proposal = models[key].propose()
                reply = {"model": key, "values": proposal.values,
                         "model_based": proposal.model_based,
                         "model_budgets": models[key].model_budgets}
            except Exception as exc:
                reply = {"model": key, "error": f"{type(exc).__name__}: {exc}"}
        stdout.write(json.dumps(reply, allow_nan=False) + "\n")
        stdout.flush()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="model server: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hpbandster").setLevel(logging.ERROR)
    # The controller went away (closed pipe, or a stray Ctrl-C): so do we, quietly.
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin, sys.stdout)
