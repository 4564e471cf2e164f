"""The search spec: one YAML format for a local search and for the ``JointSearch`` resource.

``nas-bohb search`` and the Kubernetes operator read the same document, a ``JointSearch``
(``apiVersion``/``kind``/``metadata``/``spec``) or its bare ``spec`` mapping. Field names
are camelCase and reuse Kubeflow Katib's vocabulary where it fits (``parallelTrialCount``,
``maxTrialCount``, ``maxFailedTrialCount``, ``trialTemplate``). Everything is checked here,
before anything runs: unknown keys, wrong types, out-of-range values and contradictory
search spaces are refused with a :class:`SpecError` whose message starts with the path of
the bad field (``spec.budgets.eta: must be at least 2, got 1``).

The search space itself (preset, overrides, conditions, forbidden clauses) is resolved
and checked against the trainer's parameter table by :mod:`controller.space`.

.. note::
   PyYAML reads ``1e-3`` (no dot) as a string; numeric fields therefore also accept a
   string holding a finite number.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

API_VERSION = "nas-bohb.io/v1alpha1"
KIND = "JointSearch"

ParameterType = Literal["int", "float", "categorical", "constant"]
ConditionOp = Literal["equals", "in", "greaterThan", "lessThan"]
ForbiddenOp = Literal["equals", "in"]
Device = Literal["auto", "cpu", "cuda"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


class SpecError(ValueError):
    """An invalid search spec; ``field`` is the dotted path of the offending field."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path


# --- shapes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Budgets:
    """Training seconds per trial: the smallest and largest budget and Hyperband's eta."""

    min: float
    max: float
    eta: int = 3


@dataclass(frozen=True)
class ParameterSpec:
    """One entry of ``searchSpace.parameters``; which fields apply depends on ``type``."""

    name: str
    type: ParameterType
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[int | float, ...] | None = None
    value: int | float | None = None
    default: int | float | None = None


@dataclass(frozen=True)
class ConditionSpec:
    """``child`` is active only when ``parent`` satisfies ``op`` against ``value``."""

    child: str
    parent: str
    op: ConditionOp
    value: Any


@dataclass(frozen=True)
class ForbiddenClause:
    """One clause of a forbidden combination: ``name`` equals (or is in) ``value``."""

    name: str
    op: ForbiddenOp
    value: Any


@dataclass(frozen=True)
class ForbiddenSpec:
    """A combination that must never be sampled: all clauses true at once."""

    all: tuple[ForbiddenClause, ...]


@dataclass(frozen=True)
class SearchSpaceSpec:
    """The searched space: a preset, overrides by name, conditions and forbidden clauses."""

    preset: Literal["paper", "none"] = "paper"
    parameters: tuple[ParameterSpec, ...] = ()
    conditions: tuple[ConditionSpec, ...] = ()
    forbidden: tuple[ForbiddenSpec, ...] = ()


