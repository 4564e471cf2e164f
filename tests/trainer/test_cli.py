"""``python -m trainer``: exit codes, the record file, progress lines, the reporter hook."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import (
    RECORD_FIELDS,
    REPO,
    make_archive,
    make_cifar,
    make_config,
    write_batches,
)
from trainer import cli


@pytest.fixture(scope="module")
def batches_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "cifar-10-batches-py"
    write_batches(folder, make_cifar(n_train=320, n_test=50))
    return folder


def _args(folder: Path, out: Path, config: dict[str, Any] | str | None = None,
          *extra: str) -> list[str]:
    if config is None:
        config = make_config(widen_factor_1=0.5)
    text = config if isinstance(config, str) else json.dumps(config)
    return ["--config", text, "--budget", "0.5", "--data", str(folder), "--output", str(out),
            "--device", "cpu", "--threads", "1", *extra]


def test_command_writes_a_complete_record_and_fixed_width_progress(
    batches_folder: Path, tmp_path: Path
) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(make_config(widen_factor_1=0.5)))
    out = tmp_path / "runs" / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "trainer",
         *_args(batches_folder, out, str(config_file), "--seed", "4")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert set(record) == RECORD_FIELDS
    assert record["status"] == "ok" and record["seed"] == 4
    table = [line for line in done.stderr.splitlines() if not line[:4].isdigit()]
    assert table[0] == cli.ProgressPrinter.HEADER
    assert len(table) == 1 + len(record["learning_curve"])
    assert {len(line) for line in table} == {len(cli.ProgressPrinter.HEADER)}
    assert list(out.parent.iterdir()) == [out]


def test_invalid_configuration_exits_2_naming_the_parameter_without_a_record(
    batches_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    code = cli.main(_args(batches_folder, out, make_config(death_rate=1.5)))
    assert code == 2
    assert "'death_rate'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("config", "needle"),
    [("{not json", "--config"), ("absent.json", "--config"),
     ('{"alpha": 0.1}', "'nr_residual_blocks_1'")],
)
def test_unreadable_or_incomplete_config_exits_2(
    batches_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    config: str, needle: str,
) -> None:
    assert cli.main(_args(batches_folder, tmp_path / "r.json", config)) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["0", "-3", "nan", "soon"])
def test_bad_budget_exits_2(
    batches_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: str
) -> None:
    args = _args(batches_folder, tmp_path / "r.json")
    args[args.index("--budget") + 1] = budget
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    assert "--budget" in capsys.readouterr().err


def test_bad_data_exits_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "c.tar.gz"
    make_archive(archive, make_cifar(n_train=50, n_test=10))
    out = tmp_path / "r.json"
    assert cli.main(_args(tmp_path / "absent", out)) == 2
    assert "--data" in capsys.readouterr().err
    args = _args(archive, out, None, "--data-md5", "f" * 32, "--cache-dir", str(tmp_path / "c"))
    assert cli.main(args) == 2
    assert "--data-md5" in capsys.readouterr().err
    assert not out.exists()


class _Recorder:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.progress: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.progress.append(progress)
        if self.fail:
            raise RuntimeError("API server unreachable")

    def on_result(self, record: dict[str, Any]) -> None:
        self.results.append(record)
        if self.fail:
            raise RuntimeError("API server unreachable")


@pytest.mark.parametrize("fail", [False, True], ids=["working", "failing"])
def test_reporter_hears_every_epoch_and_the_result_and_cannot_stop_training(
    batches_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    reporter = _Recorder(fail)
    kinds: list[str] = []
    fake = types.ModuleType("trainer.report")

    def make_reporter(kind: str) -> _Recorder:
        kinds.append(kind)
        return reporter

    fake.make_reporter = make_reporter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "trainer.report", fake)
    out = tmp_path / "r.json"
    assert cli.main(_args(batches_folder, out, None, "--report", "kube")) == 0
    record = json.loads(out.read_text())
    assert kinds == ["kube"]
    assert [p["epoch"] for p in reporter.progress] == [
        p["epoch"] for p in record["learning_curve"]
    ]
    assert set(reporter.progress[0]) == {"epoch", "train_seconds", "budget_seconds",
                                         "train_loss", "lr", "validation_error"}
    assert reporter.results == [record]


def test_missing_report_module_exits_2_with_a_clear_message(
    batches_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # None in sys.modules makes the import fail, as if the module were not installed.
    monkeypatch.setitem(sys.modules, "trainer.report", None)
    code = cli.main(_args(batches_folder, tmp_path / "r.json", None, "--report", "kube"))
    assert code == 2
    assert "trainer.report is not available" in capsys.readouterr().err


def test_record_file_is_replaced_atomically_and_never_holds_nan(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    cli.write_json_atomic(out, {"status": "ok"})
    cli.write_json_atomic(out, {"status": "diverged"})
    assert json.loads(out.read_text()) == {"status": "diverged"}
    with pytest.raises(ValueError):
        cli.write_json_atomic(out, {"loss": float("nan")})
    assert json.loads(out.read_text()) == {"status": "diverged"}
    assert list(tmp_path.iterdir()) == [out]


def test_progress_line_shows_dashes_for_unknown_values() -> None:
    line = cli.ProgressPrinter.format(
        {"epoch": 1.0, "train_seconds": 2.0, "budget_seconds": 400.0, "train_loss": None,
         "lr": 0.1, "validation_error": None}, wall=3.0)
    assert len(line) == len(cli.ProgressPrinter.HEADER)
    assert line.split()[3] == "-" and line.split()[5] == "-"
