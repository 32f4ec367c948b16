"""One parameter of a search space: a float or int range, a choice list, or a fixed value, and how
it is suggested from an Optuna trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

DimensionKind = Literal["float", "int", "categorical", "fixed"]


@dataclass(frozen=True)
class Dimension:
    """One parameter of a search space.

    Attributes:
        name: the trainer's flat config name.
        kind: "float" or "int" (a range), "categorical" (a choice list) or "fixed" (one value,
            not searched).
        low: lower bound of a range, inclusive.
        high: upper bound of a range, inclusive.
        log: sample a range uniformly in log space.
        choices: the options of a categorical dimension.
        value: the value of a fixed dimension.
    """

    name: str
    kind: DimensionKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    value: Any | None = None

    def __post_init__(self) -> None:
        # Programming errors only: user input is validated into messages before it gets here.
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"dimension {self.name}: needs low <= high")
            if self.log and self.low <= 0:
                raise ValueError(f"dimension {self.name}: a log range needs low > 0")
        elif self.kind == "categorical":
            if not self.choices:
                raise ValueError(f"dimension {self.name}: needs at least one choice")
        elif self.kind == "fixed":
            if self.value is None:
                raise ValueError(f"dimension {self.name}: a fixed dimension needs a value")
        else:
            raise ValueError(f"dimension {self.name}: unknown kind {self.kind!r}")

    @property
    def searched(self) -> bool:
        """True unless the dimension is fixed."""
        return self.kind != "fixed"

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Draw this dimension's value from `trial` (or return the fixed value).

        Only `trial.suggest_*` is called, so Ray's wrapper around the trial (which records the
        suggested values) works as well as a plain `optuna.Trial`.
        """
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or ()))
        return self.value

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution `suggest` samples from.

        Raises:
            ValueError: for a fixed dimension, which Optuna never sees.
        """
        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices or ()))
        raise ValueError(f"dimension {self.name} is fixed and has no distribution")

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this dimension can produce."""
        if self.kind in ("float", "int"):
            return self.low <= value <= self.high
        if self.kind == "categorical":
            return value in (self.choices or ())
        return value == self.value

    def describe(self) -> str:
        """A short human-readable form: "[1e-09, 1e-05] log", "one of (1000, 10000)", "= 0.1"."""
        if self.kind in ("float", "int"):
            return f"{self.kind} [{self.low:g}, {self.high:g}]{' log' if self.log else ''}"
        if self.kind == "categorical":
            return f"one of {self.choices}"
        return f"= {self.value!r}"


def float_dimension(name: str, low: float, high: float, *, log: bool = False) -> Dimension:
    """A float range dimension, sampled uniformly (or log-uniformly when `log`)."""
    return Dimension(name, "float", low=float(low), high=float(high), log=log)


def fixed_dimension(name: str, value: Any) -> Dimension:
    """A dimension pinned to one value: not searched, but still in every trial's config."""
    return Dimension(name, "fixed", value=value)


def categorical_dimension(name: str, choices: tuple[Any, ...]) -> Dimension:
    """A dimension chosen from a list of options."""
    return Dimension(name, "categorical", choices=tuple(choices))
