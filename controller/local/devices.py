"""Which device each local trial slot gets: its own GPU when there are GPUs, else CPU threads.

The controller does not import torch, so GPUs are found with ``nvidia-smi -L`` (and
``CUDA_VISIBLE_DEVICES``, when set, narrows them). Each slot is pinned to one GPU through
``CUDA_VISIBLE_DEVICES``, so a trainer sees exactly one device; with more slots than GPUs,
slots share GPUs round-robin. On the CPU the cores are split evenly between the slots
(at least one thread each), and the thread count is passed both as ``--threads`` and as
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` so no library oversubscribes the machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from controller.spec import SpecError, TrainerSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """One place a trial can run: its index, ``--device`` value, threads and environment."""

    index: int
    device: str
    threads: int
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        gpu = self.env.get("CUDA_VISIBLE_DEVICES")
        if gpu is not None:
            return f"GPU {gpu}"
        return f"CPU ({self.threads} thread{'' if self.threads == 1 else 's'})"


def visible_gpus() -> list[str]:
    """GPU indices this process may use, per ``nvidia-smi -L`` and CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("nvidia-smi failed (%s); assuming no GPU.", exc)
        return []
    if listing.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(listing.stdout.splitlines())
            if line.startswith("GPU ")]


def plan_slots(parallel: int, trainer: TrainerSpec, gpus: list[str] | None = None,
               cpus: int | None = None) -> list[Slot]:
    """``parallel`` slots for the spec's device setting; raises :class:`SpecError` if unmet."""
    gpus = visible_gpus() if gpus is None else gpus
    cpus = cpus or os.cpu_count() or 1
    threads = trainer.threads or max(1, cpus // parallel)
    thread_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    use_gpu = trainer.device == "cuda" or (trainer.device == "auto" and bool(gpus))
    if use_gpu and not gpus:
        raise SpecError("spec.trainer.device", "cuda was asked for but no GPU is visible "
                        "(nvidia-smi -L lists none)")
    if not use_gpu:
        return [Slot(i, "cpu", threads, dict(thread_env)) for i in range(parallel)]
    if parallel > len(gpus):
        logger.warning("%d parallel trials share %d GPUs.", parallel, len(gpus))
    return [
        Slot(i, "cuda", threads, {**thread_env, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]})
        for i in range(parallel)
    ]
