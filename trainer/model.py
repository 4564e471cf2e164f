"""The multi-branch residual network of the joint search space, built from one configuration.

Zela et al. (2018, arXiv 1807.06906) search over a three-stage residual network whose blocks
have ``res_branches_i`` identical branches. Blocks with two or more branches combine them with
multi-branch Shake-Shake (Gastaldi 2017, arXiv 1705.07485): per-image random convex weights in
the forward pass, independent ones in the backward pass, equal weights at evaluation. Blocks
with one branch use ShakeDrop (Yamada et al. 2018, arXiv 1802.02375) with the configuration's
``death_rate``. Where a block changes shape, the shortcut is Shake-Shake's two-path
downsample (two strided 1x1 convolutions, the second on the input shifted by one pixel).

All K branches of a block read the same input, so they are computed as one convolution with
K times the channels followed by a grouped convolution with K groups. This is the same
function and the same parameters as K separate branches (each branch keeps its own weights and
BatchNorm statistics), with a fraction of the kernel launches.

.. note::
   Where the authors' code (``arberzela/EfficientNAS``) differs, this module follows the paper
   and the original methods: the Shake-Shake weights are Dirichlet(1, ..., 1) per image, which
   is exactly Shake-Shake's uniform ``alpha`` for two branches (the authors' code used a
   softmax of uniform numbers, which stays close to equal weights); the ShakeDrop gate is
   drawn per image rather than once per batch; ``death_rate`` is the same in every block (as
   in the authors' code; the ShakeDrop paper grows it linearly with depth); the ReLU at the
   start of the downsampling shortcut feeds both paths.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer import params

logger = logging.getLogger(__name__)

NUM_CLASSES = 10


class _Shake(torch.autograd.Function):
    """Weighted sum over branches with one set of weights forward and another backward.

    ``stacked`` is ``(N, K*C, H, W)``, the K branch outputs side by side in the channel
    dimension; ``forward_w`` and ``backward_w`` are ``(N, K)``. With K = 1 this is ShakeDrop's
    per-image scaling.
    """

    @staticmethod
    def forward(
        ctx: Any, stacked: torch.Tensor, forward_w: torch.Tensor, backward_w: torch.Tensor
    ) -> torch.Tensor:
        n, kc, h, w = stacked.shape
        k = forward_w.shape[1]
        ctx.save_for_backward(backward_w)
        ctx.k = k
        weights = forward_w.to(stacked.dtype).view(n, k, 1, 1, 1)
        return (stacked.view(n, k, kc // k, h, w) * weights).sum(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (backward_w,) = ctx.saved_tensors
        n, c, h, w = grad.shape
        k = ctx.k
        weights = backward_w.to(grad.dtype).view(n, k, 1, 1, 1)
        return (grad.unsqueeze(1) * weights).reshape(n, k * c, h, w), None, None


def _dirichlet_ones(n: int, k: int, device: torch.device) -> torch.Tensor:
    """Per-image weights uniform on the simplex: normalised exponential variates."""
    # Normalised Exp(1) variates are Dirichlet(1, ..., 1); log1p(-u) avoids log(0).
    e = -torch.log1p(-torch.rand(n, k, device=device))
    return e / e.sum(1, keepdim=True)


class Shortcut(nn.Module):
    """Shake-Shake's two-path shortcut for a change of width or resolution.

    ReLU, then two paths each subsampled with stride ``stride`` (average pooling with a 1x1
    window) and projected by a 1x1 convolution to half the output channels, the second path on
    the input shifted by one pixel; the halves are concatenated and batch-normalised.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_channels // 2
        # With one output channel the first path would be empty; only the shifted one remains.
        self.path1 = nn.Conv2d(in_channels, half, 1, bias=False) if half > 0 else None
        self.path2 = nn.Conv2d(in_channels, out_channels - half, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        # The second path sees the image moved by one pixel, so stride 2 samples other pixels.
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        if self.stride > 1:
            x = F.avg_pool2d(x, 1, self.stride)
            shifted = F.avg_pool2d(shifted, 1, self.stride)
        out = self.path2(shifted)
        if self.path1 is not None:
            out = torch.cat([self.path1(x), out], dim=1)
        return self.bn(out)


class Block(nn.Module):
    """A residual block of ``branches`` identical branches (ReLU-conv-BN-ReLU-conv-BN).

    Training mode shakes the branches (K >= 2) or drops the residual (K = 1); evaluation mode
    is deterministic: the branch mean, or the residual scaled by ``1 - death_rate``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, branches: int, death_rate: float
    ) -> None:
        super().__init__()
        self.branches = branches
        self.out_channels = out_channels
        self.death_rate = death_rate
        k, c = branches, out_channels
        # One wide convolution = the first convolutions of all K branches (same input).
        self.conv1 = nn.Conv2d(in_channels, k * c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(k * c)
        # A grouped convolution = the K second convolutions, each on its own branch.
        self.conv2 = nn.Conv2d(k * c, k * c, 3, 1, 1, groups=k, bias=False)
        self.bn2 = nn.BatchNorm2d(k * c)
        self.shortcut: Shortcut | None = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.bn1(self.conv1(F.relu(x)))
        r = self.bn2(self.conv2(F.relu(r)))
        r = self._combine(r)
        return r + (x if self.shortcut is None else self.shortcut(x))

    def _combine(self, r: torch.Tensor) -> torch.Tensor:
        n, k = r.shape[0], self.branches
        # Shake-Shake over K branches: forward and backward weights drawn independently.
        if k > 1:
            if not self.training:
                return r.view(n, k, self.out_channels, *r.shape[2:]).mean(1)
            fw = _dirichlet_ones(n, k, r.device)
            bw = _dirichlet_ones(n, k, r.device)
            return _Shake.apply(r, fw, bw)
        if self.death_rate == 0.0:
            return r
        if not self.training:
            return r * (1.0 - self.death_rate)

        # ShakeDrop: kept images pass unchanged; dropped ones get alpha in [-1, 1] forward
        # and beta in [0, 1] backward.
        keep = (torch.rand(n, 1, device=r.device) >= self.death_rate).float()
        alpha = torch.rand(n, 1, device=r.device) * 2 - 1
        beta = torch.rand(n, 1, device=r.device)
        return _Shake.apply(
            r, keep + (1 - keep) * alpha, keep + (1 - keep) * beta
        )


class Network(nn.Module):
    """Stem, three stages of :class:`Block` (32, 16, 8 pixels), ReLU, global pool, linear."""

    def __init__(self, config: Mapping[str, int | float]) -> None:
        super().__init__()
        stem = int(config["initial_filters"])
        widths = params.channels(config)
        death_rate = float(config["death_rate"])
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem))
        stages: list[nn.Module] = []
        c_in = stem
        for i, c_out in enumerate(widths, start=1):
            blocks: list[nn.Module] = []
            for b in range(int(config[f"nr_residual_blocks_{i}"])):
                # Stages 2 and 3 halve the resolution in their first block.
                stride = 2 if (i > 1 and b == 0) else 1
                k = int(config[f"res_branches_{i}"])
                blocks.append(Block(c_in, c_out, stride, k, death_rate))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, NUM_CLASSES)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stages(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _init_weights(net: nn.Module) -> None:
    """He-normal convolutions (fan-out of one branch, as Shake-Shake), unit BN, zero biases."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            _he_normal(m, m.groups)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)

    # A block's first convolution holds K branches in one; each branch has its own fan-out.
    for m in net.modules():
        if isinstance(m, Block):
            _he_normal(m.conv1, m.branches)


def _he_normal(conv: nn.Conv2d, branches: int) -> None:
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // branches
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))


