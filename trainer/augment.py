"""CIFAR-10 resident on the training device, augmented there batch by batch.

A Python data loader feeding a GPU leaves it waiting; CIFAR-10 is 150 MB as bytes, so the
images stay on the device as uint8 and each batch is cut out of them with a few tensor ops:
random crop with 4 pixels of zero padding and horizontal flip as one gather from pre-padded
images, normalisation, cutout (DeVries & Taylor 2017, arXiv 1708.04552) and mixup (Zhang et
al. 2018, arXiv 1710.09412) with one Beta(alpha, alpha) draw per batch, as the authors' code.

The gather writes the batch in channels-last order directly, which is the layout the
convolutions want on GPUs.

.. note::
   Cutout's hole has exactly ``length`` pixels per side and may extend past the border
   (clipped), its centre uniform over the image, as in the original cutout code; the hole is
   set to zero after normalisation, the mean pixel.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer import data as data_mod

_PAD = 4
_SIZE = 32


@dataclass
class Batch:
    """Augmented images, their labels, and the mixup partner labels with their weight."""

    x: torch.Tensor
    y: torch.Tensor
    y_mix: torch.Tensor
    lam: float


class DeviceData:
    """The training split (pre-padded), validation split and test set on one device."""

    def __init__(
        self,
        cifar: data_mod.Cifar10,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        train_idx, val_idx = cifar.split()
        x = torch.from_numpy(cifar.train_x)
        y = torch.from_numpy(cifar.train_y)
        self.device = device
        self.memory_format = memory_format
        self.train_padded = F.pad(x[train_idx], (_PAD,) * 4).to(device)
        self.train_y = y[train_idx].to(device)
        self.val_x, self.val_y = x[val_idx].to(device), y[val_idx].to(device)
        self.test_x = torch.from_numpy(cifar.test_x).to(device)
        self.test_y = torch.from_numpy(cifar.test_y).to(device)
        mean = torch.tensor(data_mod.MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(data_mod.STD, device=device).view(1, 3, 1, 1)
        # x / 255 normalised = x * scale + shift, one fused op per batch.
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self._scale + self._shift
        return x.contiguous(memory_format=self.memory_format)

    def eval_batches(
        self, split: str, batch_size: int = 500
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Unaugmented, normalised batches of ``"validation"`` or ``"test"``."""
        x, y = (self.val_x, self.val_y) if split == "validation" else (self.test_x, self.test_y)
        for i in range(0, len(y), batch_size):
            yield self.normalise(x[i : i + batch_size]), y[i : i + batch_size]


class Augmenter:
    """Draws augmented training batches from :class:`DeviceData` with its own seeded RNGs."""

    def __init__(self, data: DeviceData, length: int, alpha: float, seed: int) -> None:
        self.data = data
        self.length = length
        self.alpha = alpha
        self.generator = torch.Generator(device=data.device)
        self.generator.manual_seed(seed)
        # Mixup's weight is one host-side number per batch; drawing it on the host avoids a
        # device-to-host copy per step.
        self._rng = np.random.default_rng(seed)
        self._arange = torch.arange(_SIZE, device=data.device)

    def get_state(self) -> tuple[torch.Tensor, Mapping[str, Any]]:
        """The RNG states, to replay the same batches later (see :meth:`set_state`)."""
        return self.generator.get_state(), self._rng.bit_generator.state

    def set_state(self, state: tuple[torch.Tensor, Mapping[str, Any]]) -> None:
        self.generator.set_state(state[0])
        self._rng.bit_generator.state = state[1]

    def permutation(self) -> torch.Tensor:
        """A fresh order of the training images, for one epoch."""
        return torch.randperm(self.data.n_train, generator=self.generator, device=self.data.device)

    def batch(self, indices: torch.Tensor) -> Batch:
        d, g, n = self.data, self.generator, len(indices)
        dev, base = d.device, self._arange

        # Crop and flip as one gather: per-image row/column offsets into the padded images.
        dy = torch.randint(0, 2 * _PAD + 1, (n, 1), device=dev, generator=g)
        dx = torch.randint(0, 2 * _PAD + 1, (n, 1), device=dev, generator=g)
        flip = torch.randint(0, 2, (n, 1), device=dev, generator=g).bool()
        rows = base + dy
        cols = torch.where(flip, _SIZE - 1 - base, base) + dx
        images = d.train_padded[
            indices.view(n, 1, 1), :, rows.view(n, _SIZE, 1), cols.view(n, 1, _SIZE)
        ]
        # (n, 32, 32, 3) viewed as (n, 3, 32, 32) is already channels-last.
        x = d.normalise(images.permute(0, 3, 1, 2))

        if self.length > 0:
            x = x * self._cutout_mask(n).to(x.dtype)

        y = d.train_y[indices]
        if self.alpha <= 0:
            return Batch(x, y, y, 1.0)
        lam = float(self._rng.beta(self.alpha, self.alpha))
        perm = torch.randperm(n, device=dev, generator=g)
        x = (lam * x + (1.0 - lam) * x[perm]).contiguous(memory_format=d.memory_format)
        return Batch(x, y, y[perm], lam)

    def _cutout_mask(self, n: int) -> torch.Tensor:
        g, dev, base = self.generator, self.data.device, self._arange
        top = torch.randint(0, _SIZE, (n, 1), device=dev, generator=g) - self.length // 2
        left = torch.randint(0, _SIZE, (n, 1), device=dev, generator=g) - self.length // 2
        in_rows = (base >= top) & (base < top + self.length)
        in_cols = (base >= left) & (base < left + self.length)
        hole = in_rows.view(n, 1, _SIZE, 1) & in_cols.view(n, 1, 1, _SIZE)
        return ~hole