@dataclass(frozen=True)
class BohbSpec:
    """BOHB's model settings; the defaults are hpbandster's and the paper's."""

    top_n_percent: int = 15
    num_samples: int = 64
    random_fraction: float = 1 / 3
    bandwidth_factor: float = 3.0
    min_bandwidth: float = 1e-3
    min_points_in_model: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where CIFAR-10 comes from: a local ``path`` (archive or folder) and/or a ``url``."""

    url: str | None = None
    md5: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class TrainerSpec:
    """How trials are started; ``command`` replaces ``python -m trainer`` (local only)."""

    device: Device = "auto"
    threads: int | None = None
    extra_args: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None
    overrun_factor: float = 2.0
    startup_allowance_seconds: float = 600.0


@dataclass(frozen=True)
class BaselineSpec:
    """A named configuration trained once at the largest budget, for comparison only."""

    name: str
    config: dict[str, int | float]


@dataclass(frozen=True)
class SearchSpec:
    """A whole, validated search."""

    budgets: Budgets
    search_space: SearchSpaceSpec = field(default_factory=SearchSpaceSpec)
    max_iterations: int | None = None
    time_limit_seconds: float | None = None
    max_trial_count: int | None = None
    parallel_trial_count: int = 1
    max_failed_trial_count: int | None = None
    seed: int = 0
    bohb: BohbSpec = field(default_factory=BohbSpec)
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    baselines: tuple[BaselineSpec, ...] = ()
    trial_template: dict[str, Any] | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as camelCase plain data with every default filled in (a bare spec)."""
        return _dump(self)

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that define a search's shape; a ledger refuses a spec that changes them."""
        whole = self.to_dict()
        return {k: whole[k] for k in ("budgets", "searchSpace", "bohb", "seed", "baselines")}

    def fingerprint(self) -> str:
        """A short hash of :meth:`fingerprint_fields`."""
        text = json.dumps(self.fingerprint_fields(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- loading ----------------------------------------------------------------------------


def load_file(path: str) -> SearchSpec:
    """Read and validate a YAML file; YAML syntax errors become a :class:`SpecError`."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return load_text(text, source=path)


def load_text(text: str, source: str = "<spec>") -> SearchSpec:
    """Parse YAML text and validate it."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(source, f"not valid YAML: {exc}") from exc
    return load_spec(document)


def load_spec(document: object) -> SearchSpec:
    """Validate a ``JointSearch`` document or a bare spec mapping.

    Raises :class:`SpecError` naming the first bad field.
    """
    if not isinstance(document, Mapping):
        raise SpecError("spec", f"expected a mapping, got {_kind(document)}")
    name: str | None = None
    if "spec" in document or "kind" in document or "apiVersion" in document:
        top = _Fields(document, "")
        api = top.optional("apiVersion", _str)
        if api is not None and api != API_VERSION:
            raise SpecError("apiVersion", f"expected {API_VERSION!r}, got {api!r}")
        kind = top.optional("kind", _str)
        if kind is not None and kind != KIND:
            raise SpecError("kind", f"expected {KIND!r}, got {kind!r}")
        metadata = top.optional("metadata", _mapping)
        if metadata is not None and isinstance(metadata.get("name"), str):
            name = metadata["name"]
        top.optional("status", _mapping)  # A resource read back from a cluster has one.
        body = top.required("spec", _mapping)
        top.done()
    else:
        body = document
    search = _parse_spec(body, "spec", name)

    # The space is resolved here so that a bad space is refused with the rest of the spec.
    from controller import space

    resolved = space.build(search.search_space)
    floor = resolved.dimensions + 1
    chosen = search.bohb.min_points_in_model
    if chosen is not None and chosen < floor:
        raise SpecError("spec.bohb.minPointsInModel",
                        f"must be at least dimensions + 1 = {floor}, got {chosen}")
    for i, baseline in enumerate(search.baselines):
        space.check_baseline(baseline.config, f"spec.baselines[{i}].config")
    return search


def _parse_spec(body: Mapping[str, Any], path: str, name: str | None) -> SearchSpec:
    f = _Fields(body, path)
    budgets = f.required("budgets", _budgets)
    max_iterations = f.optional("maxIterations", _int_at_least(1))
    time_limit = f.optional("timeLimitSeconds", _positive_float)
    max_trials = f.optional("maxTrialCount", _int_at_least(1))
    parallel = f.optional("parallelTrialCount", _int_at_least(1))
    max_failed = f.optional("maxFailedTrialCount", _int_at_least(0))
    seed = f.optional("seed", _int_at_least(0))
    search_space = f.optional("searchSpace", _search_space)
    bohb = f.optional("bohb", _bohb)
    dataset = f.optional("dataset", _dataset)
    trainer = f.optional("trainer", _trainer)
    baselines = f.optional("baselines", _list_of(_baseline))
    template = f.optional("trialTemplate", _mapping)
    f.done()
    if max_iterations is None and time_limit is None and max_trials is None:
        raise SpecError(f"{path}.maxIterations",
                        "set at least one of maxIterations, timeLimitSeconds or maxTrialCount")
    names = [b.name for b in baselines or ()]
    for i, baseline_name in enumerate(names):
        if baseline_name in names[:i]:
            raise SpecError(f"{path}.baselines[{i}].name",
                            f"duplicate baseline name {baseline_name!r}")
    return SearchSpec(
        budgets=budgets,
        search_space=search_space or SearchSpaceSpec(),
        max_iterations=max_iterations,
        time_limit_seconds=time_limit,
        max_trial_count=max_trials,
        parallel_trial_count=parallel if parallel is not None else 1,
        max_failed_trial_count=max_failed,
        seed=seed if seed is not None else 0,
        bohb=bohb or BohbSpec(),
        dataset=dataset or DatasetSpec(),
        trainer=trainer or TrainerSpec(),
        baselines=tuple(baselines or ()),
        trial_template=dict(template) if template is not None else None,
        name=name,
    )


# --- field readers ----------------------------------------------------------------------


class _Fields:
    """Reads the keys of one mapping and refuses the ones nobody asked for."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def required(self, key: str, read: Any) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            raise SpecError(self._at(key), "is required")
        return read(self.data[key], self._at(key))

    def optional(self, key: str, read: Any) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            return None
        return read(self.data[key], self._at(key))

    def done(self) -> None:
        for key in self.data:
            if key not in self.seen:
                known = ", ".join(sorted(self.seen))
                raise SpecError(self._at(str(key)), f"unknown field; known fields here: {known}")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"expected a mapping, got {_kind(value)}")
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, f"expected a non-empty string, got {value!r}")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"expected true or false, got {value!r}")
    return value


def _number(value: object, path: str) -> float:
    """A finite int or float (or a string holding one, for PyYAML's ``1e-3``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SpecError(path, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise SpecError(path, f"must be finite, got {value!r}")
    return value


def _plain_number(value: object, path: str) -> int | float:
    """A number kept as int when it is one (parameter values, choices)."""
    number = _number(value, path)
    return int(number) if isinstance(number, int) else float(number)


def _float(value: object, path: str) -> float:
    return float(_number(value, path))


def _positive_float(value: object, path: str) -> float:
    number = _float(value, path)
    if number <= 0:
        raise SpecError(path, f"must be positive, got {number!r}")
    return number


def _int(value: object, path: str) -> int:
    number = _number(value, path)
    if float(number) != int(number):
        raise SpecError(path, f"must be an integer, got {value!r}")
    return int(number)


def _int_at_least(low: int) -> Any:
    def read(value: object, path: str) -> int:
        number = _int(value, path)
        if number < low:
            raise SpecError(path, f"must be at least {low}, got {number}")
        return number

    return read


def _list_of(read: Any) -> Any:
    def read_list(value: object, path: str) -> list[Any]:
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            raise SpecError(path, f"expected a list, got {_kind(value)}")
        return [read(item, f"{path}[{i}]") for i, item in enumerate(value)]

    return read_list


def _budgets(value: object, path: str) -> Budgets:
    f = _Fields(_mapping(value, path), path)
    low = f.required("min", _positive_float)
    high = f.required("max", _positive_float)
    eta = f.optional("eta", _int)
    f.done()
    if low >= high:
        raise SpecError(f"{path}.min", f"must be smaller than max ({high:g}), got {low:g}")
    if eta is not None and eta < 2:
        raise SpecError(f"{path}.eta", f"must be at least 2, got {eta}")
    return Budgets(min=low, max=high, eta=eta if eta is not None else 3)


def _parameter(value: object, path: str) -> ParameterSpec:
    f = _Fields(_mapping(value, path), path)
    name = f.required("name", _str)
    kind = f.required("type", _str)
    if kind not in ("int", "float", "categorical", "constant"):
        raise SpecError(f"{path}.type",
                        f"expected int, float, categorical or constant, got {kind!r}")
    allowed = {
        "int": {"low", "high", "log", "default"},
        "float": {"low", "high", "log", "default"},
        "categorical": {"choices", "default"},
        "constant": {"value"},
    }[kind]
    for key in ("low", "high", "log", "choices", "value", "default"):
        if f.has(key) and key not in allowed:
            raise SpecError(f"{path}.{key}", f"does not apply to a parameter of type {kind}")
    low = f.optional("low", _float)
    high = f.optional("high", _float)
    log = f.optional("log", _bool)
    choices = f.optional("choices", _list_of(_plain_number))
    constant = f.optional("value", _plain_number)
    default = f.optional("default", _plain_number)
    f.done()
    if kind in ("int", "float"):
        if low is None:
            raise SpecError(f"{path}.low", "is required")
        if high is None:
            raise SpecError(f"{path}.high", "is required")
        if low >= high:
            raise SpecError(f"{path}.low", f"must be smaller than high ({high:g}), got "
                            f"{low:g} (use type: constant for a fixed value)")
        if log and low <= 0:
            raise SpecError(f"{path}.log", f"needs low > 0, got low {low:g}")
    if kind == "categorical":
        if not choices:
            raise SpecError(f"{path}.choices", "needs at least one choice")
        if len(set(choices)) != len(choices):
            raise SpecError(f"{path}.choices", f"has duplicates: {choices}")
    if kind == "constant" and constant is None:
        raise SpecError(f"{path}.value", "is required")
    return ParameterSpec(
        name=name,
        type=kind,
        low=low,
        high=high,
        log=bool(log),
        choices=tuple(choices) if choices is not None else None,
        value=constant,
        default=default,
    )


def _condition(value: object, path: str) -> ConditionSpec:
    f = _Fields(_mapping(value, path), path)
    child = f.required("child", _str)
    parent = f.required("parent", _str)
    ops = [op for op in ("equals", "in", "greaterThan", "lessThan") if f.has(op)]
    if len(ops) != 1:
        raise SpecError(path, "needs exactly one of equals, in, greaterThan, lessThan")
    op: Any = ops[0]
    reader = _list_of(_plain_number) if op == "in" else _plain_number
    operand = f.required(op, reader)
    f.done()
    if op == "in" and not operand:
        raise SpecError(f"{path}.in", "needs at least one value")
    return ConditionSpec(child=child, parent=parent, op=op,
                         value=tuple(operand) if op == "in" else operand)


def _forbidden_clause(value: object, path: str) -> ForbiddenClause:
    f = _Fields(_mapping(value, path), path)
    name = f.required("name", _str)
    ops = [op for op in ("equals", "in") if f.has(op)]
    if len(ops) != 1:
        raise SpecError(path, "needs exactly one of equals, in")
    op: Any = ops[0]
    operand = f.required(op, _list_of(_plain_number) if op == "in" else _plain_number)
    f.done()
    if op == "in" and not operand:
        raise SpecError(f"{path}.in", "needs at least one value")
    return ForbiddenClause(name=name, op=op,
                           value=tuple(operand) if op == "in" else operand)


def _forbidden(value: object, path: str) -> ForbiddenSpec:
    f = _Fields(_mapping(value, path), path)
    clauses = f.required("all", _list_of(_forbidden_clause))
    f.done()
    if not clauses:
        raise SpecError(f"{path}.all", "needs at least one clause")
    return ForbiddenSpec(all=tuple(clauses))


def _search_space(value: object, path: str) -> SearchSpaceSpec:
    f = _Fields(_mapping(value, path), path)
    preset = f.optional("preset", _str)
    if preset is not None and preset not in ("paper", "none"):
        raise SpecError(f"{path}.preset", f"expected paper or none, got {preset!r}")
    parameters = f.optional("parameters", _list_of(_parameter))
    conditions = f.optional("conditions", _list_of(_condition))
    forbidden = f.optional("forbidden", _list_of(_forbidden))
    f.done()
    names = [p.name for p in parameters or ()]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SpecError(f"{path}.parameters[{i}].name", f"duplicate parameter {name!r}")
    return SearchSpaceSpec(
        preset=preset or "paper",
        parameters=tuple(parameters or ()),
        conditions=tuple(conditions or ()),
        forbidden=tuple(forbidden or ()),
    )


def _bohb(value: object, path: str) -> BohbSpec:
    f = _Fields(_mapping(value, path), path)
    top = f.optional("topNPercent", _int)
    samples = f.optional("numSamples", _int_at_least(1))
    fraction = f.optional("randomFraction", _float)
    factor = f.optional("bandwidthFactor", _positive_float)
    min_bw = f.optional("minBandwidth", _positive_float)
    min_points = f.optional("minPointsInModel", _int_at_least(1))
    f.done()
    if top is not None and not 1 <= top <= 99:
        raise SpecError(f"{path}.topNPercent", f"must be between 1 and 99, got {top}")
    if fraction is not None and not 0 <= fraction <= 1:
        raise SpecError(f"{path}.randomFraction", f"must be between 0 and 1, got {fraction}")
    d = BohbSpec()
    return BohbSpec(
        top_n_percent=top if top is not None else d.top_n_percent,
        num_samples=samples if samples is not None else d.num_samples,
        random_fraction=fraction if fraction is not None else d.random_fraction,
        bandwidth_factor=factor if factor is not None else d.bandwidth_factor,
        min_bandwidth=min_bw if min_bw is not None else d.min_bandwidth,
        min_points_in_model=min_points,
    )


def _dataset(value: object, path: str) -> DatasetSpec:
    f = _Fields(_mapping(value, path), path)
    url = f.optional("url", _str)
    md5 = f.optional("md5", _str)
    local = f.optional("path", _str)
    f.done()
    if md5 is not None and not _MD5.match(md5):
        raise SpecError(f"{path}.md5", f"expected 32 hexadecimal digits, got {md5!r}")
    return DatasetSpec(url=url, md5=md5.lower() if md5 else None, path=local)


def _trainer(value: object, path: str) -> TrainerSpec:
    f = _Fields(_mapping(value, path), path)
    device = f.optional("device", _str)
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise SpecError(f"{path}.device", f"expected auto, cpu or cuda, got {device!r}")
    threads = f.optional("threads", _int_at_least(1))
    extra = f.optional("extraArgs", _list_of(_str))
    command = f.optional("command", _list_of(_str))
    factor = f.optional("overrunFactor", _float)
    allowance = f.optional("startupAllowanceSeconds", _float)
    f.done()
    if command is not None and not command:
        raise SpecError(f"{path}.command", "needs at least the program to run")
    if factor is not None and factor < 1:
        raise SpecError(f"{path}.overrunFactor", f"must be at least 1, got {factor}")
    if allowance is not None and allowance < 0:
        raise SpecError(f"{path}.startupAllowanceSeconds",
                        f"must not be negative, got {allowance}")
    d = TrainerSpec()
    return TrainerSpec(
        device=device or "auto",
        threads=threads,
        extra_args=tuple(extra or ()),
        command=tuple(command) if command is not None else None,
        overrun_factor=factor if factor is not None else d.overrun_factor,
        startup_allowance_seconds=allowance if allowance is not None
        else d.startup_allowance_seconds,
    )


def _baseline(value: object, path: str) -> BaselineSpec:
    f = _Fields(_mapping(value, path), path)
    name = f.required("name", _str)
    config = f.required("config", _mapping)
    f.done()
    if not _DNS_LABEL.match(name):
        raise SpecError(f"{path}.name", f"must be a lowercase DNS label of at most 40 "
                        f"characters (a-z, 0-9, -), got {name!r}")
    values: dict[str, int | float] = {}
    for key, item in config.items():
        values[str(key)] = _plain_number(item, f"{path}.config.{key}")
    return BaselineSpec(name=name, config=values)


# --- dumping ----------------------------------------------------------------------------


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _dump_parameter(p: ParameterSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "type": p.type}
    if p.type in ("int", "float"):
        out.update(low=p.low, high=p.high, log=p.log)
    if p.type == "categorical":
        out["choices"] = list(p.choices or ())
    if p.type == "constant":
        out["value"] = p.value
    if p.default is not None:
        out["default"] = p.default
    return out


def _dump(s: SearchSpec) -> dict[str, Any]:
    space = s.search_space
    return _drop_none({
        "budgets": {"min": s.budgets.min, "max": s.budgets.max, "eta": s.budgets.eta},
        "maxIterations": s.max_iterations,
        "timeLimitSeconds": s.time_limit_seconds,
        "maxTrialCount": s.max_trial_count,
        "parallelTrialCount": s.parallel_trial_count,
        "maxFailedTrialCount": s.max_failed_trial_count,
        "seed": s.seed,
        "searchSpace": {
            "preset": space.preset,
            "parameters": [_dump_parameter(p) for p in space.parameters],
            "conditions": [
                {"child": c.child, "parent": c.parent,
                 c.op: list(c.value) if c.op == "in" else c.value}
                for c in space.conditions
            ],
            "forbidden": [
                {"all": [{"name": c.name, c.op: list(c.value) if c.op == "in" else c.value}
                         for c in fb.all]}
                for fb in space.forbidden
            ],
        },
        "bohb": _drop_none({
            "topNPercent": s.bohb.top_n_percent,
            "numSamples": s.bohb.num_samples,
            "randomFraction": s.bohb.random_fraction,
            "bandwidthFactor": s.bohb.bandwidth_factor,
            "minBandwidth": s.bohb.min_bandwidth,
            "minPointsInModel": s.bohb.min_points_in_model,
        }),
        "dataset": _drop_none({"url": s.dataset.url, "md5": s.dataset.md5,
                               "path": s.dataset.path}),
        "trainer": _drop_none({
            "device": s.trainer.device,
            "threads": s.trainer.threads,
            "extraArgs": list(s.trainer.extra_args),
            "command": list(s.trainer.command) if s.trainer.command is not None else None,
            "overrunFactor": s.trainer.overrun_factor,
            "startupAllowanceSeconds": s.trainer.startup_allowance_seconds,
        }),
        "baselines": [{"name": b.name, "config": dict(b.config)} for b in s.baselines],
        "trialTemplate": s.trial_template,
    })
