"""Decide how each parameter of a search is analysed: kind, range, log scale, choices.

fANOVA marginalises over the *declared* space (Hutter et al. 2014), so ranges matter: a
parameter searched over [10, 20] must not be analysed over the trainer's full [1, 100].
The declaration is taken, in this order, from

1. ``configspace.json`` in the source folder (ConfigSpace's own JSON format);
2. the search spec (YAML; ``spec.searchSpace`` with ``preset: paper`` and ``parameters``);
3. the trainer's parameter table (:mod:`trainer.params`) for kind and log scale of names it
   knows, with ranges from the observed values;
4. the observed values alone (integers -> int, other numbers -> float, anything else ->
   categorical, one distinct value -> constant).

Observed values outside a declared range widen it (with a note): the data wins.

.. note::
   The spec is read leniently (unknown keys ignored); a spec this reader cannot follow
   falls back to rules 3 and 4 with a note. ConfigSpace's normal distributions are treated
   as uniform over the observed range; forbidden clauses are ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer import params as contract

logger = logging.getLogger(__name__)

ParamKind = Literal["int", "float", "categorical"]
CONFIGSPACE_FILE = "configspace.json"
_SPEC_NAMES = ("spec.yaml", "spec.yml", "search.yaml", "search.yml")


@dataclass(frozen=True)
class ParamSpace:
    """How one parameter is analysed; ``low``/``high`` are in natural units (not log)."""

    name: str
    kind: ParamKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass
class DeclaredSpace:
    """What the source folder says about the space and the search, before looking at data."""

    params: dict[str, ParamSpace] = field(default_factory=dict)
    constants: set[str] = field(default_factory=set)
    workers: int | None = None
    origin: str | None = None  # file the declaration came from


@dataclass
class ResolvedSpace:
    """The parameters to analyse (non-constant) and those held constant in the data."""

    params: dict[str, ParamSpace]
    constants: list[str]


def read_declared_space(folder: Path, notes: list[str]) -> DeclaredSpace:
    """The space declared in ``folder`` (ConfigSpace JSON first, then the spec), if any."""
    declared = DeclaredSpace()
    spec = _find_spec(folder)
    if spec is not None:
        path, doc = spec
        body = doc.get("spec", doc)
        workers = body.get("parallelTrialCount")
        if isinstance(workers, int) and not isinstance(workers, bool) and workers > 0:
            declared.workers = workers

    # ConfigSpace's file is exact (it is what the engine sampled from); the spec is next.
    cs_path = folder / CONFIGSPACE_FILE
    if cs_path.is_file():
        try:
            declared.params, declared.constants = _from_configspace(cs_path)
            declared.origin = cs_path.name
            return declared
        except Exception as exc:  # ConfigSpace raises many types on a damaged file
            notes.append(f"{cs_path.name} could not be read ({exc}); falling back to the spec.")

    if spec is not None:
        path, doc = spec
        try:
            declared.params, declared.constants = _from_spec(doc)
            declared.origin = path.name
        except (TypeError, ValueError, KeyError) as exc:
            notes.append(f"search space in {path.name} could not be followed ({exc}); "
                         "kinds and ranges are inferred from the data.")
    return declared


def _find_spec(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The first YAML document in ``folder`` that holds a ``searchSpace``."""
    named = [folder / n for n in _SPEC_NAMES]
    others = sorted(p for p in folder.glob("*.y*ml") if p not in named)
    for path in [p for p in named if p.is_file()] + others:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as exc:
            logger.debug("Spec candidate %s skipped: %s.", path, exc)
            continue
        for doc in docs:
            if isinstance(doc, dict):
                body = doc.get("spec", doc)
                if isinstance(body, dict) and isinstance(body.get("searchSpace"), dict):
                    return path, doc
    return None


def _from_contract() -> dict[str, ParamSpace]:
    return {
        p.name: ParamSpace(p.name, p.kind, float(p.low), float(p.high), p.log)
        for p in contract.PARAMETERS
    }


