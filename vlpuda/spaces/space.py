"""Search dimensions and define-by-run search spaces for OptunaSearch.

A `SearchSpace` is a callable `space(trial) -> dict`: OptunaSearch hands it a trial, it calls
`trial.suggest_*` once per searched dimension, and the dict it returns is merged into the trial's
Tune config. Parameter names are the trainer's flat config names, identical in configs, spaces,
Tune configs and MLflow params.

The RST threshold is searched as `rst_threshold_over_lr` (tau / lr), not as tau itself: the SGD
momentum buffers survive the reset, so tau acts as a threshold on the per-step update, whose size
scales with the learning rate (method.md section 4, step 4). Searching the ratio keeps the good
region of tau aligned with whatever lr the sampler picks. The space derives the trainer's plain
`rst_threshold = rst_threshold_over_lr * lr` itself, so the trainer, MLflow and the front table
all see the tau that was actually used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from vlpuda.errors import ConfigError

DimensionKind = Literal["float", "int", "categorical", "fixed"]

# Where a user fixes or narrows a dimension; messages name keys under it.
OVERRIDES_KEY = "search.space_overrides"


@dataclass(frozen=True)
class Domain:
    """The values a parameter can legally take, whatever the search bounds say.

    Attributes:
        low: lower end of the legal interval.
        high: upper end of the legal interval.
        low_open: True when `low` itself is illegal.
        high_open: True when `high` itself is illegal.
        what: what the parameter is, for messages ("a learning rate").
    """

    low: float
    high: float
    low_open: bool
    high_open: bool
    what: str

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the legal interval."""
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        """The interval in words: "> 0", ">= 0" or "in (0, 1]"."""
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


_POSITIVE = (0.0, math.inf, True, False)
_NON_NEGATIVE = (0.0, math.inf, False, False)

# Legal values per parameter: what a user may fix, choose or bound a dimension to.
PARAMETER_DOMAINS: dict[str, Domain] = {
    "lr": Domain(*_POSITIVE, "the encoder learning rate"),
    "lr_multiplier": Domain(*_POSITIVE, "the head / encoder learning-rate ratio"),
    "lambda1": Domain(*_NON_NEGATIVE, "a loss weight"),
    "lambda2": Domain(*_NON_NEGATIVE, "a loss weight"),
    "lambda3": Domain(*_NON_NEGATIVE, "a loss weight"),
    "label_smoothing": Domain(0.0, 1.0, False, True, "label smoothing"),
    "rst_threshold_over_lr": Domain(*_POSITIVE, "the RST threshold / lr"),
    "rst_ratio": Domain(0.0, 1.0, True, False, "the fraction of visual weights kept changed"),
    "fixmatch_threshold": Domain(0.0, 1.0, True, True, "a confidence threshold"),
    "fixmatch_factor": Domain(*_NON_NEGATIVE, "a loss weight"),
}


def parse_number(raw: Any, *, integer: bool = False) -> float | int | None:
    """A finite number from a YAML value, or None when it is not one.

    Numeric strings are accepted because YAML 1.1 (PyYAML) reads `1e-6`, without a dot, as the
    string "1e-6". Booleans are refused although Python counts them as ints.

    Args:
        raw: the value as parsed from YAML or given in code.
        integer: require an integral value and return an int.

    Returns:
        The number (float, or int when `integer`), or None.
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        number = float(raw)
    elif isinstance(raw, str):
        try:
            number = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(number):
        return None
    if integer:
        return int(number) if number.is_integer() else None
    return number


def domain_problem(name: str, value: float, key: str) -> str | None:
    """The message for a value outside its parameter's legal domain, or None when it is legal."""
    domain = PARAMETER_DOMAINS.get(name)
    if domain is None or domain.contains(value):
        return None
    return f"{key}: {domain.what} must be {domain.describe()}, got {value:g}"


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


def derive_rst_threshold(params: Mapping[str, Any]) -> dict[str, float]:
    """The trainer's `rst_threshold` (tau) from `rst_threshold_over_lr` and `lr` when both are set.

    Args:
        params: a flat config or trial parameters.

    Returns:
        {"rst_threshold": over_lr * lr}, or {} when either is missing.
    """
    if "rst_threshold_over_lr" in params and "lr" in params:
        return {"rst_threshold": float(params["rst_threshold_over_lr"]) * float(params["lr"])}
    return {}


def _default_value(name: str, defaults: Mapping[str, Any]) -> tuple[Any, str]:
    """A dimension's default and a label saying where it came from, (None, "") when absent.

    Presets state the paper's tau as `rst_threshold`; the space searches tau / lr, so that default
    is converted with the preset's own lr.
    """
    if name in defaults:
        return defaults[name], name
    if name == "rst_threshold_over_lr" and "rst_threshold" in defaults and "lr" in defaults:
        tau, lr = parse_number(defaults["rst_threshold"]), parse_number(defaults["lr"])
        if tau is not None and lr:
            return tau / lr, f"rst_threshold_over_lr (rst_threshold {tau:g} / lr {lr:g})"
    return None, ""


