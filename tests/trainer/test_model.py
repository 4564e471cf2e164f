"""The network template: shapes, parameter counts against published numbers, shakes, init."""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainer.conftest import make_config
from trainer import model, params


def _built_count(config: dict[str, object]) -> int:
    return sum(p.numel() for p in model.build_network(config).parameters())


def _shake_shake(width: int) -> dict[str, object]:
    """Shake-Shake 26 2x{width}d in the joint space: 4 blocks per stage, 2 branches."""
    return make_config(
        nr_residual_blocks_1=4, nr_residual_blocks_2=4, nr_residual_blocks_3=4,
        initial_filters=16, widen_factor_1=width / 16, widen_factor_2=2.0, widen_factor_3=2.0,
        res_branches_1=2, res_branches_2=2, res_branches_3=2,
    )


class TestParameterCounts:
    @pytest.mark.parametrize(
        ("width", "published_millions"), [(32, 2.9), (64, 11.7), (96, 26.2)]
    )
    def test_shake_shake_26_matches_the_published_size(
        self, width: int, published_millions: float
    ) -> None:
        # Gastaldi (2017), table 1: 2.9M, 11.7M and 26.2M parameters.
        count = model.count_parameters(_shake_shake(width))
        assert round(count / 1e6, 1) == published_millions

    def test_smallest_network_has_the_hand_counted_size(self) -> None:
        # Stem 232, identity block 1184, two downsampling blocks 1264 each, head 90.
        config = make_config(res_branches_2=1)
        assert model.count_parameters(config) == 232 + 1184 + 2 * 1264 + 90
        assert _built_count(config) == 4034

    @pytest.mark.parametrize(
        "overrides",
        [
            pytest.param({"res_branches_1": 1, "res_branches_2": 1, "res_branches_3": 1},
                         id="one-branch"),
            pytest.param({"res_branches_1": 5, "res_branches_2": 5, "res_branches_3": 5},
                         id="five-branches"),
            pytest.param({"widen_factor_1": 0.5, "widen_factor_2": 0.5, "widen_factor_3": 0.5},
                         id="narrowest-widths"),
            pytest.param({"initial_filters": 32, "widen_factor_1": 8.0, "widen_factor_2": 0.5,
                          "widen_factor_3": 0.5, "res_branches_1": 3}, id="widest-first-stage"),
            pytest.param({"initial_filters": 9, "widen_factor_1": 0.5, "widen_factor_2": 4.0,
                          "widen_factor_3": 4.0}, id="odd-widths-widest-later-stages"),
            pytest.param({"nr_residual_blocks_1": 3, "nr_residual_blocks_2": 2,
                          "nr_residual_blocks_3": 4, "res_branches_3": 4}, id="deeper"),
        ],
    )
    def test_counted_size_equals_built_size(self, overrides: dict[str, object]) -> None:
        config = make_config(**overrides)
        assert model.count_parameters(config) == _built_count(config)


