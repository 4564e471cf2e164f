"""Parameter importance per budget with fANOVA, through Optuna's maintained implementation.

fANOVA (Hutter, Hoos, Leyton-Brown, ICML 2014) fits a random forest to (configuration,
loss) and splits the variance of the forest's prediction over the uniform configuration
space into main effects of single parameters and interactions of pairs. Zela et al. (2018)
show with it that what matters changes with the budget, so it is computed per budget.

The ``fanova`` package no longer runs on current numpy; Optuna's
:class:`~optuna.importance.FanovaImportanceEvaluator` (the same algorithm on
scikit-learn's forest) gives the *individual* importances. This module is the adapter:

* It builds an in-memory Optuna study from the successful runs of one budget. Optuna's
  evaluator analyses log-scaled distributions on their raw scale, so log-scaled
  parameters enter as ``log10(value)`` on a linear :class:`~optuna.distributions.
  FloatDistribution`: the analysis happens in log space, as the search samples it.
* **Inactive conditional parameters** (absent from a configuration) are set to a sentinel
  just below the parameter's range, which is widened to hold it (numbers: 10 % of the
  range below the low end, integers: one below), or to an extra ``None`` choice
  (categoricals). "Inactive" is thus one more region of the parameter, so its importance
  includes the effect of switching the parameter on (SMAC's random forest, too, imputes
  inactive values outside the range).
* **Spread**: the forest is fitted with several seeds; each importance is the mean over
  seeds and ``std`` the standard deviation across seeds (forest randomness only, not the
  uncertainty from having few runs).
* **Pairs**: Optuna computes no interactions, so this module refits the very same forest
  (same encoding, same scikit-learn settings and seed as Optuna's evaluator) and computes,
  per tree, the exact fANOVA pairwise term ``V_ij - V_i - V_j`` of Hutter et al. over the
  cells that the tree's split points cut the two parameters' ranges into; the fraction
  of the tree's variance is averaged over trees, then over seeds. The same code yields
  the individual terms, which the tests check against Optuna's to make sure both sides
  analyse one forest.

All importances are fractions of the variance of the loss explained (not normalised to
sum to 1; the remainder is higher-order interactions and noise).

.. note::
   Importance from few runs is rough: below :data:`MIN_RESULTS` successful runs a budget
   is skipped, below :data:`ROUGH_BELOW` the report says the figures are rough. Failed
   runs are left out (their loss is unknown), so a region that always crashes shows up
   only through the missing data.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.analysis import correlation, load
from controller.analysis.space import ParamSpace, ResolvedSpace

logger = logging.getLogger(__name__)

# Optuna's FanovaImportanceEvaluator defaults; the pair forest must match them exactly.
N_TREES = 64
MAX_DEPTH = 64
MIN_RESULTS = 5
ROUGH_BELOW = 20
DEFAULT_SEEDS = 5
# Inactive numbers sit this fraction of the range below the low end.
_SENTINEL_GAP = 0.1


@dataclass(frozen=True)
class Importance:
    """Fraction of the loss variance explained by one parameter alone (mean, std over seeds)."""

    name: str
    mean: float
    std: float


@dataclass(frozen=True)
class PairImportance:
    """Fraction of the loss variance explained by the interaction of two parameters."""

    first: str
    second: str
    mean: float
    std: float


@dataclass
class BudgetImportance:
    """fANOVA on one budget: importances sorted high to low, and how they were obtained."""

    budget: float
    n: int
    individual: list[Importance] = field(default_factory=list)
    pairs: list[PairImportance] = field(default_factory=list)
    inactive: list[str] = field(default_factory=list)  # parameters inactive in some runs
    seeds: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Design:
    """The runs of one budget encoded twice: as Optuna trials and as Optuna encodes them."""

    names: list[str]  # analysed parameters, sorted by name as Optuna orders them
    distributions: dict[str, Any]  # name -> optuna distribution (in analysis space)
    rows: list[dict[str, Any]]  # per run: name -> value in analysis space
    losses: np.ndarray
    inactive: list[str]

    def encoded(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """``X``, its column bounds and parameter -> columns, as Optuna's transform builds them."""
        from optuna.distributions import CategoricalDistribution

        bounds: list[tuple[float, float]] = []
        columns: list[np.ndarray] = []
        for name in self.names:
            dist = self.distributions[name]
            width = len(dist.choices) if isinstance(dist, CategoricalDistribution) else 1
            columns.append(np.arange(len(bounds), len(bounds) + width))
            if isinstance(dist, CategoricalDistribution):
                bounds.extend([(0.0, 1.0)] * width)
            else:
                bounds.append((float(dist.low), float(dist.high)))

        x = np.zeros((len(self.rows), len(bounds)))
        for i, row in enumerate(self.rows):
            for name, cols in zip(self.names, columns, strict=True):
                dist = self.distributions[name]
                if isinstance(dist, CategoricalDistribution):
                    x[i, cols[0] + dist.choices.index(row[name])] = 1.0
                else:
                    x[i, cols[0]] = float(row[name])
        return x, np.array(bounds), columns


