"""``nas-bohb analyze`` as the CLI glue calls it: add_parser, then args.func(args)."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import pytest

from controller.analysis import cli
from tests.analysis import factories


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nas-bohb")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_analyze_writes_the_report_and_prints_notes_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = factories.synthetic_search(tmp_path / "run", n=9, promote=3)
    args = _parse("analyze", str(folder), "--out", str(tmp_path / "report"),
                  "--forest-seeds", "1")

    assert args.func(args) == 0

    out, err = capsys.readouterr()
    assert "Report written to" in out and str(tmp_path / "report" / "report.md") in out
    assert "note: Budgets 30 s and 90 s: only 1 configuration(s)" in err
    assert (tmp_path / "report" / "summary.json").is_file()


def test_the_report_goes_inside_the_run_folder_by_default(tmp_path: Path) -> None:
    folder = factories.synthetic_search(tmp_path / "run", n=6, budgets=(10.0,))
    args = _parse("analyze", str(folder / "results.json"), "--forest-seeds", "1")

    assert args.func(args) == 0
    assert (folder / "analysis" / "report.md").is_file()


@pytest.mark.parametrize("source, message", [
    pytest.param("no/such/folder/here", "neither an existing folder", id="not-a-source"),
    pytest.param("{tmp}", "holds neither configs.json nor results.json", id="empty-folder"),
    pytest.param("{tmp}/file.txt", "is a file", id="a-file"),
])
def test_an_unusable_source_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, message: str
) -> None:
    (tmp_path / "file.txt").write_text("x")
    args = _parse("analyze", source.format(tmp=tmp_path), "--out", str(tmp_path / "out"))

    assert args.func(args) == 2

    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("nas-bohb analyze: error:")


def test_a_joint_search_without_the_operator_package_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "controller.kube.export", None)  # import fails
    args = _parse("analyze", "team-a/cifar-search", "--out", str(tmp_path / "out"))

    assert args.func(args) == 2

    err = capsys.readouterr().err
    assert "JointSearch team-a/cifar-search" in err and "controller.kube.export" in err


def test_a_joint_search_is_exported_then_analysed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def export_search(namespace: str, name: str, dest_dir: Path) -> None:
        # Stands in for the operator's exporter: writes the hpbandster files it promises.
        calls.append((namespace, name))
        factories.synthetic_search(Path(dest_dir), n=6, budgets=(10.0,))

    module = types.ModuleType("controller.kube.export")
    module.export_search = export_search  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "controller.kube.export", module)
    args = _parse("analyze", "team-a/cifar-search", "--out", str(tmp_path / "out"),
                  "--forest-seeds", "1")

    assert args.func(args) == 0
    assert calls == [("team-a", "cifar-search")]
    assert (tmp_path / "out" / "source" / "results.json").is_file()
    assert "JointSearch team-a/cifar-search" in (tmp_path / "out" / "report.md").read_text()


def test_an_exporter_failure_is_reported_as_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def export_search(namespace: str, name: str, dest_dir: Path) -> None:
        raise LookupError(f"jointsearches {name!r} not found")

    module = types.ModuleType("controller.kube.export")
    module.export_search = export_search  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "controller.kube.export", module)
    args = _parse("analyze", "team-a/missing", "--out", str(tmp_path / "out"))

    assert args.func(args) == 2
    assert "'missing' not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_joint_search_without_a_cluster_names_where_the_cluster_is_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real exporter, with no kubeconfig and no service account to find.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("NAS_BOHB_SERVICEACCOUNT_DIR", raising=False)
    kept = tmp_path / "kept"
    kept.mkdir()
    args = _parse("analyze", "team-a/cifar-search", "--out", str(kept / "report" / "here"))

    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "JointSearch team-a/cifar-search" in err and "KUBECONFIG" in err
    assert list(kept.iterdir()) == []  # the folders made for the export are gone again


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_forest_seeds_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(SystemExit):
        _parse("analyze", "x", "--forest-seeds", value)


def test_an_unexpected_failure_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.analysis import report

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(report, "analyze", broken)
    folder = factories.synthetic_search(tmp_path / "run", n=3, budgets=(10.0,))
    args = _parse("analyze", str(folder))

    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "unexpected RuntimeError: simulated bug" in err and "Traceback" not in err
