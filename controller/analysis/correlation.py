"""Rank correlation between budgets: do short budgets rank configurations like long ones?

Successive halving (and so BOHB) promotes the best configurations of a short budget to the
next one; that only helps when the short budget ranks configurations roughly as the long
one does. Zela et al. (2018, arXiv 1807.06906) measure this with the Spearman rank
correlation between budgets and find that adjacent budgets correlate well and distant ones
badly; a weak correlation between *adjacent* budgets means the schedule throws away
configurations on noise. This module computes Spearman's rho (scipy) with its p-value and
the number of configurations ``n`` for every pair of budgets, over configurations
evaluated successfully on both, and raises the paper's warning for weak adjacent pairs.

.. note::
   The warning threshold is :data:`WEAK_RHO` = 0.5 (below it, a rank correlation is
   commonly called weak to moderate); it is judged only with at least
   :data:`MIN_N_TO_JUDGE` configurations on both budgets, because rho from three or four
   points can take only a handful of values. Pairs with fewer than 3 shared
   configurations get no rho at all (``null``).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

from scipy import stats

from controller.analysis import load

logger = logging.getLogger(__name__)

WEAK_RHO = 0.5
MIN_N_TO_JUDGE = 5
MIN_N_FOR_RHO = 3


@dataclass(frozen=True)
class BudgetPair:
    """Spearman's rho between two budgets over the ``n`` configurations evaluated on both."""

    low: float
    high: float
    n: int
    rho: float | None
    p: float | None
    adjacent: bool

    @property
    def weak(self) -> bool | None:
        """True/False when judged, None when there are too few configurations to judge."""
        if not self.adjacent or self.rho is None or self.n < MIN_N_TO_JUDGE:
            return None
        return self.rho < WEAK_RHO


@dataclass
class Correlations:
    budgets: list[float]
    pairs: list[BudgetPair]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def pair(self, low: float, high: float) -> BudgetPair | None:
        return next((p for p in self.pairs if p.low == low and p.high == high), None)


def fmt_budget(budget: float) -> str:
    """A budget as people write it: ``400 s``, ``12.5 s``."""
    return f"{budget:g} s"


def budget_correlations(search: load.Search) -> Correlations:
    """Spearman's rho for every pair of budgets, ignoring failed runs."""
    budgets = search.budgets
    # Per budget, the successful losses by configuration; failed runs have no rank.
    losses = {b: {r.config_id: r.loss for r in search.runs_on(b) if r.loss is not None}
              for b in budgets}
    result = Correlations(budgets, [])
    if len(budgets) < 2:
        result.notes.append(
            "Budget correlation needs results on at least two budgets; "
            f"found {len(budgets)}."
        )
        return result

    for i, low in enumerate(budgets):
        for j in range(i + 1, len(budgets)):
            high = budgets[j]
            # Only configurations promoted to (or started on) both budgets are comparable.
            shared = sorted(set(losses[low]) & set(losses[high]))
            rho, p = _spearman([losses[low][c] for c in shared],
                               [losses[high][c] for c in shared])
            pair = BudgetPair(low, high, len(shared), rho, p, adjacent=j == i + 1)
            result.pairs.append(pair)
            _judge(pair, result)
    return result


def _spearman(x: list[float | None], y: list[float | None]) -> tuple[float | None, float | None]:
    """rho and p, or None where scipy cannot say (too few points, constant losses)."""
    if len(x) < MIN_N_FOR_RHO:
        return None, None
    with warnings.catch_warnings():
        # Constant input: scipy warns and returns NaN, which becomes None here.
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    return (rho if math.isfinite(rho) else None), (p if math.isfinite(p) else None)


def _judge(pair: BudgetPair, result: Correlations) -> None:
    """The paper's warning for weak adjacent pairs; notes where there is too little data."""
    names = f"{fmt_budget(pair.low)} and {fmt_budget(pair.high)}"
    # Distant budgets are expected to disagree (the paper's finding); only neighbours
    # decide what successive halving keeps, so only they are judged.
    if not pair.adjacent:
        return
    if pair.rho is None and pair.n >= MIN_N_FOR_RHO:
        result.notes.append(
            f"Budgets {names}: rank correlation undefined (losses constant on one budget)."
        )
    elif pair.n < MIN_N_TO_JUDGE:
        result.notes.append(
            f"Budgets {names}: only {pair.n} configuration(s) finished on both; at least "
            f"{MIN_N_TO_JUDGE} are needed to judge their rank correlation."
        )
    elif pair.weak:
        assert pair.rho is not None
        result.warnings.append(
            f"Adjacent budgets {names} rank configurations only weakly alike (Spearman "
            f"rho = {pair.rho:.2f}, p = {_fmt_p(pair.p)}, n = {pair.n}; threshold "
            f"{WEAK_RHO}). As Zela et al. (2018) warn, a short budget that ranks unlike the "
            "next one makes successive halving discard good configurations on noise: "
            "consider a larger minimum budget or a smaller eta."
        )
        logger.info("Budgets %s correlate weakly (rho %.2f, n %d).", names, pair.rho, pair.n)


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"