class TestShapes:
    @pytest.mark.parametrize(
        "overrides",
        [
            pytest.param({"res_branches_1": 1, "res_branches_2": 1, "res_branches_3": 1},
                         id="one-branch"),
            pytest.param({"res_branches_1": 5, "res_branches_2": 5, "res_branches_3": 5},
                         id="five-branches"),
            pytest.param({"widen_factor_1": 0.5, "widen_factor_2": 0.5, "widen_factor_3": 0.5},
                         id="one-channel-last-stage"),
            pytest.param({"widen_factor_1": 8.0, "widen_factor_2": 4.0, "widen_factor_3": 0.5},
                         id="widest"),
        ],
    )
    def test_network_maps_images_to_ten_logits_in_both_modes(
        self, overrides: dict[str, object]
    ) -> None:
        net = model.build_network(make_config(**overrides))
        x = torch.randn(3, 3, 32, 32)
        assert net(x).shape == (3, 10)
        net.eval()
        assert net(x).shape == (3, 10)

    def test_stages_run_at_32_16_and_8_pixels_with_compounding_widths(self) -> None:
        config = make_config(initial_filters=10, widen_factor_1=1.5, widen_factor_2=2.0,
                             widen_factor_3=0.5)
        net = model.build_network(config)
        x = net.stem(torch.randn(2, 3, 32, 32))
        shapes = []
        for stage in net.stages:
            x = stage(x)
            shapes.append(tuple(x.shape[1:]))
        assert params.channels(config) == (15, 30, 15)
        assert shapes == [(15, 32, 32), (30, 16, 16), (15, 8, 8)]

    def test_channels_last_network_gives_the_same_logits(self) -> None:
        torch.manual_seed(0)
        net = model.build_network(make_config()).eval()
        x = torch.randn(4, 3, 32, 32)
        expected = net(x)
        net = net.to(memory_format=torch.channels_last)
        got = net(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


class TestShakes:
    def test_evaluation_is_deterministic_and_training_is_not(self) -> None:
        net = model.build_network(make_config(res_branches_1=3, death_rate=0.5))
        x = torch.randn(4, 3, 32, 32)
        net.eval()
        assert torch.equal(net(x), net(x))
        net.train()
        assert not torch.equal(net(x), net(x))

    def test_evaluation_uses_the_mean_of_the_branches(self) -> None:
        block = model.Block(4, 4, 1, branches=3, death_rate=0.0).eval()
        x = torch.randn(2, 4, 8, 8)
        r = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(torch.relu(x))))))
        expected = r.view(2, 3, 4, 8, 8).mean(1) + x
        torch.testing.assert_close(block(x), expected)

    def test_shakedrop_scales_the_residual_by_its_survival_rate_at_evaluation(self) -> None:
        block = model.Block(4, 4, 1, branches=1, death_rate=0.3).eval()
        x = torch.randn(2, 4, 8, 8)
        r = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(torch.relu(x))))))
        torch.testing.assert_close(block(x), 0.7 * r + x)

    def test_shake_uses_independent_weights_backward(self) -> None:
        # Stacked branches of ones: the forward weights sum to one per image, and the
        # gradient of each branch is its backward weight, which differs from the forward one.
        torch.manual_seed(0)
        n, k = 5, 3
        stacked = torch.ones(n, k * 2, 1, 1, requires_grad=True)
        fw = model._dirichlet_ones(n, k, torch.device("cpu"))
        bw = model._dirichlet_ones(n, k, torch.device("cpu"))
        out = model._Shake.apply(stacked, fw, bw)
        torch.testing.assert_close(out, torch.ones(n, 2, 1, 1))
        out.sum().backward()
        assert stacked.grad is not None
        grad = stacked.grad.view(n, k, 2)
        torch.testing.assert_close(grad[:, :, 0], bw)
        assert not torch.allclose(grad[:, :, 0], fw)

    def test_two_branch_weights_are_uniform_like_shake_shake(self) -> None:
        torch.manual_seed(0)
        w = model._dirichlet_ones(20000, 2, torch.device("cpu"))[:, 0]
        # Uniform(0, 1): mean 1/2, variance 1/12.
        assert abs(w.mean().item() - 0.5) < 0.01
        assert abs(w.var().item() - 1 / 12) < 0.005

    def test_shakedrop_never_flips_a_kept_residual(self) -> None:
        torch.manual_seed(0)
        block = model.Block(2, 2, 1, branches=1, death_rate=0.0).train()
        r = torch.randn(64, 2, 4, 4)
        assert torch.equal(block._combine(r), r)


def test_convolutions_are_he_initialised_per_branch() -> None:
    torch.manual_seed(0)
    net = model.build_network(make_config(initial_filters=32, widen_factor_1=2.0,
                                          res_branches_1=4))
    block = next(m for m in net.modules() if isinstance(m, model.Block))
    # Each of the 4 branches has 64 output channels: std = sqrt(2 / (9 * 64)).
    expected = math.sqrt(2 / (9 * 64))
    for conv in (block.conv1, block.conv2):
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_invalid_configuration_is_refused_naming_the_parameter() -> None:
    with pytest.raises(params.ConfigError) as err:
        model.build_network(make_config(res_branches_2=6))
    assert err.value.parameter == "res_branches_2"
