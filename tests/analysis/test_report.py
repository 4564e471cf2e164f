"""The report folder end to end: every section, every file, and partial input as notes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.analysis import report
from tests.analysis import factories

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS = 2


def _strict_json(path: Path) -> Any:
    """Parse JSON, failing on NaN or Infinity (which json.loads would accept)."""
    def refuse(token: str) -> None:
        raise AssertionError(f"{path.name} holds {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def hyperband_loss(config: factories.Config, budget: float, rng: np.random.Generator) -> float:
    """Correlated budgets, learning rate dominant, high momentum diverging on 90 s."""
    if budget == 90.0 and config["momentum"] > 0.5:
        return math.nan
    return factories.lr_dominates(config, budget, rng) / budget ** 0.1


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> report.Report:
    """One search shaped like a Hyperband bracket, with baselines, analysed once."""
    folder = tmp_path_factory.mktemp("search") / "run"
    factories.synthetic_search(
        folder, n=45, promote=3, loss=hyperband_loss, seed=5,
        baselines=[
            {"name": "ResNet-18", "config": {"learning_rate": 0.1}, "budget": 90,
             "record": factories.trainer_record(0.31, 90)},
            {"name": "Shake-Shake 26 2x32d", "config": {}, "budget": 90, "record": None},
        ])
    return report.analyze(folder, folder.parent / "report", seeds=SEEDS)


def test_every_plot_kind_is_a_png(full_report: report.Report) -> None:
    expected = {"budget_correlation.png", "importance_10s.png", "importance_30s.png",
                "incumbent_trajectory.png", "losses_over_time.png", "concurrency.png",
                "learning_curves.png", "picks.png", "comparison.png"}
    for name in expected:
        data = (full_report.out_dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name
    assert expected <= {p.name for p in full_report.files}


def test_summary_holds_correlations_and_sorted_importances_without_nan(
    full_report: report.Report,
) -> None:
    summary = _strict_json(full_report.out_dir / "summary.json")

    pairs = summary["budget_correlation"]["pairs"]
    assert [p["budgets"] for p in pairs] == [[10, 30], [10, 90], [30, 90]]
    first = pairs[0]
    # Only the best third is promoted, so rho is lower than over all configurations.
    assert first["n"] == 15 and first["rho"] > 0.6 and 0 <= first["p"] < 0.05
    assert first["weak"] is False
    per_budget = summary["importance"]["per_budget"]
    assert [b["budget"] for b in per_budget] == [10, 30, 90]
    top = per_budget[0]["individual"]
    assert top[0]["parameter"] == "learning_rate"
    assert [i["mean"] for i in top] == sorted((i["mean"] for i in top), reverse=True)
    assert per_budget[2]["individual"] == []  # 5 runs, some diverged: too few
    assert summary["importance"]["log_scaled"] == ["batch_size", "learning_rate"]
    diverged = (full_report.out_dir.parent / "run" / "results.json").read_text().count("NaN")
    assert summary["counts"]["failed_runs"] == diverged > 0
    assert summary["concurrency"]["workers"] == 2


def test_the_comparison_table_lists_the_incumbent_and_the_baselines(
    full_report: report.Report,
) -> None:
    rows = (full_report.out_dir / "comparison.csv").read_text().splitlines()
    summary = _strict_json(full_report.out_dir / "summary.json")

    assert [r["name"] for r in summary["comparison"]][1:] == ["ResNet-18",
                                                               "Shake-Shake 26 2x32d"]
    incumbent = summary["comparison"][0]
    assert incumbent["kind"] == "incumbent" and incumbent["budget"] == 90
    assert incumbent["test_error"] == pytest.approx(incumbent["validation_error"] + 0.01)
    assert rows[0].startswith("name,kind,budget,n_params,validation_error,test_error")
    markdown = (full_report.out_dir / "report.md").read_text()
    assert "| ResNet-18 | 90 s | 0.25 | 31.00 | 32.00 | 90 | ok |" in markdown
    assert "| Shake-Shake 26 2x32d | 90 s | n/a | n/a | n/a | n/a | not run |" in markdown


def test_the_markdown_has_every_section_and_links_existing_plots(
    full_report: report.Report,
) -> None:
    markdown = (full_report.out_dir / "report.md").read_text()

    for heading in ("## Budgets", "## Budget rank correlation",
                    "## Parameter importance (fANOVA)", "## Over time",
                    "## Model-based vs random configurations", "## Incumbent vs baselines"):
        assert heading in markdown
    for line in markdown.splitlines():
        if line.startswith("!["):
            assert (full_report.out_dir / line.split("(")[1].rstrip(")")).is_file()
    assert "Budget 90 s: importance skipped" in markdown


def test_csv_tables_match_the_summary(full_report: report.Report) -> None:
    lines = (full_report.out_dir / "importance.csv").read_text().splitlines()
    summary = _strict_json(full_report.out_dir / "summary.json")

    first = lines[1].split(",")
    top = summary["importance"]["per_budget"][0]["individual"][0]
    assert first[:3] == ["10", "1", top["parameter"]]
    assert float(first[3]) == pytest.approx(top["mean"], rel=1e-5)
    runs = (full_report.out_dir / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 45 + 15 + 5


class TestPartialInput:
    def test_a_search_with_no_results_still_writes_a_report(self, tmp_path: Path) -> None:
        folder = factories.write_search(
            tmp_path / "run", [((0, 0, 0), factories.sample_config(np.random.default_rng()),
                                {})], [])

        result = report.analyze(folder, tmp_path / "out", seeds=SEEDS)

        summary = _strict_json(tmp_path / "out" / "summary.json")
        assert summary["counts"]["runs"] == 0
        assert any("no finished run" in n for n in result.notes)
        assert "no finished run" in (tmp_path / "out" / "report.md").read_text()

    def test_a_search_where_every_run_failed_still_writes_a_report(
        self, tmp_path: Path
    ) -> None:
        folder = factories.synthetic_search(tmp_path / "run", n=6, loss=lambda c, b, r: None)

        result = report.analyze(folder, tmp_path / "out", seeds=SEEDS)

        summary = _strict_json(tmp_path / "out" / "summary.json")
        assert summary["counts"]["failed_runs"] == summary["counts"]["runs"] == 18
        assert all(p["rho"] is None for p in summary["budget_correlation"]["pairs"])
        assert summary["comparison"] == []
        assert any("importance skipped, only 0" in n for n in result.notes)
        assert (tmp_path / "out" / "losses_over_time.png").is_file()

    def test_a_budget_with_one_result_is_reported_with_notes(self, tmp_path: Path) -> None:
        folder = factories.synthetic_search(tmp_path / "run", n=9, promote=9)

        result = report.analyze(folder, tmp_path / "out", seeds=SEEDS)

        summary = _strict_json(tmp_path / "out" / "summary.json")
        assert [b["runs"] for b in summary["counts"]["per_budget"]] == [9, 1, 1]
        assert any("Budget 30 s: importance skipped, only 1" in n for n in result.notes)
        assert any("only 1 configuration(s) finished on both" in n for n in result.notes)
        assert (tmp_path / "out" / "importance_10s.png").is_file()

    def test_a_truncated_search_still_being_written_reports_what_finished(
        self, tmp_path: Path
    ) -> None:
        folder = factories.synthetic_search(tmp_path / "run", n=12, promote=3)
        results = folder / "results.json"
        text = results.read_text()
        results.write_text(text[: len(text) - 40])  # cut inside the last line
        with (folder / "configs.json").open("a") as fh:  # a sampled, unfinished config
            fh.write(json.dumps([[1, 0, 0], {"learning_rate": 0.01}, {}]) + "\n")

        result = report.analyze(folder, tmp_path / "out", seeds=SEEDS)

        assert any("cut off" in n for n in result.notes)
        assert any("have no result yet" in n for n in result.notes)
        assert _strict_json(tmp_path / "out" / "summary.json")["counts"]["runs"] == 12 + 4 + 1 - 1

    def test_runs_without_timestamps_or_curves_give_notes_not_plots(
        self, tmp_path: Path
    ) -> None:
        configs = [((0, 0, k), {"x": float(k)}, {}) for k in range(6)]
        results = [[[0, 0, k], 10.0, {}, {"loss": 0.1 * k, "info": {}}, None]
                   for k in range(6)]
        folder = factories.write_search(tmp_path / "run", configs, results, spec=None)

        result = report.analyze(folder, tmp_path / "out", seeds=SEEDS)

        names = {p.name for p in result.files}
        assert "losses_over_time.png" not in names and "learning_curves.png" not in names
        assert any("No run has a finishing time" in n for n in result.notes)
        assert any("learning curve" in n for n in result.notes)
        assert "importance_10s.png" in names
