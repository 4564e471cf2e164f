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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ConfigSpace as CS

from controller.spec import (
    ConditionSpec,
    ForbiddenClause,
    ParameterSpec,
    SearchSpaceSpec,
    SpecError,
)
from trainer import params as trainer_params

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
    """A resolved space: its ConfigSpace and the conversion to trainer configurations."""

    def __init__(self, parameters: tuple[ResolvedParameter, ...],
                 configspace: CS.ConfigurationSpace) -> None:
        self.parameters = parameters
        self.configspace = configspace
        self._by_name = {p.name: p for p in parameters}
        self._searched = tuple(p.name for p in parameters if p.searched)

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

    configspace = CS.ConfigurationSpace(seed=seed)
    hyper = {p.name: _hyperparameter(p) for p in resolved if p.searched}
    configspace.add(list(hyper.values()))
    by_name = {p.name: p for p in resolved}
    _add_conditions(configspace, space.conditions, by_name, hyper, f"{base}.conditions")
    _add_forbidden(configspace, space.forbidden, by_name, hyper, f"{base}.forbidden")
    return SearchSpace(resolved, configspace)


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


def _hyperparameter(p: ResolvedParameter) -> Any:
    s = p.spec
    if s.type == "categorical":
        return CS.CategoricalHyperparameter(s.name, list(s.choices or ()),
                                            default_value=p.default)
    if s.type == "int":
        return CS.UniformIntegerHyperparameter(s.name, int(s.low or 0), int(s.high or 0),
                                               log=s.log, default_value=int(p.default))
    return CS.UniformFloatHyperparameter(s.name, float(s.low or 0.0), float(s.high or 0.0),
                                         log=s.log, default_value=float(p.default))


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


def _condition(c: ConditionSpec, parent: ResolvedParameter, hyper: Mapping[str, Any],
               path: str) -> Any:
    child_hp, parent_hp = hyper[c.child], hyper[c.parent]
    if c.op == "equals":
        if parent.spec.type == "float":
            raise SpecError(f"{path}.equals", f"{c.parent!r} is continuous, so equals is "
                            "(almost) never true; use greaterThan or lessThan")
        if not _accepts(parent, c.value):
            raise SpecError(f"{path}.equals", f"{c.value!r} is not a value {c.parent!r} "
                            "can take, so the condition is never true")
        return CS.EqualsCondition(child_hp, parent_hp, c.value)
    if c.op == "in":
        if parent.spec.type == "float":
            raise SpecError(f"{path}.in", f"{c.parent!r} is continuous; use greaterThan "
                            "or lessThan")
        for j, v in enumerate(c.value):
            if not _accepts(parent, v):
                raise SpecError(f"{path}.in[{j}]", f"{v!r} is not a value {c.parent!r} "
                                "can take")
        return CS.InCondition(child_hp, parent_hp, list(c.value))
    if parent.spec.type == "categorical":
        raise SpecError(f"{path}.{c.op}", f"{c.parent!r} is categorical (unordered); use "
                        "equals or in")
    low, high = parent.spec.low, parent.spec.high
    assert low is not None and high is not None
    if c.op == "greaterThan":
        if not c.value < high:
            raise SpecError(f"{path}.greaterThan", f"{c.parent!r} never exceeds {high:g}, "
                            "so the condition is never true")
        return CS.GreaterThanCondition(child_hp, parent_hp, c.value)
    if not c.value > low:
        raise SpecError(f"{path}.lessThan", f"{c.parent!r} is never below {low:g}, so the "
                        "condition is never true")
    return CS.LessThanCondition(child_hp, parent_hp, c.value)


def _add_conditions(configspace: CS.ConfigurationSpace, conditions: tuple[ConditionSpec, ...],
                    by_name: Mapping[str, ResolvedParameter], hyper: Mapping[str, Any],
                    base: str) -> None:
    # Conditions on the same child are combined with AND, as ConfigSpace requires.
    grouped: dict[str, list[Any]] = {}
    last_path: dict[str, str] = {}
    for i, c in enumerate(conditions):
        path = f"{base}[{i}]"
        _searched(c.child, by_name, f"{path}.child")
        parent = _searched(c.parent, by_name, f"{path}.parent")
        if c.child == c.parent:
            raise SpecError(f"{path}.parent", "a parameter cannot depend on itself")
        grouped.setdefault(c.child, []).append(_condition(c, parent, hyper, path))
        last_path[c.child] = path
    for child, items in grouped.items():
        condition = items[0] if len(items) == 1 else CS.AndConjunction(*items)
        try:
            configspace.add(condition)
        except Exception as exc:  # ConfigSpace raises several unrelated types here.
            detail = "the conditions form a cycle" if "Cyclic" in type(exc).__name__ \
                else f"{type(exc).__name__}: {exc}"
            raise SpecError(last_path[child], f"contradictory condition on {child!r}: "
                            f"{detail}") from exc


def _clause(c: ForbiddenClause, by_name: Mapping[str, ResolvedParameter],
            hyper: Mapping[str, Any], path: str) -> Any:
    p = _searched(c.name, by_name, f"{path}.name")
    values = list(c.value) if c.op == "in" else [c.value]
    for j, v in enumerate(values):
        if not _accepts(p, v):
            at = f"{path}.in[{j}]" if c.op == "in" else f"{path}.equals"
            raise SpecError(at, f"{v!r} is not a value {c.name!r} can take")
    if c.op == "in":
        return CS.ForbiddenInClause(hyper[c.name], values)
    return CS.ForbiddenEqualsClause(hyper[c.name], c.value)


def _add_forbidden(configspace: CS.ConfigurationSpace, forbidden: tuple[Any, ...],
                   by_name: Mapping[str, ResolvedParameter], hyper: Mapping[str, Any],
                   base: str) -> None:
    for i, fb in enumerate(forbidden):
        path = f"{base}[{i}]"
        clauses = [_clause(c, by_name, hyper, f"{path}.all[{j}]") for j, c in enumerate(fb.all)]
        names = [c.name for c in fb.all]
        if len(set(names)) != len(names):
            raise SpecError(f"{path}.all", f"names a parameter twice: {names}")
        clause = clauses[0] if len(clauses) == 1 else CS.ForbiddenAndConjunction(*clauses)
        try:
            configspace.add(clause)
        except Exception as exc:  # ForbiddenValueError and friends.
            raise SpecError(path, "forbids the default configuration, which ConfigSpace "
                            "refuses; give the parameters involved a default outside it "
                            f"({exc})") from exc
