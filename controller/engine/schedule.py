"""The Hyperband schedule: which budgets exist and how many configurations each rung holds.

Hyperband (Li et al., JMLR 2018, arXiv 1603.06560) runs brackets of successive halving
(Jamieson and Talwalkar, AISTATS 2016); BOHB (Falkner, Klein and Hutter, ICML 2018,
arXiv 1807.01774) keeps that schedule and only changes how configurations are sampled.
This module reproduces the schedule of hpbandster's BOHB master, the reference
implementation, so that a search here spends its budget as a published BOHB run would.

The rules, for budgets ``min``, ``max`` and an integer ``eta >= 2``:

- ``S``, the number of budgets, is ``1 + floor(log_eta(max / min))``; the budgets are
  ``max / eta**k`` for ``k = S-1 .. 0``. When ``max / min`` is not a power of ``eta`` the
  smallest budget is therefore above ``min`` (hpbandster's rule).
- Iteration ``i`` runs bracket ``s = S - 1 - (i mod S)`` (largest bracket first). Its first
  rung holds ``n0 = floor(S / (s + 1)) * eta**s`` configurations and rung ``r`` holds
  ``max(floor(n0 / eta**r), 1)``; the rungs use the ``s + 1`` largest budgets.

hpbandster computes ``S`` as ``-int(log(min / max) / log(eta)) + 1`` in floating point,
which drops a budget when the ratio is an exact power of ``eta`` that the logarithms
miss (min 1, max 243, eta 3 gives 5 budgets instead of 6). Here ``S`` comes from exact
comparisons of ``min * eta**k`` with ``max``, with a relative tolerance of 1e-9 so that
budgets written in decimal (0.1 and 0.9) still count as a power. The first rung uses
hpbandster's floor, where the Hyperband paper uses a ceiling (with min 400, max 10800
and eta 3, bracket 2 holds 9 configurations here and in hpbandster, 12 in the paper's
formula); the published bracket table of Zela et al. (2018) follows hpbandster.
"""

from __future__ import annotations

from dataclasses import dataclass

# Relative tolerance when deciding whether max / min reaches the next power of eta.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Bracket:
    """One successive-halving bracket: rung sizes and their budgets, smallest budget first."""

    iteration: int
    s: int
    num_configs: tuple[int, ...]
    budgets: tuple[float, ...]
    budget_indices: tuple[int, ...]

    @property
    def total_budget(self) -> float:
        """Budget seconds the bracket spends when every rung is full."""
        return sum(n * b for n, b in zip(self.num_configs, self.budgets, strict=True))


def num_budgets(min_budget: float, max_budget: float, eta: int) -> int:
    """How many budgets the schedule has: ``1 + floor(log_eta(max / min))``, exactly."""
    if not 0 < min_budget < max_budget:
        raise ValueError(f"budgets must satisfy 0 < min < max, got min {min_budget}, "
                         f"max {max_budget}")
    if eta < 2:
        raise ValueError(f"eta must be at least 2, got {eta}")
    count = 1
    # Count the powers eta**k with min * eta**k <= max, allowing for decimal rounding.
    while min_budget * eta**count <= max_budget * (1 + _TOLERANCE):
        count += 1
    return count


def budgets(min_budget: float, max_budget: float, eta: int) -> tuple[float, ...]:
    """All budgets, ascending: ``max / eta**k`` for ``k = S-1 .. 0``."""
    count = num_budgets(min_budget, max_budget, eta)
    return tuple(float(max_budget) / eta**k for k in range(count - 1, -1, -1))


def bracket(iteration: int, min_budget: float, max_budget: float, eta: int) -> Bracket:
    """The bracket Hyperband runs in ``iteration`` (0-based), as hpbandster plans it."""
    if iteration < 0:
        raise ValueError(f"iteration must be non-negative, got {iteration}")
    all_budgets = budgets(min_budget, max_budget, eta)
    count = len(all_budgets)
    s = count - 1 - iteration % count

    # Integer arithmetic throughout: eta is an integer, so no rounding can drop a rung.
    n0 = (count // (s + 1)) * eta**s
    sizes = tuple(max(n0 // eta**r, 1) for r in range(s + 1))
    first = count - 1 - s
    return Bracket(
        iteration=iteration,
        s=s,
        num_configs=sizes,
        budgets=all_budgets[first:],
        budget_indices=tuple(range(first, count)),
    )


def plan(min_budget: float, max_budget: float, eta: int, iterations: int) -> list[Bracket]:
    """The brackets of the first ``iterations`` iterations, for showing a search's cost."""
    return [bracket(i, min_budget, max_budget, eta) for i in range(iterations)]
