"""The parameters the trainer understands: the one contract between search and training.

The joint space of Zela et al. (2018, arXiv 1807.06906, table of the 17 dimensions) is
declared here once, with names, kinds, ranges and log scaling. The search side builds its
ConfigSpace from this table (or checks a user's space against it); the trainer validates
every configuration it receives against it. Nothing here imports torch, so the controller
image can import this module without PyTorch.

A configuration is a flat mapping of all 17 names to values. Integers must be integral
(``3`` or ``3.0``, never ``3.5``); every value must lie inside its range, inclusive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ParamKind = Literal["int", "float"]


class ConfigError(ValueError):
    """A configuration the trainer cannot train; the message names the parameter."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"parameter {parameter!r}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class Param:
    """One dimension of the joint space: its name, kind, inclusive range and scaling."""

    name: str
    kind: ParamKind
    low: float
    high: float
    log: bool
    group: Literal["architecture", "training"]
    doc: str

    def check(self, value: object) -> int | float:
        """Return ``value`` as this parameter's Python type, or raise :class:`ConfigError`."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # numpy scalars are accepted through their ``item()``; strings are not numbers.
            item = getattr(value, "item", None)
            if callable(item) and not isinstance(value, (str, bytes)):
                return self.check(item())
            raise ConfigError(self.name, f"expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ConfigError(self.name, f"must be finite, got {value!r}")
        if self.kind == "int":
            if float(value) != int(value):
                raise ConfigError(self.name, f"must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if not self.low <= value <= self.high:
            raise ConfigError(
                self.name, f"{value!r} is outside its range [{_fmt(self.low)}, {_fmt(self.high)}]"
            )
        return value


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


# The paper's table, in its order: ten architectural dimensions, then seven of training.
PARAMETERS: tuple[Param, ...] = (
    Param("nr_residual_blocks_1", "int", 1, 16, True, "architecture", "blocks in stage 1"),
    Param("nr_residual_blocks_2", "int", 1, 16, True, "architecture", "blocks in stage 2"),
    Param("nr_residual_blocks_3", "int", 1, 16, True, "architecture", "blocks in stage 3"),
    Param("initial_filters", "int", 8, 32, True, "architecture", "channels of the stem"),
    Param("widen_factor_1", "float", 0.5, 8, True, "architecture", "stage 1 width / stem"),
    Param("widen_factor_2", "float", 0.5, 4, True, "architecture", "stage 2 width / stage 1"),
    Param("widen_factor_3", "float", 0.5, 4, True, "architecture", "stage 3 width / stage 2"),
    Param("res_branches_1", "int", 1, 5, False, "architecture", "branches per block, stage 1"),
    Param("res_branches_2", "int", 1, 5, False, "architecture", "branches per block, stage 2"),
    Param("res_branches_3", "int", 1, 5, False, "architecture", "branches per block, stage 3"),
    Param("learning_rate", "float", 0.001, 1, True, "training", "SGDR peak learning rate"),
    Param("batch_size", "int", 32, 128, True, "training", "images per SGD step"),
    Param("weight_decay", "float", 1e-5, 1e-3, True, "training", "L2 penalty"),
    Param("momentum", "float", 0.001, 0.99, False, "training", "Nesterov momentum"),
    Param("alpha", "float", 0, 1, False, "training", "mixup Beta(alpha, alpha); 0 = off"),
    Param("length", "int", 0, 20, False, "training", "cutout side in pixels; 0 = off"),
    Param("death_rate", "float", 0, 1, False, "training", "ShakeDrop death rate"),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMETERS}
NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)


def validate_config(config: Mapping[str, object]) -> dict[str, int | float]:
    """Check a configuration against :data:`PARAMETERS` and return it with plain Python types.

    Raises :class:`ConfigError` naming the first unknown, missing or out-of-range parameter.
    """
    if not isinstance(config, Mapping):
        raise ConfigError("<config>", f"expected a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(BY_NAME))
    if unknown:
        raise ConfigError(unknown[0], "unknown parameter; the trainer understands: "
                          + ", ".join(NAMES))
    missing = [name for name in NAMES if name not in config]
    if missing:
        raise ConfigError(missing[0], "missing from the configuration")
    return {p.name: p.check(config[p.name]) for p in PARAMETERS}


def channels(config: Mapping[str, int | float]) -> tuple[int, int, int]:
    """The compounding stage widths: round(initial x w1), then x w2, then x w3 (at least 1)."""
    c1 = max(1, round(float(config["initial_filters"]) * float(config["widen_factor_1"])))
    c2 = max(1, round(c1 * float(config["widen_factor_2"])))
    c3 = max(1, round(c2 * float(config["widen_factor_3"])))
    return c1, c2, c3
