"""Reading hpbandster files: real logger output, and every damaged input as a note."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.analysis import AnalysisError, load, trajectory
from tests.analysis import factories


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _small_search(tmp_path: Path) -> Path:
    return factories.synthetic_search(tmp_path / "run", n=6, budgets=(10.0, 30.0))


class TestHpbandsterCompatibility:
    def test_files_written_by_hpbandsters_logger_read_back_with_its_incumbents(
        self, tmp_path: Path
    ) -> None:
        from hpbandster.core.dispatcher import Job
        from hpbandster.core.result import json_result_logger, logged_results_to_HBS_result

        logger = json_result_logger(str(tmp_path), overwrite=True)
        runs = [  # (config id, budget, loss or None for a crash, start time)
            ((0, 0, 0), 10.0, 0.50, 0.0), ((0, 0, 1), 10.0, 0.40, 1.0),
            ((0, 0, 2), 10.0, None, 2.0), ((0, 0, 1), 30.0, 0.45, 3.0),
            ((0, 0, 0), 30.0, 0.30, 4.0), ((1, 0, 0), 10.0, 0.10, 5.0),
        ]
        for cid, budget, loss, start in runs:
            logger.new_config(cid, {"x": cid[2]}, {"model_based_pick": cid[0] == 1})
            job = Job(cid, config={"x": cid[2]}, budget=budget)
            job.timestamps = {"submitted": 1000 + start, "started": 1000 + start + 0.1,
                              "finished": 1000 + start + 0.9}
            if loss is None:
                job.exception = "Traceback (most recent call last):\nRuntimeError: boom"
            else:
                job.result = {"loss": loss, "info": {"status": "ok"}}
            logger(job)

        search = load.load_search(tmp_path)
        theirs = logged_results_to_HBS_result(str(tmp_path)).get_incumbent_trajectory()
        ours = trajectory.incumbent_overall(search)

        # hpbandster repeats the last incumbent at the last run's end; we draw that instead.
        assert theirs["losses"][-1] == theirs["losses"][-2]
        theirs = {k: v[:-1] for k, v in theirs.items()}

        assert [s.config_id for s in ours] == ["-".join(map(str, c))
                                               for c in theirs["config_ids"]]
        assert [s.loss for s in ours] == theirs["losses"]
        assert [s.time for s in ours] == pytest.approx(theirs["times_finished"])
        crashed = next(r for r in search.runs if r.config_id == "0-0-2")
        assert crashed.loss is None and crashed.status == "failed"
        assert crashed.message == "RuntimeError: boom"
        assert search.configs["1-0-0"].model_based is True
        assert search.notes == []


class TestDamagedInput:
    def test_a_truncated_last_results_line_is_skipped_with_a_note(self, tmp_path: Path) -> None:
        folder = _small_search(tmp_path)
        results = folder / "results.json"
        lines = results.read_text().splitlines()
        _write_lines(results, [*lines[:-1], lines[-1][: len(lines[-1]) // 2]])

        search = load.load_search(folder)

        assert len(search.runs) == len(lines) - 1
        assert any("cut off" in n and f"line {len(lines)}" in n for n in search.notes)

    def test_a_garbage_line_in_the_middle_is_skipped_with_a_note(self, tmp_path: Path) -> None:
        folder = _small_search(tmp_path)
        results = folder / "results.json"
        lines = results.read_text().splitlines()
        _write_lines(results, [lines[0], "{not json", *lines[1:]])

        search = load.load_search(folder)

        assert len(search.runs) == len(lines)
        assert any("line 2 not JSON" in n for n in search.notes)

    def test_non_finite_and_null_losses_are_failed_runs(self, tmp_path: Path) -> None:
        stamps = json.dumps({"submitted": 0, "started": 0, "finished": 1})
        (tmp_path / "configs.json").write_text("".join(
            json.dumps([[0, 0, k], {"x": k}, {}]) + "\n" for k in range(3)))
        # Written by hand: NaN and Infinity are what Python's json writes for such losses.
        _write_lines(tmp_path / "results.json", [
            f'[[0, 0, 0], 10, {stamps}, {{"loss": NaN, "info": {{}}}}, null]',
            f'[[0, 0, 1], 10, {stamps}, {{"loss": Infinity, "info": {{"status": "diverged"}}}}, '
            "null]",
            f'[[0, 0, 2], 10, {stamps}, {{"loss": null, "info": {{}}}}, null]',
        ])

        search = load.load_search(tmp_path)

        assert [(r.loss, r.status) for r in search.runs] == [
            (None, "failed"), (None, "diverged"), (None, "failed")]

    def test_configurations_without_results_are_noted_as_still_running(
        self, tmp_path: Path
    ) -> None:
        folder = _small_search(tmp_path)
        with (folder / "configs.json").open("a") as fh:
            fh.write(json.dumps([[1, 0, 0], {"learning_rate": 0.1}, {}]) + "\n")

        search = load.load_search(folder)

        assert any("1 of 7 configuration(s) have no result yet" in n for n in search.notes)

    def test_bad_ids_budgets_and_shapes_are_skipped_with_notes(self, tmp_path: Path) -> None:
        _write_lines(tmp_path / "configs.json", [
            json.dumps([[0, 0, 0], {"x": 1}]),  # old two-element form: accepted
            json.dumps([[0, 0], {"x": 2}, {}]),
            json.dumps({"id": 1}),
        ])
        ok = factories.result_line((0, 0, 0), 10.0, 0.5, 0.0, 1.0)
        _write_lines(tmp_path / "results.json", [
            json.dumps(ok),
            json.dumps(factories.result_line((0, 0, 0), -5.0, 0.5, 0.0, 1.0)),
            json.dumps([[0, 0, 0], 10.0]),
            json.dumps(factories.result_line((9, 9, 9), 10.0, 0.4, 0.0, 1.0)),
        ])

        search = load.load_search(tmp_path)

        assert list(search.configs) == ["0-0-0"]
        assert {r.config_id for r in search.runs} == {"0-0-0", "9-9-9"}
        assert any(n.startswith("configs.json: skipped 2 line(s)") for n in search.notes)
        assert any(n.startswith("results.json: skipped 2 line(s)") for n in search.notes)
        assert any("missing from configs.json" in n for n in search.notes)

    def test_a_repeated_run_keeps_the_last_line_with_a_note(self, tmp_path: Path) -> None:
        factories.write_search(tmp_path, [((0, 0, 0), {"x": 1}, {})], [
            factories.result_line((0, 0, 0), 10.0, 0.9, 0.0, 1.0),
            factories.result_line((0, 0, 0), 10.0, 0.3, 2.0, 3.0),
        ], spec=None)

        search = load.load_search(tmp_path)

        assert [r.loss for r in search.runs] == [0.3]
        assert any("more than once" in n for n in search.notes)

    def test_an_empty_results_file_is_a_search_with_nothing_to_analyse(
        self, tmp_path: Path
    ) -> None:
        factories.write_search(tmp_path, [((0, 0, 0), {"x": 1}, {})], [], spec=None)

        search = load.load_search(tmp_path)

        assert search.runs == [] and search.budgets == []
        assert any("no finished run" in n for n in search.notes)

    def test_damaged_baselines_are_noted_and_ignored(self, tmp_path: Path) -> None:
        folder = _small_search(tmp_path)
        (folder / "baselines.json").write_text('[{"config": {}}, {"name": "ResNet-18"}]')

        search = load.load_search(folder)

        assert [b.name for b in search.baselines] == ["ResNet-18"]
        assert search.baselines[0].record is None
        assert any("entry 0 has no 'name'" in n for n in search.notes)

    @pytest.mark.parametrize("make", [
        pytest.param(lambda p: p / "missing", id="missing-folder"),
        pytest.param(lambda p: p, id="folder-without-files"),
    ])
    def test_a_source_without_hpbandster_files_is_an_error(
        self, tmp_path: Path, make: Callable[[Path], Path]
    ) -> None:
        with pytest.raises(AnalysisError, match=r"configs\.json|not a folder"):
            load.load_search(make(tmp_path))
