"""BOHB's model in a child process: same proposals as in-process, and it survives a crash."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest

from controller.engine.model_server import ModelProcess
from tests.controller.factories import make_spec

pytestmark = pytest.mark.filterwarnings("ignore:After 0.17:FutureWarning")


def test_model_process_proposes_plain_values_and_is_restarted_with_its_history() -> None:
    spec = make_spec(bohb={"minPointsInModel": 3})
    model = ModelProcess(spec.to_dict(), seed=5)
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
        assert model._process is not None
        os.kill(model._process.pid, signal.SIGKILL)
        model._process.wait()
        again = model.propose()
        assert set(again.values) == {"learning_rate", "momentum"}
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
