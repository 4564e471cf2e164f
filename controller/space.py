"""The search space: a spec's ``searchSpace`` resolved, checked and turned into ConfigSpace.

Two worlds meet here. BOHB's model samples a ConfigSpace configuration that holds only
the *searched* and *active* parameters, as numpy-flavoured values; the trainer wants all
17 parameters of :mod:`trainer.params` as plain Python numbers. :class:`SearchSpace`
converts between them: constants are filled in, inactive conditional parameters get
their default, and every value leaves as a plain ``int`` or ``float`` (numpy scalars
must never reach JSON, YAML or a process boundary).

The ``paper`` preset is the joint space of Zela et al. (2018, arXiv 1807.06906): the 17
dimensions, flat, as the authors searched them. A spec's ``parameters`` replace preset
entries by name (an entry is replaced whole: fields it leaves out take their defaults,
``log: false`` included); with ``preset: none`` every one of the 17 must be listed.

.. note::
   ConfigSpace refuses forbidden clauses that forbid the default configuration; give the
   parameters involved a ``default`` outside the forbidden combination.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.spec import (
    ConditionSpec,
    ForbiddenClause,
    ParameterSpec,
    SearchSpaceSpec,
    SpecError,
)
from trainer import params as trainer_params

if TYPE_CHECKING:
    import ConfigSpace as CS

# Preset defaults where "off" is the natural value; the rest take ConfigSpace's default
# (the middle of the range, in log space for log-scaled parameters).
_OFF_DEFAULTS: dict[str, int | float] = {"alpha": 0.0, "length": 0, "death_rate": 0.0}

Value = int | float


def paper_preset() -> tuple[ParameterSpec, ...]:
    """The paper's 17 dimensions as parameter specs, built from the trainer's table."""
    return tuple(
        ParameterSpec(
            name=p.name,
            type=p.kind,
            low=float(p.low),
            high=float(p.high),
            log=p.log,
            default=_OFF_DEFAULTS.get(p.name),
        )
        for p in trainer_params.PARAMETERS
    )


@dataclass(frozen=True)
class ResolvedParameter:
    """A parameter after the preset and overrides are merged; ``default`` is always set."""

    spec: ParameterSpec
    default: Value
    path: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def searched(self) -> bool:
        return self.spec.type != "constant"


class SearchSpace:
    """A resolved space: the conversion to trainer configurations, and its ConfigSpace.

    The ConfigSpace is built on first use (:attr:`configspace`): ConfigSpace brings
    scipy.stats, about 70 MB, and only BOHB's model needs it. The operator resolves,
    validates and converts configurations without it; its model process builds it.
    """

    def __init__(self, parameters: tuple[ResolvedParameter, ...],
                 spec: SearchSpaceSpec | None = None, seed: int | None = None) -> None:
        self.parameters = parameters
        self._spec = spec if spec is not None else SearchSpaceSpec()
        self._seed = seed
        self._configspace: CS.ConfigurationSpace | None = None
        self._configspace_lock = threading.Lock()
        self._by_name = {p.name: p for p in parameters}
        self._searched = tuple(p.name for p in parameters if p.searched)

    @property
    def configspace(self) -> CS.ConfigurationSpace:
        """The space as ConfigSpace's ``ConfigurationSpace`` (seeded as built), made once."""
        with self._configspace_lock:
            if self._configspace is None:
                self._configspace = _configspace(self.parameters, self._spec, self._seed)
            return self._configspace

    @property
    def dimensions(self) -> int:
        """How many parameters are searched (the KDE's dimensions)."""
        return sum(1 for p in self.parameters if p.searched)

    @property
    def searched_names(self) -> tuple[str, ...]:
        return self._searched

    def plain(self, values: Mapping[str, Any]) -> dict[str, Value]:
        """A ConfigSpace configuration's values as plain Python numbers, in space order."""
        out: dict[str, Value] = {}
        for name in self.searched_names:
            if name not in values:
                continue  # Inactive conditional parameter.
            out[name] = _plain_value(self._by_name[name].spec, values[name])
        return out

    def trainer_config(self, values: Mapping[str, Any]) -> dict[str, Value]:
        """All 17 trainer parameters: searched values, constants, defaults for inactive ones."""
        merged: dict[str, object] = {}
        plain = self.plain(values)
        for p in self.parameters:
            if p.spec.type == "constant":
                merged[p.name] = p.spec.value
            else:
                merged[p.name] = plain.get(p.name, p.default)
        return trainer_params.validate_config(merged)

    def to_configuration(self, values: Mapping[str, Any]) -> CS.Configuration:
        """A plain mapping (from the ledger) back to a ConfigSpace configuration."""
        import ConfigSpace as CS

        return CS.Configuration(self.configspace, values=dict(values))


