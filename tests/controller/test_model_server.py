"""BOHB's model in a child process: same proposals as in-process, and it survives a crash."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest

from controller import space
from controller.engine.model import BohbModel
from controller.engine.model_server import ModelHost, ModelProcess, ModelServerError
from tests.controller.factories import make_spec

pytestmark = pytest.mark.filterwarnings("ignore:After 0.17:FutureWarning")


def test_model_process_proposes_plain_values_and_is_restarted_with_its_history() -> None:
    spec = make_spec(bohb={"minPointsInModel": 3})
    model = ModelProcess(spec.to_dict(), seed=5, host=ModelHost())
    try:
        for i in range(8):
            lr = 10 ** (-3 + 3 * i / 8)
            model.observe({"learning_rate": lr, "momentum": 0.5}, 1.0,
                          math.inf if i == 0 else abs(math.log10(lr) + 1))
        first = model.propose()
        assert set(first.values) == {"learning_rate", "momentum"}
        assert all(type(v) is float for v in first.values.values())
        assert model.model_budgets == [1.0]

        # The child dies; the next proposal comes from a new child fed the same results.
        pid = model._host.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert model._host._process is not None
        model._host._process.wait(timeout=10)
        again = model.propose()
        assert set(again.values) == {"learning_rate", "momentum"}
        assert model._host.pid not in (None, pid)
        assert model.model_budgets == [1.0], "the new child refitted the model from history"
    finally:
        model.close()


def test_the_model_loads_only_the_kde_of_statsmodels_and_leaves_statsmodels_api_intact() -> None:
    probe = (
        "import sys\n"
        "import controller.engine.model\n"
        "from hpbandster.optimizers.config_generators import bohb\n"
        "from statsmodels.nonparametric.kernel_density import KDEMultivariate\n"
        "print('patsy' in sys.modules, 'statsmodels.api' in sys.modules,\n"
        "      bohb.sm.nonparametric.KDEMultivariate is KDEMultivariate)\n"
        "import statsmodels.api\n"
        "print(hasattr(statsmodels.api, 'OLS'))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    # No patsy or full statsmodels.api in the model's process; hpbandster fits statsmodels'
    # own KDE class; a later import of statsmodels.api elsewhere gets the real module.
    assert out == ["False", "False", "True", "True"]


def _feed(model: ModelProcess | BohbModel, offset: float) -> None:
    for i in range(8):
        lr = 10 ** (-3 + 3 * i / 8)
        model.observe({"learning_rate": lr, "momentum": 0.5},
                      1.0, abs(math.log10(lr) + 1) + offset)


def test_searches_share_one_model_process_and_propose_as_if_alone() -> None:
    spec = make_spec(bohb={"minPointsInModel": 3})
    host = ModelHost()
    first, second = ModelProcess(spec.to_dict(), 5, host), ModelProcess(spec.to_dict(), 9, host)
    alone = BohbModel(space.build(spec.search_space, seed=5), spec.bohb, 5)
    try:
        pid = host.pid
        # Interleaved requests of two searches: each model keeps its own data and streams.
        _feed(first, 0.0)
        _feed(second, 0.3)
        _feed(alone, 0.0)
        for _ in range(3):
            second.propose()
            assert first.propose().values == alone.propose().values
        assert host.pid == pid, "both searches used the one child"
        second.close()
        assert host.pid == pid and first.propose().values == alone.propose().values
    finally:
        first.close()
        second.close()
    assert host.pid is None, "the last handle closed stops the child"


def test_a_model_that_cannot_start_fails_alone_and_the_child_serves_the_others() -> None:
    spec = make_spec(bohb={"minPointsInModel": 3})
    host = ModelHost()
    good = ModelProcess(spec.to_dict(), 5, host)
    bad = ModelProcess({"not": "a spec"}, 5, host)
    try:
        with pytest.raises(ModelServerError, match="cannot propose"):
            bad.propose()
        _feed(good, 0.0)
        assert set(good.propose().values) == {"learning_rate", "momentum"}
        assert good.model_budgets == [1.0]
    finally:
        good.close()
        bad.close()
