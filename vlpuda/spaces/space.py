"""Define-by-run search spaces for OptunaSearch (their dimensions: `vlpuda.spaces.dimension`).

A `SearchSpace` is a callable `space(trial) -> dict`: OptunaSearch hands it a trial, it calls
`trial.suggest_*` once per searched dimension, and the dict it returns is merged into the trial's
Tune config. Parameter names are the trainer's flat config names, identical in configs, spaces,
Tune configs and MLflow params.

The RST threshold is searched as `rst_threshold_over_lr` (tau / lr), not as tau itself: the SGD
momentum buffers survive the reset, so tau acts as a threshold on the per-step update, whose size
scales with the learning rate (docs/method.md#reset-after-every-step). Searching the ratio keeps
the good region of tau aligned with whatever lr the sampler picks. The space derives the trainer's
plain `rst_threshold = rst_threshold_over_lr * lr` itself, so the trainer, MLflow and the front
table all see the tau that was actually used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from vlpuda.errors import ConfigError
from vlpuda.spaces.dimension import Dimension
from vlpuda.spaces.domains import parse_number

# Where a user fixes or narrows a dimension; messages name keys under it.
OVERRIDES_KEY = "search.space_overrides"


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