def _from_spec(doc: Mapping[str, Any]) -> tuple[dict[str, ParamSpace], set[str]]:
    body = doc.get("spec", doc)
    space = body["searchSpace"]
    # As in the spec itself, no preset means the paper's space.
    params = _from_contract() if space.get("preset", "paper") == "paper" else {}
    constants: set[str] = set()
    for entry in space.get("parameters") or []:
        name = entry["name"]
        kind = str(entry.get("type", "constant" if "value" in entry else "float")).lower()
        if kind in ("constant", "const", "fixed"):
            params.pop(name, None)
            constants.add(name)
        elif kind in ("categorical", "choice", "ordinal"):
            params[name] = ParamSpace(name, "categorical", choices=tuple(entry["choices"]))
        elif kind in ("int", "integer", "float", "real", "uniform_int", "uniform_float"):
            params[name] = ParamSpace(
                name, "int" if "int" in kind else "float",
                float(entry["low"]), float(entry["high"]), bool(entry.get("log", False)),
            )
            constants.discard(name)
        else:
            raise ValueError(f"parameter {name!r} has unknown type {kind!r}")
    return params, constants


def _from_configspace(path: Path) -> tuple[dict[str, ParamSpace], set[str]]:
    import ConfigSpace as cs  # the controller extra; imported only when such a file exists

    space = cs.ConfigurationSpace.from_json(path)
    params: dict[str, ParamSpace] = {}
    constants: set[str] = set()
    for hp in space.values():
        if isinstance(hp, cs.Constant):
            constants.add(hp.name)
        elif isinstance(hp, (cs.CategoricalHyperparameter, cs.OrdinalHyperparameter)):
            choices = hp.choices if hasattr(hp, "choices") else hp.sequence
            params[hp.name] = ParamSpace(hp.name, "categorical", choices=tuple(choices))
        elif hasattr(hp, "lower") and hasattr(hp, "upper"):
            # Uniform, normal and beta numbers alike: analysed as uniform over their bounds.
            kind: ParamKind = "int" if "Integer" in type(hp).__name__ else "float"
            params[hp.name] = ParamSpace(
                hp.name, kind, float(hp.lower), float(hp.upper), bool(getattr(hp, "log", False))
            )
    return params, constants


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def resolve_space(
    configs: Iterable[Mapping[str, Any]], declared: DeclaredSpace, notes: list[str]
) -> ResolvedSpace:
    """Combine the declaration with the values actually sampled, one entry per parameter."""
    observed: dict[str, list[Any]] = {}
    for config in configs:
        for name, value in config.items():
            observed.setdefault(name, []).append(value)

    if not declared.params and observed:
        notes.append(
            "No search-space description found (configspace.json or the spec): kinds and log "
            "scales come from the trainer's parameter table where names match, ranges from "
            "the observed values."
        )

    params: dict[str, ParamSpace] = {}
    constants: list[str] = []
    for name in sorted(observed):
        values = observed[name]
        if name in declared.constants:
            constants.append(name)
            continue
        space = _resolve_one(name, values, declared.params.get(name), notes)
        if space is None:
            constants.append(name)
        else:
            params[name] = space
    return ResolvedSpace(params, constants)


def _resolve_one(
    name: str, values: list[Any], declared: ParamSpace | None, notes: list[str]
) -> ParamSpace | None:
    """One parameter's space, or None when it is constant."""
    # Anything that is not a finite number everywhere is analysed as a category.
    numeric = all(_is_number(v) and math.isfinite(v) for v in values)
    if (declared is not None and declared.kind == "categorical") or not numeric:
        known = list(declared.choices) if declared is not None else []
        extra = sorted({_hashable(v) for v in values} - set(known), key=repr)
        choices = tuple(known + extra)
        return ParamSpace(name, "categorical", choices=choices) if len(choices) > 1 else None

    if declared is not None:
        kind, log, low, high = declared.kind, declared.log, declared.low, declared.high
    elif name in contract.BY_NAME:
        p = contract.BY_NAME[name]
        kind, log, low, high = p.kind, p.log, None, None
    else:
        kind = "int" if all(isinstance(v, int) for v in values) else "float"
        log, low, high = False, None, None

    # The data wins over the declaration: fANOVA must cover every sampled value.
    seen_low, seen_high = float(min(values)), float(max(values))
    if low is None or high is None:
        low, high = seen_low, seen_high
    elif seen_low < low or seen_high > high:
        notes.append(
            f"parameter {name!r}: observed values [{seen_low:g}, {seen_high:g}] leave the "
            f"declared range [{low:g}, {high:g}]; the range was widened to cover them."
        )
        low, high = min(low, seen_low), max(high, seen_high)
    if log and low <= 0:
        notes.append(f"parameter {name!r} is log-scaled but reaches {low:g}; analysed linearly.")
        log = False
    if low == high:
        return None
    return ParamSpace(name, kind, low, high, log)


def _hashable(value: object) -> Any:
    """Categorical choices as optuna accepts them: None, bool, int, float or str."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
