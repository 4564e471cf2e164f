"""On-device augmentation: crop, flip, cutout and mixup do what the paper's pipeline does."""

from __future__ import annotations

import torch

from tests.trainer.conftest import make_cifar
from trainer import augment
from trainer import data as data_mod

CPU = torch.device("cpu")


def _device_data(fmt: torch.memory_format = torch.contiguous_format) -> augment.DeviceData:
    return augment.DeviceData(make_cifar(n_train=200, n_test=20), CPU, fmt)


def _windows(padded: torch.Tensor) -> list[torch.Tensor]:
    """All 81 crops of a padded (3, 40, 40) image and their mirror images."""
    crops = [padded[:, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
    return crops + [c.flip(2) for c in crops]


def test_crop_and_flip_cut_a_window_of_the_zero_padded_image() -> None:
    d = _device_data()
    aug = augment.Augmenter(d, length=0, alpha=0.0, seed=1)
    indices = torch.arange(12)
    batch = aug.batch(indices)
    mean = torch.tensor(data_mod.MEAN).view(3, 1, 1)
    std = torch.tensor(data_mod.STD).view(3, 1, 1)
    pixels = ((batch.x * std + mean) * 255).round()
    flipped = 0
    for i in indices.tolist():
        windows = _windows(d.train_padded[i].float())
        matches = [k for k, w in enumerate(windows) if torch.equal(w, pixels[i])]
        assert matches, f"image {i} is no crop of its padded original"
        flipped += min(matches) >= 81
    # Flips happen, but not always (12 fair coins).
    assert 0 < flipped < 12
    assert torch.equal(batch.y, d.train_y[indices])
    assert batch.lam == 1.0


def test_batches_come_out_in_the_asked_memory_format() -> None:
    d = _device_data(torch.channels_last)
    x = augment.Augmenter(d, length=8, alpha=0.5, seed=0).batch(torch.arange(16)).x
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_cutout_holes_are_length_squared_unless_clipped_by_the_border() -> None:
    aug = augment.Augmenter(_device_data(), length=10, alpha=0.0, seed=0)
    holes = (~aug._cutout_mask(500)).sum(dim=(1, 2, 3))
    assert holes.max().item() == 100
    assert holes.min().item() >= 25  # a corner centre keeps at least a quarter of the hole
    assert (holes < 100).any()


def test_mixup_blends_the_batch_with_a_permutation_of_itself() -> None:
    d = _device_data()
    plain = augment.Augmenter(d, length=0, alpha=0.0, seed=3).batch(torch.arange(32))
    mixed = augment.Augmenter(d, length=0, alpha=1.0, seed=3).batch(torch.arange(32))
    assert 0.0 < mixed.lam < 1.0
    assert sorted(mixed.y_mix.tolist()) == sorted(mixed.y.tolist())
    # Same seed, same crops: the mixed batch is lam * x + (1 - lam) * x[perm].
    lam = mixed.lam

    def partner(i: int) -> int:
        blends = [lam * plain.x[i] + (1 - lam) * plain.x[j] for j in range(32)]
        return next(j for j, b in enumerate(blends) if torch.allclose(mixed.x[i], b, atol=1e-5))

    partners = [partner(i) for i in range(32)]
    assert mixed.y_mix.tolist() == [plain.y[j].item() for j in partners]


def test_same_seed_gives_the_same_batches() -> None:
    d = _device_data()
    a = augment.Augmenter(d, length=8, alpha=0.4, seed=5)
    b = augment.Augmenter(d, length=8, alpha=0.4, seed=5)
    assert torch.equal(a.permutation(), b.permutation())
    first, second = a.batch(torch.arange(20)), b.batch(torch.arange(20))
    assert torch.equal(first.x, second.x) and first.lam == second.lam


def test_evaluation_batches_are_the_unaugmented_normalised_split() -> None:
    d = _device_data()
    xs, ys = zip(*d.eval_batches("test", batch_size=7), strict=True)
    assert sum(len(y) for y in ys) == 20
    expected = d.test_x.float() / 255
    mean = torch.tensor(data_mod.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data_mod.STD).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(xs), (expected - mean) / std)
    assert torch.equal(torch.cat(ys), d.test_y)