def build_network(config: Mapping[str, object]) -> Network:
    """Validate ``config`` (raising :class:`trainer.params.ConfigError`) and build its network."""
    return Network(params.validate_config(config))


def count_parameters(config: Mapping[str, object]) -> int:
    """The network's trainable parameter count, computed without building it.

    Used to refuse networks that cannot fit in memory before allocating them.
    """
    cfg = params.validate_config(config)
    stem = int(cfg["initial_filters"])
    total = 3 * stem * 9 + 2 * stem
    c_in = stem
    for i, c_out in enumerate(params.channels(cfg), start=1):
        k = int(cfg[f"res_branches_{i}"])
        for b in range(int(cfg[f"nr_residual_blocks_{i}"])):
            # K branches of two 3x3 convolutions and two BatchNorms (weight and bias).
            total += k * (c_in * c_out * 9 + c_out * c_out * 9 + 4 * c_out)
            # The two-path shortcut: 1x1 convolutions to c_out channels in all, and a BN.
            if c_in != c_out or (i > 1 and b == 0):
                total += c_in * c_out + 2 * c_out
            c_in = c_out
    return total + c_in * NUM_CLASSES + NUM_CLASSES


def estimate_memory_bytes(config: Mapping[str, object], half_precision: bool) -> int:
    """A rough lower bound of the memory a training step needs, without building anything.

    Parameters, gradients and momentum in float32, plus the activations autograd keeps for one
    batch (about ``5K + 2`` maps of the block's width per K-branch block), plus the resident
    dataset. Used to refuse hopeless networks before allocating them.
    """
    cfg = params.validate_config(config)
    stem = int(cfg["initial_filters"])
    per_image = 3 * stem * 32 * 32
    c_in, side = stem, 32
    for i, c_out in enumerate(params.channels(cfg), start=1):
        k = int(cfg[f"res_branches_{i}"])
        for b in range(int(cfg[f"nr_residual_blocks_{i}"])):
            in_maps = c_in * side * side
            if i > 1 and b == 0:
                side //= 2
            per_image += in_maps + (5 * k + 2) * c_out * side * side
            c_in = c_out
    activation_bytes = 2 if half_precision else 4
    dataset_bytes = 60_000 * 3 * 40 * 40
    return (
        12 * count_parameters(cfg)
        + per_image * int(cfg["batch_size"]) * activation_bytes
        + dataset_bytes
    )