def _plain_value(spec: ParameterSpec, value: Any) -> Value:
    if spec.type == "int":
        return int(value)
    if spec.type == "float":
        return float(value)
    # Categorical: hand back the spec's own (plain) choice equal to the sampled value.
    for choice in spec.choices or ():
        if choice == value:
            return choice
    raise ValueError(f"parameter {spec.name!r}: {value!r} is not one of {spec.choices}")


# --- building ---------------------------------------------------------------------------


def build(space: SearchSpaceSpec, seed: int | None = None) -> SearchSpace:
    """Resolve a spec's search space; raises :class:`SpecError` naming the bad field."""
    base = "spec.searchSpace"
    entries: dict[str, tuple[ParameterSpec, str]] = {}
    if space.preset == "paper":
        for p in paper_preset():
            entries[p.name] = (p, f"{base}.preset")
    for i, p in enumerate(space.parameters):
        entries[p.name] = (p, f"{base}.parameters[{i}]")

    # Every parameter must be one the trainer understands, inside its range.
    for name, (_, path) in entries.items():
        if name not in trainer_params.BY_NAME:
            raise SpecError(f"{path}.name", f"unknown parameter {name!r}; the trainer "
                            f"understands: {', '.join(trainer_params.NAMES)}")
    missing = [n for n in trainer_params.NAMES if n not in entries]
    if missing:
        raise SpecError(f"{base}.parameters", "every trainer parameter must be searched or "
                        f"constant; missing: {', '.join(missing)}")
    resolved = tuple(_resolve(*entries[n]) for n in trainer_params.NAMES)
    if not any(p.searched for p in resolved):
        raise SpecError(f"{base}.parameters", "the space is empty: every parameter is a "
                        "constant, so there is nothing to search")

    # Everything ConfigSpace would refuse is refused here, in our words and without
    # ConfigSpace (see SearchSpace); building it later cannot fail.
    by_name = {p.name: p for p in resolved}
    _check_conditions(space.conditions, by_name, f"{base}.conditions")
    _check_forbidden(space, by_name, f"{base}.forbidden")
    return SearchSpace(resolved, space, seed)


def check_baseline(config: Mapping[str, Value], path: str) -> dict[str, Value]:
    """A baseline must be a complete, valid trainer configuration."""
    try:
        return trainer_params.validate_config(config)
    except trainer_params.ConfigError as exc:
        raise SpecError(f"{path}.{exc.parameter}", str(exc).split(": ", 1)[-1]) from exc


def _check_value(name: str, value: Value, path: str) -> Value:
    """A value must be one the trainer accepts for ``name``."""
    try:
        return trainer_params.BY_NAME[name].check(value)
    except trainer_params.ConfigError as exc:
        raise SpecError(path, str(exc).split(": ", 1)[-1]) from exc


def _resolve(p: ParameterSpec, path: str) -> ResolvedParameter:
    contract = trainer_params.BY_NAME[p.name]
    if p.type == "constant":
        assert p.value is not None
        value = _check_value(p.name, p.value, f"{path}.value")
        return ResolvedParameter(p, value, path)
    if p.type == "categorical":
        for j, choice in enumerate(p.choices or ()):
            _check_value(p.name, choice, f"{path}.choices[{j}]")
        first = p.default if p.default is not None else (p.choices or (0,))[0]
        if first not in (p.choices or ()):
            raise SpecError(f"{path}.default", f"must be one of the choices, got {first!r}")
        return ResolvedParameter(p, first, path)
    if p.type != contract.kind:
        raise SpecError(f"{path}.type", f"the trainer's {p.name!r} is {contract.kind}; "
                        f"use type {contract.kind}, categorical or constant")
    assert p.low is not None and p.high is not None
    _check_value(p.name, p.low, f"{path}.low")
    _check_value(p.name, p.high, f"{path}.high")
    if p.type == "int" and p.low >= p.high:
        raise SpecError(f"{path}.low", f"must be smaller than high, got {p.low:g}")
    default: Value
    if p.default is not None:
        _check_value(p.name, p.default, f"{path}.default")
        if not p.low <= p.default <= p.high:
            raise SpecError(f"{path}.default", f"must lie in [{p.low:g}, {p.high:g}], "
                            f"got {p.default!r}")
        default = int(p.default) if p.type == "int" else float(p.default)
    else:
        default = _middle(p)
    return ResolvedParameter(p, default, path)


def _middle(p: ParameterSpec) -> Value:
    """ConfigSpace's default: the middle of the range, in log space when log-scaled."""
    assert p.low is not None and p.high is not None
    if p.log:
        middle = math.exp((math.log(p.low) + math.log(p.high)) / 2)
        return round(middle) if p.type == "int" else middle
    middle = (p.low + p.high) / 2
    return round(middle) if p.type == "int" else middle