def budget_importance(
    search: load.Search, space: ResolvedSpace, budget: float, seeds: int = DEFAULT_SEEDS
) -> BudgetImportance:
    """fANOVA on the successful runs of one budget; a skipped budget says why in ``notes``."""
    label = correlation.fmt_budget(budget)
    runs = [r for r in search.runs_on(budget) if r.loss is not None and r.config_id in
            search.configs]
    result = BudgetImportance(budget=budget, n=len(runs), seeds=seeds)
    if not space.params:
        result.notes.append(f"Budget {label}: no varying parameter to analyse.")
        return result
    if len(runs) < MIN_RESULTS:
        result.notes.append(
            f"Budget {label}: importance skipped, only {len(runs)} successful run(s) "
            f"(fANOVA needs at least {MIN_RESULTS})."
        )
        return result
    if len({r.loss for r in runs}) == 1:
        result.notes.append(f"Budget {label}: all losses are equal; nothing to explain.")
        return result

    design = build_design(runs, search.configs, space)
    result.inactive = design.inactive
    if len(runs) < ROUGH_BELOW:
        result.notes.append(
            f"Budget {label}: only {len(runs)} successful runs; importances are rough."
        )

    # One forest per seed; the spread over seeds is the reported std.
    per_seed = [_one_seed(design, seed) for seed in range(seeds)]
    optuna_values = np.array([[s[0][n] for n in design.names] for s in per_seed])
    result.individual = sorted(
        (Importance(n, float(m), float(sd)) for n, m, sd in
         zip(design.names, optuna_values.mean(0), optuna_values.std(0), strict=True)),
        key=lambda imp: -imp.mean,
    )
    pair_names = list(itertools.combinations(design.names, 2))
    if pair_names:
        pair_values = np.array([s[1] for s in per_seed])
        result.pairs = sorted(
            (PairImportance(a, b, float(m), float(sd)) for (a, b), m, sd in
             zip(pair_names, pair_values.mean(0), pair_values.std(0), strict=True)),
            key=lambda p: -p.mean,
        )
    logger.info("Budget %s: fANOVA on %d runs, top parameter %s.", label, len(runs),
                result.individual[0].name if result.individual else "none")
    return result


def build_design(
    runs: list[load.Run], configs: dict[str, load.Configuration], space: ResolvedSpace
) -> Design:
    """Encode runs in analysis space: log10 for log-scaled numbers, sentinels for inactive."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    names = sorted(space.params)
    inactive = sorted(n for n in names if any(n not in configs[r.config_id].values
                                              for r in runs))
    distributions: dict[str, Any] = {}
    sentinel: dict[str, Any] = {}
    for name in names:
        p = space.params[name]
        if p.kind == "categorical":
            choices = p.choices + ((None,) if name in inactive and None not in p.choices else ())
            distributions[name] = CategoricalDistribution(choices)
            sentinel[name] = None
            continue
        # Log-scaled numbers, integer or not, become floats in log10 space; linear integers
        # stay integers so Optuna's encoding (and the forest's splits) match the search's.
        low, high = _analysis_range(p)
        integral = p.kind == "int" and not p.log and all(
            float(configs[r.config_id].values.get(name, low)).is_integer() for r in runs)
        if integral:
            low_i, high_i = math.ceil(low), math.floor(high)
            if name in inactive:
                low_i -= 1
                sentinel[name] = low_i
            distributions[name] = IntDistribution(low_i, high_i)
        else:
            if name in inactive:
                low -= _SENTINEL_GAP * (high - low)
                sentinel[name] = low
            distributions[name] = FloatDistribution(low, high)

    rows = []
    for run in runs:
        values = configs[run.config_id].values
        row: dict[str, Any] = {}
        for name in names:
            if name not in values:
                row[name] = sentinel[name]
            else:
                row[name] = _to_analysis(space.params[name], values[name], distributions[name])
        rows.append(row)
    losses = np.array([r.loss for r in runs], dtype=float)
    return Design(names, distributions, rows, losses, inactive)


def _analysis_range(p: ParamSpace) -> tuple[float, float]:
    assert p.low is not None and p.high is not None
    if p.log:
        return math.log10(p.low), math.log10(p.high)
    return float(p.low), float(p.high)


def _to_analysis(p: ParamSpace, value: Any, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
    if p.log:
        return math.log10(float(value))
    if isinstance(dist, IntDistribution):
        return int(value)
    return float(value)


def _one_seed(design: Design, seed: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Optuna's individual importances, and pair plus individual terms from the same forest."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.trial import create_trial

    # Optuna logs every study it creates at INFO; keep the report's stderr to our notes.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize")
        study.add_trials([
            create_trial(params=row, distributions=design.distributions, value=float(loss))
            for row, loss in zip(design.rows, design.losses, strict=True)
        ])
    finally:
        optuna.logging.set_verbosity(verbosity)
    evaluator = FanovaImportanceEvaluator(n_trees=N_TREES, max_depth=MAX_DEPTH, seed=seed)
    individual = {k: float(v) for k, v in evaluator.evaluate(study).items()}

    pairs, mains = forest_terms(design, seed)
    return individual, pairs, mains


def forest_terms(design: Design, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair interaction and main-effect fractions (averaged over trees) of Optuna's forest.

    Returns ``(pairs, mains)``: pairs in ``itertools.combinations(design.names, 2)`` order.
    """
    from sklearn.ensemble import RandomForestRegressor

    # Same data, same settings, same seed as Optuna's evaluator: the same trees.
    x, bounds, columns = design.encoded()
    forest = RandomForestRegressor(
        n_estimators=N_TREES, max_depth=MAX_DEPTH, min_samples_split=2, min_samples_leaf=1,
        random_state=seed,
    ).fit(x, design.losses)

    pair_index = list(itertools.combinations(range(len(columns)), 2))
    pair_fractions, main_fractions = [], []
    for estimator in forest.estimators_:
        tree = _TreeAnova(estimator.tree_, bounds, columns)
        if tree.variance <= 0.0:
            continue  # Optuna skips such trees too.
        mains = np.array([tree.marginal_variance(i) for i in range(len(columns))])
        pairs = np.array([
            max(0.0, tree.marginal_variance(i, j) - mains[i] - mains[j]) for i, j in pair_index
        ])
        main_fractions.append(mains / tree.variance)
        pair_fractions.append(pairs / tree.variance)
    if not main_fractions:
        return np.zeros(len(pair_index)), np.zeros(len(columns))
    return np.mean(pair_fractions, axis=0), np.mean(main_fractions, axis=0)


