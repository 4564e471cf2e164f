"""The ledger: durable JSON lines, torn tails, and no numpy or non-finite values inside."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from controller.engine import JsonlLedger, LedgerError, MemoryLedger
from controller.engine.ledger import check_plain


def test_events_come_back_in_order(tmp_path: Path) -> None:
    ledger = JsonlLedger(str(tmp_path / "ledger.jsonl"))
    for i in range(5):
        ledger.append({"event": "x", "i": i, "nested": {"list": [1, 2.5, "a", None, True]}})
    assert [e["i"] for e in JsonlLedger(str(tmp_path / "ledger.jsonl")).read_all()] == [0, 1, 2,
                                                                                         3, 4]


def test_torn_last_line_is_dropped_and_truncated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = JsonlLedger(str(path))
    ledger.append({"event": "a"})
    ledger.append({"event": "b"})
    with open(path, "ab") as handle:
        handle.write(b'{"event":"c","half')
    assert [e["event"] for e in ledger.read_all()] == ["a", "b"]
    reopened = JsonlLedger(str(path))
    reopened.append({"event": "d"})
    assert [e["event"] for e in reopened.read_all()] == ["a", "b", "d"]
    assert path.read_bytes().endswith(b'{"event":"d"}\n')


def test_corruption_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"event":"a"}\nnot json\n{"event":"b"}\n')
    with pytest.raises(LedgerError, match=r"ledger\.jsonl:2"):
        JsonlLedger(str(path)).read_all()


@pytest.mark.parametrize("value", [
    np.float64(0.5), np.int64(3), np.bool_(True), np.str_("x"), math.inf, math.nan,
    {"nested": [1, np.float32(2.0)]}, {1: "non-string key"},
])
def test_numpy_scalars_and_non_finite_numbers_are_refused(value: object) -> None:
    with pytest.raises(TypeError):
        check_plain({"event": "x", "value": value})
    with pytest.raises(TypeError):
        MemoryLedger().append({"event": "x", "value": value})


def test_plain_values_pass() -> None:
    check_plain({"a": [1, 2.0, "s", None, False, {"b": -0.0}]})