def _accepts(p: ResolvedParameter, value: Value) -> bool:
    """Whether a searched parameter can take ``value``."""
    s = p.spec
    if s.type == "categorical":
        return value in (s.choices or ())
    assert s.low is not None and s.high is not None
    if s.type == "int" and float(value) != int(value):
        return False
    return s.low <= value <= s.high


def _searched(name: str, by_name: Mapping[str, ResolvedParameter], path: str) -> \
        ResolvedParameter:
    if name not in by_name:
        raise SpecError(path, f"unknown parameter {name!r}")
    p = by_name[name]
    if not p.searched:
        raise SpecError(path, f"{name!r} is a constant; only searched parameters can take "
                        "part in conditions and forbidden clauses")
    return p


# --- checks (no ConfigSpace) ------------------------------------------------------------


def _check_condition(c: ConditionSpec, parent: ResolvedParameter, path: str) -> None:
    """A condition must be one that can be true, on a value the parent can take."""
    if c.op == "equals":
        if parent.spec.type == "float":
            raise SpecError(f"{path}.equals", f"{c.parent!r} is continuous, so equals is "
                            "(almost) never true; use greaterThan or lessThan")
        if not _accepts(parent, c.value):
            raise SpecError(f"{path}.equals", f"{c.value!r} is not a value {c.parent!r} "
                            "can take, so the condition is never true")
        return
    if c.op == "in":
        if parent.spec.type == "float":
            raise SpecError(f"{path}.in", f"{c.parent!r} is continuous; use greaterThan "
                            "or lessThan")
        for j, v in enumerate(c.value):
            if not _accepts(parent, v):
                raise SpecError(f"{path}.in[{j}]", f"{v!r} is not a value {c.parent!r} "
                                "can take")
        return
    if parent.spec.type == "categorical":
        raise SpecError(f"{path}.{c.op}", f"{c.parent!r} is categorical (unordered); use "
                        "equals or in")
    low, high = parent.spec.low, parent.spec.high
    assert low is not None and high is not None
    # ConfigSpace wants the threshold to be a value the parent can take.
    if not _accepts(parent, c.value):
        kind = "an integer " if parent.spec.type == "int" else ""
        raise SpecError(f"{path}.{c.op}", f"must be {kind}in [{low:g}, {high:g}], the range "
                        f"of {c.parent!r}; got {c.value!r}")
    if c.op == "greaterThan" and not c.value < high:
        raise SpecError(f"{path}.greaterThan", f"{c.parent!r} never exceeds {high:g}, "
                        "so the condition is never true")
    if c.op == "lessThan" and not c.value > low:
        raise SpecError(f"{path}.lessThan", f"{c.parent!r} is never below {low:g}, so the "
                        "condition is never true")


def _check_conditions(conditions: tuple[ConditionSpec, ...],
                      by_name: Mapping[str, ResolvedParameter], base: str) -> None:
    # Conditions on the same child are combined with AND (as ConfigSpace requires); the
    # dependency graph must stay acyclic.
    children: dict[str, set[str]] = {}  # parent -> children
    grouped: dict[str, str] = {}  # child -> path of its last condition
    for i, c in enumerate(conditions):
        path = f"{base}[{i}]"
        _searched(c.child, by_name, f"{path}.child")
        parent = _searched(c.parent, by_name, f"{path}.parent")
        if c.child == c.parent:
            raise SpecError(f"{path}.parent", "a parameter cannot depend on itself")
        _check_condition(c, parent, path)
        grouped[c.child] = path
    for child, path in grouped.items():
        for c in conditions:
            if c.child == child:
                children.setdefault(c.parent, set()).add(child)
        if _reaches(children, child, child):
            raise SpecError(path, f"contradictory condition on {child!r}: the conditions "
                            "form a cycle")


def _reaches(children: Mapping[str, set[str]], start: str, target: str) -> bool:
    """Whether ``target`` is below ``start`` in the dependency graph."""
    seen: set[str] = set()
    todo = list(children.get(start, ()))
    while todo:
        node = todo.pop()
        if node == target:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(children.get(node, ()))
    return False


def _holds(c: ConditionSpec, value: Value) -> bool:
    if c.op == "equals":
        return bool(value == c.value)
    if c.op == "in":
        return value in c.value
    if c.op == "greaterThan":
        return bool(value > c.value)
    return bool(value < c.value)