class _TreeAnova:
    """Exact functional ANOVA of one regression tree over a box (Hutter et al. 2014).

    A tree is constant on the boxes of its leaves, so the marginal prediction over a set
    ``S`` of dimensions, with all others integrated out uniformly, is constant on the grid
    cells cut by the tree's split points along ``S``: ``m(cell) = sum_leaf value *
    [cell inside leaf along S] * prod_{k not in S} width_k(leaf) / range_k``.
    Parameters are groups of columns (a one-hot categorical spans several).
    """

    def __init__(self, tree: Any, bounds: np.ndarray, groups: list[np.ndarray]) -> None:
        feature, threshold = np.asarray(tree.feature), np.asarray(tree.threshold)
        left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
        n_nodes, dims = tree.node_count, bounds.shape[0]

        # Boxes of every node: scikit-learn numbers children after their parent.
        lower = np.empty((n_nodes, dims))
        upper = np.empty((n_nodes, dims))
        lower[0], upper[0] = bounds[:, 0], bounds[:, 1]
        for node in range(n_nodes):
            f = feature[node]
            if f < 0:
                continue
            for child in (left[node], right[node]):
                lower[child], upper[child] = lower[node], upper[node]
            upper[left[node], f] = min(threshold[node], upper[node, f])
            lower[right[node], f] = max(threshold[node], lower[node, f])

        leaves = feature < 0
        span = bounds[:, 1] - bounds[:, 0]
        lower, upper = lower[leaves], upper[leaves]
        fraction = (upper - lower) / span  # leaf width per dim, relative to the range
        self._value = np.asarray(tree.value)[leaves, 0, 0].astype(float)

        volume = np.prod(fraction, axis=1)
        mean = float(volume @ self._value)
        self.variance = float(volume @ (self._value - mean) ** 2)

        # Per parameter, once: leaf-by-cell membership, cell sizes, and the leaf's width
        # along the parameter's columns (to divide out of the leaf's volume).
        self._volume = volume
        self._member: list[np.ndarray] = []
        self._size: list[np.ndarray] = []
        self._width: list[np.ndarray] = []
        for group in groups:
            member = np.ones((len(volume), 1))
            size = np.ones(1)
            for column in group:
                splits = np.unique(threshold[feature == column])
                edges = np.concatenate(([bounds[column, 0]], splits, [bounds[column, 1]]))
                mids = 0.5 * (edges[1:] + edges[:-1])
                inside = (lower[:, column, None] <= mids) & (mids < upper[:, column, None])
                member = (member[:, :, None] * inside[:, None, :]).reshape(len(volume), -1)
                size = np.outer(size, np.diff(edges) / span[column]).ravel()
            self._member.append(member)
            self._size.append(size)
            self._width.append(np.prod(fraction[:, group], axis=1))

    def marginal_variance(self, i: int, j: int | None = None) -> float:
        """Variance of the marginal over parameter ``i`` (and ``j``), the rest integrated out."""
        if j is None:
            weight = self._value * self._volume / self._width[i]
            marginal = weight @ self._member[i]
            size = self._size[i]
        else:
            weight = self._value * self._volume / (self._width[i] * self._width[j])
            marginal = ((self._member[i] * weight[:, None]).T @ self._member[j]).ravel()
            size = np.outer(self._size[i], self._size[j]).ravel()
        mean = float(size @ marginal)
        return float(size @ (marginal - mean) ** 2)