def _matching_choice(raw: Any, choices: tuple[Any, ...]) -> Any:
    """The choice equal to `raw` read as a number ("1e3" and 1000 both pick 1000.0), else raw."""
    number = parse_number(raw)
    for choice in choices:
        if choice == raw or (number is not None and choice == number):
            return choice
    return raw


@dataclass(frozen=True)
class SearchSpace:
    """A named define-by-run search space.

    Attributes:
        name: the space's name, as written in `search.space`.
        dimensions: the parameters, searched or fixed, in suggestion order.
        constants: values every trial of this space gets (e.g. {"rst": True, "rst_mode":
            "ratio", "fixmatch": False}); they say which method variant the space trains.
    """

    name: str
    dimensions: tuple[Dimension, ...]
    # Kept out of the hash: a dict is unhashable, and the name and dimensions identify a space.
    constants: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        names = [d.name for d in self.dimensions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"space {self.name}: duplicate dimensions {duplicates}")
        clash = sorted(set(names) & set(self.constants))
        if clash:
            raise ValueError(f"space {self.name}: {clash} are both dimensions and constants")
        # A plain dict copy: picklable (Ray snapshots the searcher, space included) and detached
        # from the caller's mapping.
        object.__setattr__(self, "constants", dict(self.constants))

    @property
    def names(self) -> tuple[str, ...]:
        """Every dimension's name, searched or fixed."""
        return tuple(d.name for d in self.dimensions)

    @property
    def searched(self) -> tuple[Dimension, ...]:
        """The dimensions Optuna samples (all but the fixed ones)."""
        return tuple(d for d in self.dimensions if d.searched)

    def dimension(self, name: str) -> Dimension:
        """The dimension called `name`.

        Raises:
            KeyError: when the space has no such dimension.
        """
        for dim in self.dimensions:
            if dim.name == name:
                return dim
        raise KeyError(name)

    def __call__(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Suggest every searched dimension from `trial` and return this trial's config fragment.

        The fragment holds the constants, every dimension's value (suggested or fixed) and the
        derived `rst_threshold`. OptunaSearch merges it over the suggestions it recorded itself,
        which are the same values, so returning them too is harmless and lets the space be used
        without Ray (`config = space(study.ask())`).

        Args:
            trial: an Optuna trial, or Ray's recording wrapper around one.

        Returns:
            A flat dict of config values.
        """
        config: dict[str, Any] = dict(self.constants)
        for dim in self.dimensions:
            config[dim.name] = dim.suggest(trial)
        config.update(derive_rst_threshold(config))
        return config

    def optuna_distributions(self) -> dict[str, BaseDistribution]:
        """The distributions of the searched dimensions, for `optuna.trial.create_trial` when a
        study is seeded with finished trials (OptunaSearch's `evaluated_rewards` is broken for two
        objectives)."""
        return {d.name: d.distribution() for d in self.searched}

    def lowest_point(self) -> dict[str, Any]:
        """Every searched dimension at its lower bound (a categorical one at its first choice):
        a point any trial could be given, for checks that need one."""
        return {d.name: d.choices[0] if d.kind == "categorical" else
                int(d.low) if d.kind == "int" else d.low for d in self.searched}

    def defaults_point(
        self, defaults: Mapping[str, Any], source: str | None = None
    ) -> dict[str, Any]:
        """The preset's paper defaults as one point, for `points_to_evaluate` / `enqueue_trial`.

        Only searched dimensions appear: fixed ones are not Optuna parameters. A dimension the
        defaults do not mention is left out, and the sampler draws it for that first trial. A
        missing `rst_threshold_over_lr` is computed from the defaults' `rst_threshold` and `lr`.
        A default outside the search bounds is an error, not clipped: clipping would silently
        evaluate a point that is not the paper's.

        Args:
            defaults: flat config values, e.g. a preset's trainer settings.
            source: the config file, for the error message.

        Returns:
            {name: value} for each searched dimension with a default.

        Raises:
            ConfigError: listing every default that is not a number or lies outside its bounds.
        """
        point: dict[str, Any] = {}
        problems: list[str] = []
        for dim in self.searched:
            raw, label = _default_value(dim.name, defaults)
            if raw is None:
                continue
            value: Any = raw
            if dim.kind in ("float", "int"):
                value = parse_number(raw, integer=dim.kind == "int")
                if value is None:
                    problems.append(f"{label}: expected a number, got {raw!r}")
                    continue
            elif dim.kind == "categorical":
                value = _matching_choice(raw, dim.choices or ())
            if not dim.contains(value):
                problems.append(
                    f"{label}: the default {value!r} lies outside space {self.name}'s "
                    f"{dim.describe()}; widen the bound in {OVERRIDES_KEY}.{dim.name} or change "
                    "the default"
                )
                continue
            point[dim.name] = value
        if problems:
            raise ConfigError(problems, source)
        return point

    def describe(self) -> list[str]:
        """One line per dimension and one for the constants, for the CLI and logs."""
        width = max((len(n) for n in self.names), default=0)
        lines = [f"{d.name:<{width}}  {d.describe()}" for d in self.dimensions]
        constants = ", ".join(f"{k}={v!r}" for k, v in self.constants.items())
        return [*lines, f"{'constants':<{width}}  {constants}"]
