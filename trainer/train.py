"""One trial: train one configuration for a budget of training seconds, return its record.

This is the paper's training pipeline (Zela et al. 2018, section "Training pipeline" of the
project's method notes): SGD with Nesterov momentum, SGDR on a clock of measured training
seconds that ends at a cycle's end, crop/flip/cutout/mixup, the 45k/5k split, and validation
error at the end as the objective. Only training steps count against the budget; loading data,
building the network, warm-up steps and evaluation are paused on the clock. Training stops at
the step boundary nearest to the budget, mid-epoch if need be.

A trial never ends in a traceback for reasons that belong to the configuration: a NaN or
infinite loss ends it early as ``diverged``, a network too large for the device as
``out_of_memory`` (refused up front when even its parameters and a rough activation estimate
exceed the free memory), and any other PyTorch runtime failure as ``error``. The record never
holds NaN or infinity, so it is valid JSON.

On CUDA the trainer uses bf16 autocast, channels-last tensors and cuDNN autotuning (fast, not
bitwise reproducible); on the CPU it trains in float32 and the same seed gives the same
arithmetic, though a time budget still stops at a machine-dependent step (see
:class:`trainer.schedule.StepClock` for step-exact reproduction).

.. note::
   Validation error is measured once, at the end, by default; the learning curve's per-epoch
   ``validation_error`` is ``null`` except for the last point, unless ``eval_every_epoch`` is
   set (evaluation is off the budget's clock but costs wall time). ``train_loss`` is the
   mixup-weighted cross-entropy of the last epoch (or of the final partial epoch).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Literal, TypedDict

import torch
import torch.nn.functional as F

import trainer
from trainer import augment, model, params, schedule
from trainer import data as data_mod

logger = logging.getLogger(__name__)

Status = Literal["ok", "diverged", "out_of_memory", "error"]
Progress = Callable[[dict[str, Any]], None]

# Steps run before the clock starts (kernel selection, allocator growth), then undone.
WARMUP_STEPS = {"cpu": 1, "cuda": 5}
# Host-device synchronisations cost GPU time; the finite-loss check runs this often there.
CHECK_EVERY = {"cpu": 1, "cuda": 25}
EVAL_BATCH = 500


class CurvePoint(TypedDict):
    epoch: float
    train_seconds: float
    lr: float
    train_loss: float | None
    validation_error: float | None


class ResultRecord(TypedDict):
    status: Status
    validation_error: float | None
    test_error: float | None
    validation_loss: float | None
    train_loss: float | None
    budget_seconds: float
    train_seconds: float
    wall_seconds: float
    epochs: float
    steps: int
    n_params: int
    learning_curve: list[CurvePoint]
    device: str
    torch_version: str
    trainer_version: str
    seed: int
    config: dict[str, int | float]
    message: str | None


class _Diverged(Exception):
    """The loss became NaN or infinite."""


def train(
    config: Mapping[str, object],
    budget: float,
    data: str | os.PathLike[str] | data_mod.Cifar10 | None = None,
    *,
    data_md5: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    eval_every_epoch: bool = False,
    sgdr_min_period: float = schedule.PAPER_MIN_PERIOD,
    progress: Progress | None = None,
    clock: schedule.Clock | None = None,
) -> ResultRecord:
    """Train ``config`` for ``budget`` training seconds on CIFAR-10 and return the record.

    Args:
        config: all 17 parameters of :mod:`trainer.params`.
        budget: training seconds (compute only), > 0.
        data: a URL, archive or folder for :func:`trainer.data.load_cifar10`, or arrays
            already loaded; ``None`` means :func:`trainer.data.default_source`.
        data_md5, cache_dir: passed to :func:`trainer.data.load_cifar10`.
        seed: seeds the weights, the batch order, the augmentation and the shakes.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads for PyTorch (``torch.set_num_threads``); ``None`` leaves it.
        eval_every_epoch: also measure validation error after every epoch.
        sgdr_min_period: shortest first SGDR period (see :mod:`trainer.schedule`).
        progress: called with each learning-curve point plus ``budget_seconds``; its
            exceptions are logged and ignored.
        clock: the budget's clock; a :class:`trainer.schedule.MeasuredClock` by default.

    Raises:
        trainer.params.ConfigError: invalid configuration, budget, device or threads.
        trainer.data.DataError: the data cannot be loaded.
    """
    wall_start = time.perf_counter()

    # Invalid input is an exception (exit 2 in the CLI), never a record.
    cfg = params.validate_config(config)
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise params.ConfigError("budget", f"must be a positive number of seconds, got {budget!r}")
    dev = resolve_device(device)
    if threads is not None:
        if threads < 1:
            raise params.ConfigError("threads", f"must be at least 1, got {threads}")
        torch.set_num_threads(threads)

    # Loading (and downloading) happens before the clock exists: it is not training.
    cifar = data if isinstance(data, data_mod.Cifar10) else data_mod.load_cifar10(
        data if data is not None else data_mod.default_source(), data_md5, cache_dir
    )
    record = _empty_record(cfg, budget, seed, dev)
    n_params = model.count_parameters(cfg)
    record["n_params"] = n_params

    refusal = _memory_refusal(cfg, dev)
    if refusal is not None:
        return _finish(record, "out_of_memory", refusal, wall_start)

    # From here on, failures that belong to the configuration become a status.
    run = _Run(cfg, budget, cifar, dev, seed, eval_every_epoch, sgdr_min_period, progress, clock)
    try:
        run.execute(record)
        status: Status = "ok"
        message = None
    except _Diverged as exc:
        status, message = "diverged", str(exc)
    except Exception as exc:
        if is_out_of_memory(exc):
            status, message = "out_of_memory", f"out of memory: {_first_line(exc)}"
        elif isinstance(exc, RuntimeError):
            logger.warning("Training failed with a PyTorch runtime error.", exc_info=True)
            status, message = "error", _first_line(exc)
        else:
            raise  # a bug in the trainer: the CLI exits 1 with the traceback
    finally:
        run.release()
    # A run that failed part-way still reports how far it got.
    record["steps"], record["epochs"] = run.steps, run.epochs
    record["train_seconds"] = run.clock.elapsed()
    return _finish(record, status, message, wall_start)


class _Run:
    """The state of one training run; dropped as a whole so an OOM frees its memory."""

    def __init__(
        self,
        cfg: dict[str, int | float],
        budget: float,
        cifar: data_mod.Cifar10,
        dev: torch.device,
        seed: int,
        eval_every_epoch: bool,
        sgdr_min_period: float,
        progress: Progress | None,
        clock: schedule.Clock | None,
    ) -> None:
        self.cfg, self.budget, self.cifar, self.dev, self.seed = cfg, budget, cifar, dev, seed
        self.eval_every_epoch = eval_every_epoch
        self.sgdr = schedule.SGDR(float(cfg["learning_rate"]), budget, sgdr_min_period)
        self.progress = progress
        self.cuda = dev.type == "cuda"
        self.sync: Callable[[], None] = (
            (lambda: torch.cuda.synchronize(dev)) if self.cuda else (lambda: None)
        )
        self.clock = clock if clock is not None else schedule.MeasuredClock(self.sync)
        self.batch_size = int(cfg["batch_size"])
        self.net: model.Network | None = None
        self.data: augment.DeviceData | None = None
        self.steps = self.images = self.n_train = 0

    @property
    def epochs(self) -> float:
        """Passes over the training split so far (fractional)."""
        return self.images / self.n_train if self.n_train else 0.0

    def release(self) -> None:
        self.net = self.data = None
        if self.cuda:
            torch.cuda.empty_cache()

    def prepare(self) -> tuple[model.Network, augment.Augmenter, torch.optim.SGD]:
        """Build the network, the resident data and the optimiser, and warm up (no clock)."""
        cfg, dev = self.cfg, self.dev
        torch.manual_seed(self.seed)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        # Channels-last pays on GPUs; on CPUs its slow BatchNorm backward ate the conv gain.
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.net = net = model.Network(cfg).to(dev).to(memory_format=fmt)
        self.data = augment.DeviceData(self.cifar, dev, fmt)
        self.n_train = self.data.n_train
        aug = augment.Augmenter(self.data, int(cfg["length"]), float(cfg["alpha"]), self.seed)
        self._warm_up(net, aug)
        return net, aug, self._optimizer(net)

    def execute(self, record: ResultRecord) -> None:
        cfg, dev = self.cfg, self.dev

        # Build everything before the clock starts: none of this is training.
        net, aug, opt = self.prepare()
        record["n_params"] = sum(p.numel() for p in net.parameters())
        logger.info(
            "Training %d parameters on %s for %.1f s: SGDR %d cycle(s) of %s s.",
            record["n_params"], record["device"], self.budget, self.sgdr.cycles,
            " + ".join(f"{p:.1f}" for p in self.sgdr.periods()),
        )

        curve = record["learning_curve"]
        reported = 0  # curve points already passed to the progress callback
        lr = float(cfg["learning_rate"])
        per_epoch = max(1, self.n_train // self.batch_size)
        check_every = CHECK_EVERY[dev.type]
        # Duration of the latest step, to stop at the step boundary nearest to the budget.
        last_step = 0.0
        done = False
        while not done:
            order = aug.permutation()
            # Summed on the device: reading the loss every step would stall a GPU.
            loss_sum = torch.zeros((), device=dev)
            epoch_steps = 0
            self.clock.start()
            for b in range(per_epoch):
                now = self.clock.elapsed()
                if now + last_step / 2 >= self.budget:
                    done = True
                    break
                # SGDR is read off the training clock, stepped every batch.
                lr = self.sgdr.lr(now)
                indices = order[b * self.batch_size :][: self.batch_size]
                loss = self._step(net, opt, aug, indices, lr)
                self.clock.tick()
                loss_sum += loss.detach()
                epoch_steps += 1
                self.steps, self.images = self.steps + 1, self.images + len(indices)
                last_step = self.clock.elapsed() - now
                if self.steps % check_every == 0 and not torch.isfinite(loss_sum).item():
                    raise _Diverged(f"training loss became {loss_sum.item()} at step {self.steps}")
            self.clock.stop()
            if epoch_steps == 0:
                break

            # Account for the epoch (full, or the final partial one) off the clock.
            train_loss = loss_sum.item() / epoch_steps
            if not math.isfinite(train_loss):
                raise _Diverged(f"training loss became {train_loss} at step {self.steps}")
            point = CurvePoint(
                epoch=self.epochs,
                train_seconds=self.clock.elapsed(),
                lr=lr,
                train_loss=train_loss,
                validation_error=None,
            )
            # The last point gets the final validation error and is reported after it.
            if self.eval_every_epoch and not done:
                point["validation_error"] = self._evaluate(net, "validation")[1]
            curve.append(point)
            record["train_loss"] = train_loss
            if not done:
                self._report(point)
                reported = len(curve)

        # The objective and the reported test error, with the deterministic network.
        val_loss, val_error = self._evaluate(net, "validation")
        if not math.isfinite(val_loss):
            # Finite training losses but non-finite weights (e.g. overflowing BN statistics).
            raise _Diverged(f"validation loss is {val_loss} after {self.steps} steps")
        _, test_error = self._evaluate(net, "test")
        record["validation_loss"], record["validation_error"] = val_loss, val_error
        record["test_error"] = test_error
        if curve:
            curve[-1]["validation_error"] = val_error
            # One progress call per curve point: a budget spent exactly at an epoch's end
            # has already reported its last point (the record carries the final error).
            if reported < len(curve):
                self._report(curve[-1])
        logger.info(
            "Trained %d steps (%.2f epochs) in %.1f s: validation error %.4f, test error %.4f.",
            self.steps, self.epochs, self.clock.elapsed(), val_error, test_error,
        )

    def _optimizer(self, net: torch.nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(
            net.parameters(),
            lr=float(self.cfg["learning_rate"]),
            momentum=float(self.cfg["momentum"]),
            weight_decay=float(self.cfg["weight_decay"]),
            nesterov=True,
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _step(
        self,
        net: torch.nn.Module,
        opt: torch.optim.Optimizer,
        aug: augment.Augmenter,
        indices: torch.Tensor,
        lr: float,
    ) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = lr
        batch = aug.batch(indices)
        # Mixup's loss: the same blend of the two label sets as of the two images.
        with self._autocast():
            out = net(batch.x)
            loss = F.cross_entropy(out, batch.y)
            if batch.lam < 1.0:
                loss = batch.lam * loss + (1 - batch.lam) * F.cross_entropy(out, batch.y_mix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def _warm_up(self, net: model.Network, aug: augment.Augmenter) -> None:
        """Run a few steps off the clock, then undo them: weights, statistics and RNGs.

        The first steps select kernels and grow the allocator; they belong to no budget,
        and since all state is restored, the run is the same with or without them.
        """
        saved = {k: v.clone() for k, v in net.state_dict().items()}
        rng = aug.get_state(), torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.dev) if self.cuda else None
        opt = self._optimizer(net)
        order = aug.permutation()
        for _ in range(WARMUP_STEPS[self.dev.type]):
            self._step(net, opt, aug, order[: self.batch_size], 0.0)
        if self.cuda:
            torch.cuda.synchronize(self.dev)
        net.load_state_dict(saved)
        aug.set_state(rng[0])
        torch.set_rng_state(rng[1])
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.dev)

    @torch.no_grad()
    def _evaluate(self, net: torch.nn.Module, split: str) -> tuple[float, float]:
        """Cross-entropy and error rate on ``split``, in evaluation mode."""
        assert self.data is not None
        # Evaluation mode: BN running statistics, mean of branches, ShakeDrop expectation.
        net.eval()
        loss_sum = torch.zeros((), device=self.dev, dtype=torch.float64)
        wrong = torch.zeros((), device=self.dev, dtype=torch.int64)
        n = 0
        for x, y in self.data.eval_batches(split, EVAL_BATCH):
            with self._autocast():
                out = net(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            wrong += (out.argmax(1) != y).sum()
            n += len(y)
        net.train()
        return loss_sum.item() / n, wrong.item() / n

    def _report(self, point: CurvePoint) -> None:
        if self.progress is None:
            return
        try:
            self.progress({**point, "budget_seconds": self.budget})
        except Exception:
            logger.warning("Progress callback failed; training continues.", exc_info=True)


def measure_throughput(
    config: Mapping[str, object],
    cifar: data_mod.Cifar10,
    steps: int,
    *,
    device: str = "auto",
    seed: int = 0,
) -> Generator[float, None, None]:
    """Training images per second of this trainer's loop, one figure per ``steps`` steps.

    The same code path as :func:`train` (resident data, on-device augmentation, the same
    step) after the same warm-up, without budget or evaluation. A generator, so that a
    benchmark can interleave it with another loop on a machine whose load varies.
    """
    cfg = params.validate_config(config)
    dev = resolve_device(device)
    run = _Run(cfg, 1.0, cifar, dev, seed, False, schedule.PAPER_MIN_PERIOD, None, None)
    try:
        net, aug, opt = run.prepare()
        lr, batch = float(cfg["learning_rate"]), run.batch_size
        per_epoch = max(1, run.n_train // batch)
        order, done = aug.permutation(), 0
        while True:
            clock = schedule.MeasuredClock(run.sync)
            clock.start()
            for _ in range(steps):
                if done and done % per_epoch == 0:
                    order = aug.permutation()
                indices = order[(done % per_epoch) * batch :][:batch]
                run._step(net, opt, aug, indices, lr)
                done += 1
            clock.stop()
            yield steps * batch / clock.elapsed()
    finally:
        run.release()


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first GPU when CUDA is usable, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise params.ConfigError("device", f"unknown device {name!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise params.ConfigError("device", f"{name!r} asked for, but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise params.ConfigError("device", f"{name!r}: only {torch.cuda.device_count()} GPUs")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise params.ConfigError("device", f"{name!r}: only cpu and cuda are supported")
    return dev


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA, cuDNN/cuBLAS workspace, or host)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    # Host allocations and cuDNN/cuBLAS workspaces fail as plain RuntimeErrors.
    text = str(exc)
    markers = ("out of memory", "can't allocate memory", "_STATUS_ALLOC_FAILED")
    return isinstance(exc, RuntimeError) and any(m in text for m in markers)


def _memory_refusal(cfg: Mapping[str, int | float], dev: torch.device) -> str | None:
    """A message when the network cannot fit in free memory, else None.

    Refusing up front matters on the CPU: Linux overcommits memory, so an oversized network
    is killed by the kernel's OOM killer instead of raising, and no record would be written.
    """
    need = model.estimate_memory_bytes(cfg, dev.type == "cuda")
    free = _free_memory(dev)
    if free is None or need <= free:
        return None
    return (
        f"out of memory: the network needs about {need / 2**30:.1f} GiB for parameters, "
        f"optimiser state and activations of one batch; {free / 2**30:.1f} GiB are free"
    )


def _free_memory(dev: torch.device) -> int | None:
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({dev})"
    threads = torch.get_num_threads()
    return f"cpu {platform.machine()} ({threads} thread{'' if threads == 1 else 's'})"


def _empty_record(
    cfg: dict[str, int | float], budget: float, seed: int, dev: torch.device
) -> ResultRecord:
    return ResultRecord(
        status="error",
        validation_error=None,
        test_error=None,
        validation_loss=None,
        train_loss=None,
        budget_seconds=float(budget),
        train_seconds=0.0,
        wall_seconds=0.0,
        epochs=0.0,
        steps=0,
        n_params=0,
        learning_curve=[],
        device=device_name(dev),
        torch_version=torch.__version__,
        trainer_version=trainer.__version__,
        seed=seed,
        config=dict(cfg),
        message=None,
    )


def _finish(
    record: ResultRecord, status: Status, message: str | None, wall_start: float
) -> ResultRecord:
    record["status"] = status
    record["message"] = message
    if status != "ok":
        record["validation_error"] = record["test_error"] = None
        logger.warning("Trial ended with status %s: %s", status, message)
    record["wall_seconds"] = time.perf_counter() - wall_start
    return finite_record(record)


def finite_record(record: ResultRecord) -> ResultRecord:
    """``record`` with every NaN or infinite float replaced by ``None`` (valid JSON)."""
    return _finite(record)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
