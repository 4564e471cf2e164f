"""BOHB's model: a typed adapter around hpbandster's KDE configuration generator.

BOHB (Falkner, Klein and Hutter, ICML 2018, arXiv 1807.01774) fits, per budget, two
kernel density estimates over the [0, 1]-normalised configuration vector, l(x) on the
best ``top_n_percent`` results and g(x) on the rest, and proposes the candidate that
maximises l(x) / g(x) among ``num_samples`` draws around good points; a
``random_fraction`` of proposals comes from the prior. We use hpbandster's own
implementation (``hpbandster.optimizers.config_generators.bohb.BOHB``) unchanged, and only
hpbandster's generator: its Pyro4 master is replaced by :mod:`controller.engine.core`.

The adapter keeps hpbandster's untyped world in one place:

- it feeds results as hpbandster's ``Job`` shape (failed runs: loss ``+inf``, as BOHB
  does; infrastructure failures never arrive here: the engine filters them);
- it gives the generator a private numpy random stream (hpbandster draws from numpy's
  global one), so a seeded search does not disturb, and is not disturbed by, other code;
- it returns configurations as plain Python values (see :class:`controller.space.SearchSpace`).

It is not thread-safe by itself; :mod:`controller.engine.sampler` serialises access. The
engine runs it in a child process when it samples ahead (:mod:`controller.engine.model_server`).

.. note::
   hpbandster 0.7.4 calls ConfigSpace methods deprecated in ConfigSpace 1.x; those
   warnings are silenced here. It will break when ConfigSpace removes them.
"""

from __future__ import annotations

import logging
import math
import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from controller.engine.types import Proposal
from controller.space import SearchSpace, Value
from controller.spec import BohbSpec

logger = logging.getLogger(__name__)


def _import_generator() -> Any:
    """hpbandster's BOHB generator class, without loading all of ``statsmodels.api``.

    hpbandster imports ``statsmodels.api`` for one name, ``sm.nonparametric.KDEMultivariate``;
    the whole API brings pandas and patsy (about 35 MB per process). When nothing else has
    loaded it yet, the import sees a namespace holding only that class (statsmodels' own,
    from ``statsmodels.nonparametric.kernel_density``), and ``sys.modules`` is restored
    afterwards, so later imports of ``statsmodels.api`` anywhere get the real module.
    """
    if "statsmodels.api" in sys.modules:
        from hpbandster.optimizers.config_generators.bohb import BOHB
        return BOHB
    from statsmodels.nonparametric.kernel_density import KDEMultivariate

    api = types.ModuleType("statsmodels.api", "Only what hpbandster's BOHB uses.")
    api.nonparametric = types.SimpleNamespace(  # type: ignore[attr-defined]
        KDEMultivariate=KDEMultivariate)
    sys.modules["statsmodels.api"] = api
    try:
        from hpbandster.optimizers.config_generators.bohb import BOHB
    finally:
        if sys.modules.get("statsmodels.api") is api:
            del sys.modules["statsmodels.api"]
    return BOHB


_HpBandSterBOHB = _import_generator()

warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"hpbandster(\..*)?$")
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*entropy initialized.*")


class _Job:
    """The attributes of ``hpbandster.core.dispatcher.Job`` that the generator reads."""

    def __init__(self, values: Mapping[str, Value], budget: float, loss: float) -> None:
        self.id = (0, 0, 0)
        self.kwargs: dict[str, Any] = {"budget": budget, "config": dict(values)}
        self.result: dict[str, Any] = {"loss": loss, "info": {}}
        self.exception = None
        self.timestamps: dict[str, float] = {}


class BohbModel:
    """hpbandster's BOHB generator over a :class:`SearchSpace`, seeded and typed."""

    def __init__(self, space: SearchSpace, settings: BohbSpec, seed: int) -> None:
        self.space = space
        self.observations = 0
        self._rng = np.random.RandomState(seed)
        space.configspace.seed(seed)
        hp_logger = logging.getLogger("hpbandster")
        self._generator = self._with_stream(
            lambda: _HpBandSterBOHB(
                configspace=space.configspace,
                min_points_in_model=settings.min_points_in_model,
                top_n_percent=settings.top_n_percent,
                num_samples=settings.num_samples,
                random_fraction=settings.random_fraction,
                bandwidth_factor=settings.bandwidth_factor,
                min_bandwidth=settings.min_bandwidth,
                logger=hp_logger,
            )
        )

    def reseed(self, seed: int) -> None:
        """Start fresh random streams (a restarted search must not repeat its proposals)."""
        self._rng = np.random.RandomState(seed)
        self.space.configspace.seed(seed)

    def _with_stream(self, call: Any) -> Any:
        """Run ``call`` with numpy's global random state swapped for this model's stream."""
        saved = np.random.get_state()
        np.random.set_state(self._rng.get_state())
        try:
            return call()
        finally:
            self._rng.set_state(np.random.get_state())
            np.random.set_state(saved)

    @property
    def model_budgets(self) -> list[float]:
        """Budgets that have a fitted KDE, ascending."""
        return sorted(float(b) for b in self._generator.kde_models)

    def observe(self, values: Mapping[str, Value], budget: float, loss: float) -> None:
        """Feed one finished run; non-finite losses count as ``+inf`` (a bad configuration)."""
        loss = float(loss) if math.isfinite(loss) else math.inf
        job = _Job(values, float(budget), loss)
        self._with_stream(lambda: self._generator.new_result(job))
        self.observations += 1

    def propose(self) -> Proposal:
        """Sample one configuration (from the model when one exists, else from the prior)."""
        values, info = self._with_stream(lambda: self._generator.get_config(None))
        return Proposal(values=self.space.plain(values),
                        model_based=bool(info.get("model_based_pick", False)))
