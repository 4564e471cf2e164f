"""The local executor with a fake trainer: failures, outside kills, overruns, re-attachment,
and a controller killed with SIGKILL that continues without losing or repeating work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import spec as spec_mod
from controller.engine import TrialRequest
from controller.local import devices
from controller.local.executor import LocalExecutor
from controller.local.runner import DataSource, SubprocessRunner, Verdict
from tests.controller.factories import (
    CONSTANTS,
    LR,
    fake_trainer_command,
    small_space,
    spec_dict,
)

pytestmark = pytest.mark.filterwarnings("ignore:After 0.17:FutureWarning")

BRANCHES = {"name": "res_branches_1", "type": "categorical", "choices": [1, 2, 4]}
DEATH = {"name": "death_rate", "type": "float", "low": 0.0, "high": 1.0, "default": 0.0}


def local_spec(**overrides: Any) -> dict[str, Any]:
    trainer = {"command": fake_trainer_command(), "threads": 1,
               **overrides.pop("trainer", {})}
    return spec_dict(trainer=trainer, **overrides)


def run_local(run_dir: Path, document: dict[str, Any]) -> LocalExecutor:
    spec = spec_mod.load_spec(document)
    slots = devices.plan_slots(spec.parallel_trial_count, spec.trainer, gpus=[])
    executor = LocalExecutor(
        spec, run_dir, slots,
        lambda notify: SubprocessRunner(spec, run_dir, DataSource(), notify),
        tick_seconds=0.2,
    )
    executor.run()
    return executor


def events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]


def starts_per_trial(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines():
        trial = Path(line).parent.name
        counts[trial] = counts.get(trial, 0) + 1
    return counts


# --- how trials end ---------------------------------------------------------------------


def test_crashed_and_diverged_trainers_are_failed_runs(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRAINER_CRASH_IF", "config['learning_rate'] > 0.3")
    monkeypatch.setenv("FAKE_TRAINER_DIVERGE_IF", "config['learning_rate'] < 0.003")
    executor = run_local(tmp_path, local_spec(maxIterations=1))
    assert executor.engine is not None
    statuses = {r.trial_id: r for r in executor.engine.results()}
    crashed = [r for r in statuses.values() if r.config["learning_rate"] > 0.3]
    diverged = [r for r in statuses.values() if r.config["learning_rate"] < 0.003]
    assert crashed or diverged, "seed 3 samples both regions"
    for r in crashed:
        assert r.outcome.status == "crashed" and r.outcome.loss == float("inf")
        assert "exit code 1" in r.outcome.message
    for r in diverged:
        assert r.outcome.status == "diverged" and r.outcome.loss == float("inf")
    results = [json.loads(line) for line in (tmp_path / "results.json").read_text().splitlines()]
    assert sum(line[3] is None for line in results) == len(crashed) + len(diverged)


def test_overrunning_trainer_is_killed_and_counts_as_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRAINER_SCALE", "5")  # sleeps 5x its budget
    document = local_spec(maxIterations=None, maxTrialCount=1, parallelTrialCount=1,
                          trainer={"overrunFactor": 1.0, "startupAllowanceSeconds": 1.0})
    started = time.monotonic()
    executor = run_local(tmp_path, document)
    assert time.monotonic() - started < 30
    assert executor.engine is not None
    (result,) = executor.engine.results()
    assert result.outcome.status == "overrun"
    assert "killed" in result.outcome.message


def test_trainer_killed_from_outside_runs_again_unseen_by_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRAINER_SCALE", "1")
    document = local_spec(maxIterations=None, maxTrialCount=2, parallelTrialCount=1)

    def killer() -> None:
        # Kill the first trainer as soon as it is running, like an OOM killer would.
        process = tmp_path / "trials" / "0-0-0-b0" / "process.json"
        for _ in range(400):
            if process.exists():
                os.kill(json.loads(process.read_text())["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    import threading

    thread = threading.Thread(target=killer)
    thread.start()
    executor = run_local(tmp_path, document)
    thread.join()
    log = events(tmp_path)
    released = [e for e in log if e["event"] == "released"]
    assert [(e["trial_id"], e["counts"]) for e in released] == [("0-0-0-b0", True)]
    assert "SIGKILL" in released[0]["reason"]
    finished = [e["trial_id"] for e in log if e["event"] == "finished"]
    assert sorted(finished) == ["0-0-0-b0", "0-0-1-b0"]
    assert executor.engine is not None
    assert executor.engine.progress().releases == 1


def _request() -> TrialRequest:
    return TrialRequest(trial_id="0-0-0-b0", config_id="0-0-0", kind="bohb", iteration=0,
                        bracket=2, budget=1.0, budget_index=0, attempt=1,
                        config=dict(CONSTANTS), seed=1)


def test_a_surviving_trainer_is_reattached_and_its_record_used(tmp_path: Path) -> None:
    spec = spec_mod.load_spec(local_spec())
    slots = devices.plan_slots(1, spec.trainer, gpus=[])
    slow = devices.Slot(0, "cpu", 1, {**slots[0].env, "FAKE_TRAINER_SCALE": "2"})
    # A first controller started the trainer and died; the trainer keeps running.
    first = SubprocessRunner(spec, tmp_path, DataSource(), lambda verdict: None)
    started = first.start(_request(), slow)
    verdicts: list[Verdict] = []
    second = SubprocessRunner(spec, tmp_path, DataSource(), verdicts.append)
    adopted = second.reattach(_request(), slots)
    assert not isinstance(adopted, Verdict), "the trainer is still running"
    assert adopted.adopted and adopted.pid == started.pid
    deadline = time.monotonic() + 30
    while not verdicts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert verdicts and verdicts[0].outcome is not None and verdicts[0].outcome.ok


def test_dead_trainer_without_record_is_released_on_restart(tmp_path: Path) -> None:
    spec = spec_mod.load_spec(local_spec())
    request = _request()
    folder = tmp_path / "trials" / request.trial_id
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / "process.json").write_text(json.dumps(
        {"pid": dead.pid, "attempt": 1, "slot": 0, "started_at": 0.0, "deadline": 1e12}))
    runner = SubprocessRunner(spec, tmp_path, DataSource(), lambda v: None)
    verdict = runner.reattach(request, devices.plan_slots(1, spec.trainer, gpus=[]))
    assert isinstance(verdict, Verdict)
    assert verdict.outcome is None and "left no record" in (verdict.release_reason or "")
    assert verdict.counts


# --- spaces end to end ------------------------------------------------------------------


def test_categorical_and_conditional_space_reaches_the_trainer_as_plain_configs(
        tmp_path: Path) -> None:
    space = small_space(BRANCHES, DEATH, LR, conditions=[
        {"child": "death_rate", "parent": "res_branches_1", "equals": 1}])
    run_local(tmp_path, local_spec(searchSpace=space, maxIterations=2, parallelTrialCount=3))
    configs = [json.loads(p.read_text()) for p in (tmp_path / "trials").glob("*/config.json")]
    assert len(configs) >= 12
    assert {c["res_branches_1"] for c in configs} <= {1, 2, 4}
    assert len({c["res_branches_1"] for c in configs}) > 1
    for c in configs:
        assert len(c) == 17
        if c["res_branches_1"] != 1:
            assert c["death_rate"] == 0.0
    sampled = [e for e in events(tmp_path) if e["event"] == "sampled"]
    inactive = [e for e in sampled if e["config"]["res_branches_1"] != 1]
    assert inactive and all("death_rate" not in e["config"] for e in inactive)
    yaml.safe_dump([e["trainer_config"] for e in sampled])  # no numpy scalar inside


# --- the controller killed with SIGKILL -------------------------------------------------


def _cli(run_dir: Path, spec_file: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "search", str(spec_file), "--out",
         str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )


def _finished_count(run_dir: Path) -> int:
    ledger = run_dir / "ledger.jsonl"
    if not ledger.exists():
        return 0
    return ledger.read_text().count('"event":"finished"')


def test_killed_controller_continues_without_losing_or_repeating_work(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(local_spec(maxIterations=3, parallelTrialCount=3)))
    run_dir = tmp_path / "run"
    log = tmp_path / "starts.log"
    env = {**os.environ, "FAKE_TRAINER_SCALE": "0.4", "FAKE_TRAINER_LOG": str(log)}
    # Kill -9 after 3 and 9 results (with trainers running), then let it finish.
    for target in (3, 9):
        process = _cli(run_dir, spec_file, env)
        deadline = time.monotonic() + 120
        while _finished_count(run_dir) < target and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.kill()
        process.wait()
    final = _cli(run_dir, spec_file, env)
    output, _ = final.communicate(timeout=180)
    assert final.returncode == 0, output.decode()
    text = output.decode()
    assert "Incumbent: configuration" in text

    log_events = events(run_dir)
    finished = [e["trial_id"] for e in log_events if e["event"] == "finished"]
    assert len(finished) == len(set(finished)) == 9 + 3 + 1 + 3 + 1 + 3  # brackets 2, 1, 0
    assert sum(e["event"] == "session_started" for e in log_events) == 2
    # No trainer ran twice unless its trial was released in between (none was lost here).
    released = {e["trial_id"] for e in log_events if e["event"] == "released"}
    for trial, count in starts_per_trial(log).items():
        assert count == 1 or trial in released, f"{trial} ran {count} times"
    assert set(starts_per_trial(log)) == set(finished)
    assert (run_dir / "configs.json").exists() and (run_dir / "results.json").exists()

    status = subprocess.run(
        [sys.executable, "-m", "controller.cli", "status", str(run_dir), "--json"],
        capture_output=True, text=True, check=True)
    summary = json.loads(status.stdout)
    assert summary["condition"]["type"] == "Succeeded"
    assert summary["trials_finished"] == len(finished)
    assert summary["controller_pid"] is None


def test_interrupted_search_stops_its_trainers_and_resumes(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(local_spec(maxIterations=1, parallelTrialCount=2)))
    run_dir = tmp_path / "run"
    env = {**os.environ, "FAKE_TRAINER_SCALE": "3"}
    process = _cli(run_dir, spec_file, env)
    deadline = time.monotonic() + 120
    while len(list(run_dir.glob("trials/*/process.json"))) < 2:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    pids = [json.loads(p.read_text())["pid"] for p in (run_dir / "trials").glob("*/process.json")]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output.decode()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    released = [e for e in events(run_dir) if e["event"] == "released"]
    assert released and not any(e["counts"] for e in released)


def test_a_busy_or_mismatched_run_directory_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(local_spec(maxIterations=1, parallelTrialCount=2)))
    run_dir = tmp_path / "run"
    env = {**os.environ, "FAKE_TRAINER_SCALE": "3"}
    first = _cli(run_dir, spec_file, env)
    try:
        deadline = time.monotonic() + 120
        while not list(run_dir.glob("trials/*/process.json")):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        ledger_before = (run_dir / "ledger.jsonl").read_bytes()
        second = _cli(run_dir, spec_file, env)
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 2, output.decode()
        assert f"in use by another nas-bohb process (pid {first.pid})" in output.decode()
        assert (run_dir / "ledger.jsonl").read_bytes().startswith(ledger_before)
    finally:
        first.kill()
        first.wait()

    # The same directory with another spec: refused, and the ledger is left as it was.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(local_spec(maxIterations=1, parallelTrialCount=2,
                                               seed=12345)))
    ledger_before = (run_dir / "ledger.jsonl").read_bytes()
    third = _cli(run_dir, other, env)
    output, _ = third.communicate(timeout=60)
    assert third.returncode == 2, output.decode()
    assert "ledger.jsonl" in output.decode()
    assert (run_dir / "ledger.jsonl").read_bytes() == ledger_before
