"""One trial end to end: the record, budget accounting, SGDR on the clock, failures as data."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import RECORD_FIELDS, make_archive, make_cifar, make_config
from trainer import data as data_mod
from trainer import model, params, schedule, train

CURVE_FIELDS = {"epoch", "train_seconds", "lr", "train_loss", "validation_error"}
# make_cifar(320): 288 training images, 9 steps of 32 per epoch.
STEPS_PER_EPOCH = 9


def _fast_config(**overrides: Any) -> dict[str, Any]:
    """A 4-channel network: fast enough for many short runs on a busy CPU."""
    return make_config(widen_factor_1=0.5, **overrides)


@pytest.fixture(scope="module")
def tiny_cifar() -> data_mod.Cifar10:
    return make_cifar(n_train=320, n_test=50)


def _train(cifar: data_mod.Cifar10, budget: float = 0.1, **kwargs: Any) -> train.ResultRecord:
    """Train on the CPU; by default on a step clock of 0.01 s per step (10 steps)."""
    kwargs.setdefault("clock", schedule.StepClock(0.01))
    config = kwargs.pop("config", _fast_config())
    return train.train(config, budget, cifar, device="cpu", threads=1, **kwargs)


def _strict_json(record: train.ResultRecord) -> dict[str, Any]:
    return dict(json.loads(json.dumps(record, allow_nan=False)))


class TestRecord:
    def test_record_has_exactly_the_documented_fields_and_is_strict_json(
        self, tiny_cifar: data_mod.Cifar10
    ) -> None:
        record = _train(tiny_cifar, budget=0.05, seed=3)
        assert set(record) == RECORD_FIELDS
        assert _strict_json(record)["status"] == "ok"
        assert record["message"] is None
        assert 0.0 <= (record["validation_error"] or -1) <= 1.0
        assert 0.0 <= (record["test_error"] or -1) <= 1.0
        assert record["n_params"] == model.count_parameters(_fast_config())
        assert record["config"] == params.validate_config(_fast_config())
        assert record["seed"] == 3 and record["budget_seconds"] == 0.05
        assert record["device"].startswith("cpu")
        assert record["torch_version"] == torch.__version__

    def test_learning_curve_has_a_point_per_epoch_and_validation_at_the_end(
        self, tiny_cifar: data_mod.Cifar10
    ) -> None:
        record = _train(tiny_cifar, budget=0.2)
        curve = record["learning_curve"]
        assert record["steps"] == 20
        assert [round(p["epoch"], 4) for p in curve] == [1.0, 2.0, round(20 / 9, 4)]
        assert all(set(p) == CURVE_FIELDS for p in curve)
        assert [p["validation_error"] for p in curve[:-1]] == [None, None]
        assert curve[-1]["validation_error"] == record["validation_error"]
        assert record["epochs"] == curve[-1]["epoch"]
        assert record["train_loss"] == curve[-1]["train_loss"]

    def test_validation_every_epoch_when_asked(self, tiny_cifar: data_mod.Cifar10) -> None:
        record = _train(tiny_cifar, budget=0.2, eval_every_epoch=True)
        assert all(p["validation_error"] is not None for p in record["learning_curve"])

    def test_same_seed_same_run_and_another_seed_another_run(
        self, tiny_cifar: data_mod.Cifar10
    ) -> None:
        def fingerprint(r: train.ResultRecord) -> tuple[Any, ...]:
            return r["validation_loss"], r["test_error"], [p["train_loss"] for p in
                                                           r["learning_curve"]]

        first = fingerprint(_train(tiny_cifar, seed=7))
        assert fingerprint(_train(tiny_cifar, seed=7)) == first
        assert fingerprint(_train(tiny_cifar, seed=8)) != first

    def test_warm_up_steps_leave_no_trace_in_the_run(
        self, tiny_cifar: data_mod.Cifar10, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with_warm_up = _train(tiny_cifar, seed=1)
        monkeypatch.setitem(train.WARMUP_STEPS, "cpu", 0)
        without = _train(tiny_cifar, seed=1)
        assert with_warm_up["validation_loss"] == without["validation_loss"]
        assert with_warm_up["train_loss"] == without["train_loss"]


class TestSchedule:
    def test_training_stops_mid_epoch_when_the_budget_is_spent(
        self, tiny_cifar: data_mod.Cifar10
    ) -> None:
        record = _train(tiny_cifar, budget=0.052)
        assert record["steps"] == 5
        assert record["epochs"] == pytest.approx(5 / STEPS_PER_EPOCH)
        assert record["train_seconds"] == pytest.approx(0.05)

    def test_learning_rate_follows_sgdr_on_the_training_clock(
        self, tiny_cifar: data_mod.Cifar10
    ) -> None:
        # min period 0.04 s and budget 0.28 s: three cycles, 0.04 + 0.08 + 0.16.
        record = _train(tiny_cifar, budget=0.28, sgdr_min_period=0.04)
        sgdr = schedule.SGDR(_fast_config()["learning_rate"], 0.28, 0.04)
        assert sgdr.cycles == 3
        for point in record["learning_curve"]:
            steps = round(point["epoch"] * STEPS_PER_EPOCH)
            # The lr of a step is read from the clock before the step.
            assert point["lr"] == pytest.approx(sgdr.lr((steps - 1) * 0.01))


class TestBudgetAccounting:
    def test_evaluation_time_is_not_charged_to_the_budget(
        self, tiny_cifar: data_mod.Cifar10, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_evaluate = train._Run._evaluate

        def slow_evaluate(self: Any, net: Any, split: str) -> tuple[float, float]:
            time.sleep(0.25)
            return real_evaluate(self, net, split)

        monkeypatch.setattr(train._Run, "_evaluate", slow_evaluate)
        budget = 1.0
        record = _train(tiny_cifar, budget, clock=None, eval_every_epoch=True)
        evaluations = len(record["learning_curve"]) + 1
        step = record["train_seconds"] / record["steps"]
        assert record["train_seconds"] == pytest.approx(budget, abs=step + 0.05)
        assert record["wall_seconds"] >= budget + 0.25 * evaluations

    def test_download_time_is_not_charged_to_the_budget(
        self, tmp_path: Path, http_root: tuple[Path, str, Any]
    ) -> None:
        root, url, handler = http_root
        md5 = make_archive(root / "c.tar.gz", make_cifar(n_train=320, n_test=50))
        handler.delay = 1.5
        started = time.perf_counter()
        record = train.train(
            _fast_config(), 0.5, f"{url}/c.tar.gz", data_md5=md5, cache_dir=tmp_path / "cache",
            device="cpu", threads=1,
        )
        assert record["status"] == "ok"
        step = record["train_seconds"] / record["steps"]
        assert record["train_seconds"] == pytest.approx(0.5, abs=step + 0.05)
        assert record["wall_seconds"] >= 2.0
        assert time.perf_counter() - started >= record["wall_seconds"]

    def test_progress_reports_each_epoch_and_its_failures_do_not_stop_training(
        self, tiny_cifar: data_mod.Cifar10
    ) -> None:
        seen: list[dict[str, Any]] = []

        def flaky(point: dict[str, Any]) -> None:
            seen.append(point)
            raise ConnectionError("reporter is down")

        record = _train(tiny_cifar, budget=0.2, progress=flaky)
        assert record["status"] == "ok"
        assert [p["epoch"] for p in seen] == [p["epoch"] for p in record["learning_curve"]]
        assert all(p["budget_seconds"] == 0.2 for p in seen)
        assert seen[-1]["validation_error"] == record["validation_error"]


class TestFailures:
    def test_nan_loss_ends_the_run_as_diverged_without_nan_in_the_record(
        self, tiny_cifar: data_mod.Cifar10, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_forward = model.Network.forward
        calls = {"n": 0}

        def poisoned(self: model.Network, x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            out = real_forward(self, x)
            # Warm-up (one step) and three training steps are fine, then the loss is NaN.
            return out * float("nan") if calls["n"] > 4 else out

        monkeypatch.setattr(model.Network, "forward", poisoned)
        record = _train(tiny_cifar, budget=0.2)
        assert record["status"] == "diverged"
        assert "step 4" in (record["message"] or "")
        assert record["steps"] == 4
        assert record["validation_error"] is None and record["test_error"] is None
        _strict_json(record)

    def test_infinite_train_loss_becomes_null(self) -> None:
        record: Any = {"train_loss": math.inf, "learning_curve": [{"train_loss": math.nan}]}
        assert train.finite_record(record) == {
            "train_loss": None, "learning_curve": [{"train_loss": None}]
        }

    @pytest.mark.parametrize(
        ("exc", "expected"),
        [
            (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
            (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"), True),
            (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
            (MemoryError(), True),
            (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
            (ValueError("out of memory"), False),
        ],
    )
    def test_allocation_failures_are_recognised(
        self, exc: BaseException, expected: bool
    ) -> None:
        assert train.is_out_of_memory(exc) is expected

    @pytest.mark.parametrize(
        ("exc", "status"),
        [
            (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
             "out_of_memory"),
            (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"), "error"),
        ],
    )
    def test_runtime_failures_during_training_become_a_status(
        self, tiny_cifar: data_mod.Cifar10, monkeypatch: pytest.MonkeyPatch,
        exc: BaseException, status: str,
    ) -> None:
        def failing(self: model.Network, x: torch.Tensor) -> torch.Tensor:
            raise exc

        monkeypatch.setattr(model.Network, "forward", failing)
        record = _train(tiny_cifar)
        assert record["status"] == status
        assert type(exc).__name__ in (record["message"] or "")
        _strict_json(record)

    def test_network_too_large_for_memory_is_refused_before_it_is_built(
        self, tiny_cifar: data_mod.Cifar10, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The space's largest network: ~25 billion parameters.
        largest = {p.name: p.high for p in params.PARAMETERS}

        def no_build(*args: Any) -> None:
            raise AssertionError("the network was built")

        monkeypatch.setattr(model.Network, "__init__", no_build)
        record = _train(tiny_cifar, config=largest)
        assert record["status"] == "out_of_memory"
        assert "GiB" in (record["message"] or "")
        assert record["n_params"] == model.count_parameters(largest) > 10**10
        assert record["steps"] == 0 and record["learning_curve"] == []

    def test_memory_estimate_grows_with_batch_and_width(self) -> None:
        small = model.estimate_memory_bytes(make_config(), half_precision=False)
        assert model.estimate_memory_bytes(make_config(batch_size=64), False) > small
        assert model.estimate_memory_bytes(make_config(initial_filters=16), False) > small
        assert model.estimate_memory_bytes(make_config(), half_precision=True) < small


class TestInvalidInput:
    @pytest.mark.parametrize(
        ("config", "parameter"),
        [
            (make_config(color="red"), "color"),
            ({k: v for k, v in make_config().items() if k != "momentum"}, "momentum"),
            (make_config(batch_size=256), "batch_size"),
            (make_config(length=3.5), "length"),
            (make_config(learning_rate="fast"), "learning_rate"),
        ],
    )
    def test_bad_configuration_is_refused_naming_the_parameter(
        self, tiny_cifar: data_mod.Cifar10, config: dict[str, Any], parameter: str
    ) -> None:
        with pytest.raises(params.ConfigError) as err:
            _train(tiny_cifar, config=config)
        assert err.value.parameter == parameter

    @pytest.mark.parametrize(
        ("kwargs", "parameter"),
        [({"budget": 0}, "budget"), ({"budget": math.nan}, "budget"),
         ({"device": "tpu"}, "device"), ({"threads": 0}, "threads")],
    )
    def test_bad_budget_device_or_threads_are_refused(
        self, tiny_cifar: data_mod.Cifar10, kwargs: dict[str, Any], parameter: str
    ) -> None:
        args: dict[str, Any] = {"budget": 1.0, "device": "cpu", "threads": 1} | kwargs
        with pytest.raises(params.ConfigError) as err:
            train.train(make_config(), args.pop("budget"), tiny_cifar, **args)
        assert err.value.parameter == parameter

    def test_cuda_without_a_gpu_is_refused(self) -> None:
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        with pytest.raises(params.ConfigError, match="CUDA is not available"):
            train.resolve_device("cuda")


@pytest.mark.slow
def test_real_cifar10_trains_below_chance_in_a_short_budget(
    real_cifar: data_mod.Cifar10,
) -> None:
    # One thread: on a shared, busy CPU two OpenMP threads can be several times slower.
    config = make_config(batch_size=64, learning_rate=0.1, alpha=0.0, length=0, death_rate=0.0)
    record = train.train(config, 25.0, real_cifar, device="cpu", threads=1)
    assert record["status"] == "ok", record["message"]
    step = record["train_seconds"] / record["steps"]
    assert record["train_seconds"] == pytest.approx(25.0, abs=step)
    # Ten classes: chance is 0.9.
    assert (record["validation_error"] or 1.0) < 0.85
    assert (record["test_error"] or 1.0) < 0.85
    _strict_json(record)
