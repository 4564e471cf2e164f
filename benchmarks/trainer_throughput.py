"""Training throughput of the trainer's loop against a plain PyTorch loop, side by side.

For three networks of the joint space (small; the paper's medium, Shake-Shake 26 2x32d;
large, Shake-Shake 26 2x64d) this measures training images per second of

* the trainer's loop (:func:`trainer.train.measure_throughput`): CIFAR-10 resident on the
  device as uint8, augmentation (crop, flip, cutout, mixup) done there;
* a plain loop over the same network, optimiser, precision and memory format, fed by a
  torchvision ``DataLoader`` that decodes and augments each image on the CPU (PIL crop and
  flip, ``ToTensor``, ``Normalize``, cutout), mixup in the loop.

Both are built side by side in one process, warmed up, then alternate timed rounds (two with
``--quick``, else three), so a machine whose load varies slows both alike; the best round of
each is printed.

    python benchmarks/trainer_throughput.py --quick      # a few minutes on a 2-core CPU
    python benchmarks/trainer_throughput.py              # longer; more steps on a GPU
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from trainer import data as data_mod
from trainer import model, train

LOCAL_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-python.tar.gz"
_TRAINING = {"learning_rate": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "alpha": 0.2,
             "length": 16, "death_rate": 0.0}


def _config(blocks: int, stem: int, w1: float, branches: tuple[int, int, int],
            batch: int) -> dict[str, Any]:
    return {
        **{f"nr_residual_blocks_{i}": blocks for i in (1, 2, 3)},
        "initial_filters": stem, "widen_factor_1": w1, "widen_factor_2": 2.0,
        "widen_factor_3": 2.0,
        **{f"res_branches_{i}": k for i, k in enumerate(branches, start=1)},
        "batch_size": batch, **_TRAINING,
    }


CONFIGS = {
    "small": _config(1, 16, 1.0, (1, 2, 1), 128),
    "medium": _config(4, 16, 2.0, (2, 2, 2), 128),  # Shake-Shake 26 2x32d, 2.9 M
    "large": _config(4, 16, 4.0, (2, 2, 2), 128),  # Shake-Shake 26 2x64d, 11.7 M
}
# Timed steps per round: (CPU quick, CPU, GPU quick, GPU).
STEPS = {"small": (8, 30, 100, 400), "medium": (2, 6, 50, 200), "large": (1, 3, 25, 100)}


class _Cutout:
    """Zero one square of side ``length`` (clipped at the border) in a normalised image."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.length <= 0:
            return img
        top = np.random.randint(32) - self.length // 2
        left = np.random.randint(32) - self.length // 2
        rows = slice(max(0, top), max(0, top + self.length))
        img[:, rows, max(0, left) : max(0, left + self.length)] = 0
        return img


class _PlainCifar(Dataset[tuple[torch.Tensor, int]]):
    """The training split as HWC uint8 images, transformed one by one with torchvision."""

    def __init__(self, cifar: data_mod.Cifar10, length: int) -> None:
        train_idx, _ = cifar.split()
        self.images = np.ascontiguousarray(cifar.train_x[train_idx].transpose(0, 2, 3, 1))
        self.labels = cifar.train_y[train_idx]
        self.transform = T.Compose([
            T.ToPILImage(), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(data_mod.MEAN, data_mod.STD), _Cutout(length),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def plain_loop(
    config: dict[str, Any], cifar: data_mod.Cifar10, steps: int, dev: torch.device, workers: int
) -> Generator[float, None, None]:
    """Images/s of a textbook loop (DataLoader, to device, mixup, step), per ``steps`` steps.

    As many warm-up steps first as the trainer's loop takes.
    """
    torch.manual_seed(0)
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    net = model.build_network(config).to(dev).to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=config["learning_rate"], nesterov=True,
                          momentum=config["momentum"], weight_decay=config["weight_decay"])
    loader = DataLoader(_PlainCifar(cifar, config["length"]), batch_size=config["batch_size"],
                        shuffle=True, drop_last=True, num_workers=workers, pin_memory=cuda,
                        persistent_workers=workers > 0)
    alpha = config["alpha"]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    stream = batches()

    def step() -> None:
        x, y = next(stream)
        x = x.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(dev, non_blocking=True)
        lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
        perm = torch.randperm(len(y), device=dev)
        x = lam * x + (1 - lam) * x[perm]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = net(x)
            loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    for _ in range(train.WARMUP_STEPS[dev.type]):
        step()
    while True:
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        yield steps * config["batch_size"] / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = str(LOCAL_ARCHIVE) if LOCAL_ARCHIVE.is_file() else data_mod.default_source()
    p.add_argument("--data", default=default_data, help="CIFAR-10 URL, archive or folder")
    p.add_argument("--data-md5", help="expected archive MD5")
    p.add_argument("--cache-dir", default=str(data_mod.default_cache_dir()))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--workers", type=int,
                   help="DataLoader workers of the plain loop (default: 0 on CPU, 8 on GPU)")
    p.add_argument("--quick", action="store_true", help="fewer steps per round")
    p.add_argument("--configs", default="small,medium,large")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = train.resolve_device(args.device)
    cuda = dev.type == "cuda"
    # On a CPU-only machine loader workers would compete with training for the same cores.
    workers = args.workers if args.workers is not None else (
        min(8, os.cpu_count() or 1) if cuda else 0)
    column = (2 if cuda else 0) + (0 if args.quick else 1)
    rounds = 2 if args.quick else 3

    started = time.perf_counter()
    cifar = data_mod.load_cifar10(args.data, args.data_md5, args.cache_dir)
    load_seconds = time.perf_counter() - started
    device_name = train.device_name(dev)
    print(f"device: {device_name}; torch {torch.__version__}; "
          f"CIFAR-10 loaded in {load_seconds:.1f} s; plain loop: {workers} loader worker(s)")
    print(f"{'config':8} {'params':>8} {'batch':>5} {'steps':>7} "
          f"{'trainer img/s':>14} {'plain img/s':>12} {'speed-up':>8}")
    for name in args.configs.split(","):
        config = CONFIGS[name]
        steps = STEPS[name][column]
        # Both loops are built and warmed up, then alternate rounds of `steps` steps.
        ours_rounds = train.measure_throughput(config, cifar, steps, device=args.device)
        plain_rounds = plain_loop(config, cifar, steps, dev, workers)
        ours, plain = [], []
        for _ in range(rounds):
            ours.append(next(ours_rounds))
            plain.append(next(plain_rounds))
        ours_rounds.close()
        plain_rounds.close()
        n_params = model.count_parameters(config)
        print(f"{name:8} {n_params / 1e6:7.2f}M {config['batch_size']:5d} {steps:4d}x{rounds} "
              f"{max(ours):14.1f} {max(plain):12.1f} {max(ours) / max(plain):7.2f}x",
              flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
