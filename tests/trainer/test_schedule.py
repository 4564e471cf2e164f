"""SGDR on training seconds against the paper's cycle table, and the budget's clocks."""

from __future__ import annotations

import time

import pytest

from trainer import schedule

# Zela et al. (2018): budget -> SGDR periods (T_mul = 2) ending exactly at the budget.
PAPER_TABLE = [
    (400, [400.0]),
    (1200, [400.0, 800.0]),
    (3600, [514.2857, 1028.5714, 2057.1429]),
    (10800, [720.0, 1440.0, 2880.0, 5760.0]),
]


class TestSGDRCycles:
    @pytest.mark.parametrize(("budget", "periods"), PAPER_TABLE)
    def test_periods_match_the_paper_table(self, budget: float, periods: list[float]) -> None:
        sgdr = schedule.SGDR(base_lr=0.1, budget=budget)
        assert sgdr.periods() == pytest.approx(periods, abs=1e-3)
        assert sum(sgdr.periods()) == pytest.approx(budget)

    @pytest.mark.parametrize("budget", [1, 10, 30, 90, 399, 1199.9])
    def test_small_budgets_get_one_cycle(self, budget: float) -> None:
        assert schedule.sgdr_cycles(budget) == 1

    @pytest.mark.parametrize(
        ("budget", "cycles"), [(2000, 2), (2799, 2), (2800, 3), (5999, 3), (6000, 4), (12399, 4),
                               (12400, 5)]
    )
    def test_budgets_between_the_paper_rungs_keep_the_first_period_at_least_400_s(
        self, budget: float, cycles: int
    ) -> None:
        sgdr = schedule.SGDR(0.1, budget)
        assert sgdr.cycles == cycles
        assert sgdr.first_period >= 400
        # One more cycle would make the first period shorter than 400 s.
        assert budget / (2 ** (cycles + 1) - 1) < 400

    def test_minimum_period_scales_the_rule_for_short_budget_ladders(self) -> None:
        # A CPU ladder 10, 30, 90 with min period 10 mirrors the paper's 400, 1200, 3600.
        assert [schedule.sgdr_cycles(b, 10) for b in (10, 30, 90)] == [1, 2, 3]


class TestSGDRLearningRate:
    def test_each_cycle_starts_at_the_peak_and_decays_to_zero(self) -> None:
        sgdr = schedule.SGDR(base_lr=0.2, budget=3600)
        starts = [0.0, 514.2857142857, 1542.8571428571]
        for start, period in zip(starts, sgdr.periods(), strict=True):
            assert sgdr.lr(start + 1e-6) == pytest.approx(0.2, rel=1e-6)
            assert sgdr.lr(start + period / 2) == pytest.approx(0.1, rel=1e-6)
            assert sgdr.lr(start + period - 1e-6) == pytest.approx(0.0, abs=1e-9)

    def test_learning_rate_ends_at_zero_and_stays_there(self) -> None:
        sgdr = schedule.SGDR(base_lr=0.5, budget=1200)
        assert sgdr.lr(1200) == pytest.approx(0.0, abs=1e-12)
        assert sgdr.lr(5000) == pytest.approx(0.0, abs=1e-12)

    def test_learning_rate_follows_the_cosine(self) -> None:
        sgdr = schedule.SGDR(base_lr=1.0, budget=400)
        assert sgdr.lr(100) == pytest.approx((1 + 2**-0.5) / 2)

    def test_nonpositive_budget_is_refused(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            schedule.sgdr_cycles(0)


class TestClocks:
    def test_measured_clock_counts_only_while_running(self) -> None:
        clock = schedule.MeasuredClock()
        clock.start()
        time.sleep(0.05)
        clock.stop()
        time.sleep(0.2)
        clock.start()
        time.sleep(0.05)
        clock.stop()
        assert 0.09 <= clock.elapsed() < 0.2

    def test_measured_clock_waits_for_the_device_when_stopped(self) -> None:
        calls: list[str] = []
        clock = schedule.MeasuredClock(sync=lambda: calls.append("sync"))
        clock.start()
        clock.stop()
        assert calls == ["sync", "sync"]

    def test_step_clock_charges_a_fixed_cost_per_step_while_running(self) -> None:
        clock = schedule.StepClock(0.5)
        clock.tick()
        clock.start()
        clock.tick()
        clock.tick()
        clock.stop()
        clock.tick()
        assert clock.elapsed() == 1.0