def _default_configuration(space: SearchSpaceSpec,
                           by_name: Mapping[str, ResolvedParameter]) -> dict[str, Value]:
    """The searched parameters' defaults, without those their conditions make inactive
    (ConfigSpace's default configuration)."""
    values = {name: p.default for name, p in by_name.items() if p.searched}
    changed = True
    while changed:  # Inactivity propagates down the (acyclic) dependency graph.
        changed = False
        for c in space.conditions:
            if c.child in values and (c.parent not in values
                                      or not _holds(c, values[c.parent])):
                del values[c.child]
                changed = True
    return values


def _check_clause(c: ForbiddenClause, by_name: Mapping[str, ResolvedParameter],
                  path: str) -> None:
    p = _searched(c.name, by_name, f"{path}.name")
    values = list(c.value) if c.op == "in" else [c.value]
    for j, v in enumerate(values):
        if not _accepts(p, v):
            at = f"{path}.in[{j}]" if c.op == "in" else f"{path}.equals"
            raise SpecError(at, f"{v!r} is not a value {c.name!r} can take")


def _check_forbidden(space: SearchSpaceSpec, by_name: Mapping[str, ResolvedParameter],
                     base: str) -> None:
    defaults = _default_configuration(space, by_name)
    for i, fb in enumerate(space.forbidden):
        path = f"{base}[{i}]"
        for j, c in enumerate(fb.all):
            _check_clause(c, by_name, f"{path}.all[{j}]")
        names = [c.name for c in fb.all]
        if len(set(names)) != len(names):
            raise SpecError(f"{path}.all", f"names a parameter twice: {names}")
        if all(_covers_every_value(c, by_name[c.name]) for c in fb.all):
            raise SpecError(path, f"forbids every value of {', '.join(map(repr, names))}, "
                            "so every configuration; nothing could be sampled")
        if all(c.name in defaults and (defaults[c.name] in c.value if c.op == "in"
                                       else defaults[c.name] == c.value) for c in fb.all):
            raise SpecError(path, "forbids the default configuration, which ConfigSpace "
                            "refuses; give the parameters involved a default outside it")


def _covers_every_value(c: ForbiddenClause, p: ResolvedParameter) -> bool:
    """Whether a clause names every value its (categorical or integer) parameter can take."""
    listed = set(c.value) if c.op == "in" else {c.value}
    if p.spec.type == "categorical":
        return set(p.spec.choices or ()) <= listed
    if p.spec.type == "int" and p.spec.low is not None and p.spec.high is not None:
        low, high = int(p.spec.low), int(p.spec.high)
        return high - low < len(listed) and all(v in listed for v in range(low, high + 1))
    return False


# --- ConfigSpace (built on first use) --------------------------------------------------


def _configspace(parameters: tuple[ResolvedParameter, ...], space: SearchSpaceSpec,
                 seed: int | None) -> CS.ConfigurationSpace:
    """ConfigSpace's form of a space that :func:`build` has checked."""
    import ConfigSpace as CS

    configspace = CS.ConfigurationSpace(seed=seed)
    hyper = {p.name: _hyperparameter(p) for p in parameters if p.searched}
    configspace.add(list(hyper.values()))
    grouped: dict[str, list[Any]] = {}
    for c in space.conditions:
        grouped.setdefault(c.child, []).append(_condition(c, hyper))
    for items in grouped.values():
        configspace.add(items[0] if len(items) == 1 else CS.AndConjunction(*items))
    for fb in space.forbidden:
        clauses = [CS.ForbiddenInClause(hyper[c.name], list(c.value)) if c.op == "in"
                   else CS.ForbiddenEqualsClause(hyper[c.name], c.value) for c in fb.all]
        configspace.add(clauses[0] if len(clauses) == 1
                        else CS.ForbiddenAndConjunction(*clauses))
    return configspace


def _hyperparameter(p: ResolvedParameter) -> Any:
    import ConfigSpace as CS

    s = p.spec
    if s.type == "categorical":
        return CS.CategoricalHyperparameter(s.name, list(s.choices or ()),
                                            default_value=p.default)
    if s.type == "int":
        return CS.UniformIntegerHyperparameter(s.name, int(s.low or 0), int(s.high or 0),
                                               log=s.log, default_value=int(p.default))
    return CS.UniformFloatHyperparameter(s.name, float(s.low or 0.0), float(s.high or 0.0),
                                         log=s.log, default_value=float(p.default))


def _condition(c: ConditionSpec, hyper: Mapping[str, Any]) -> Any:
    import ConfigSpace as CS

    child, parent = hyper[c.child], hyper[c.parent]
    if c.op == "equals":
        return CS.EqualsCondition(child, parent, c.value)
    if c.op == "in":
        return CS.InCondition(child, parent, list(c.value))
    if c.op == "greaterThan":
        return CS.GreaterThanCondition(child, parent, c.value)
    return CS.LessThanCondition(child, parent, c.value)
