"""Build a named space with the user's `search.space_overrides` applied, validating every entry.

Per dimension name, an override is one of:

    lambda2: 0.1                     a number fixes the value (the dimension is no longer searched)
    lr: {low: 1e-7, high: 1e-5}      bounds replace the default ones; the log flag is kept unless
                                     `log:` is given; a missing bound keeps its default
    lr_multiplier: [1000, 10000]     a list searches those choices only

Every problem found is collected, and one ConfigError lists them all, each naming its key.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from vlpuda.errors import ConfigError
from vlpuda.spaces.catalogue import DEFAULT_DIMENSIONS, SPACES
from vlpuda.spaces.dimension import Dimension, categorical_dimension, fixed_dimension
from vlpuda.spaces.domains import domain_problem, parse_number
from vlpuda.spaces.space import OVERRIDES_KEY, SearchSpace

# The config key that names the space.
SPACE_KEY = "search.space"
BOUND_FIELDS = ("low", "high", "log")


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    """" (did you mean 'x'?)" for the closest option, or "" when none is close."""
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_space_problem(name: Any) -> str:
    """The message for a space name that is not in SPACES."""
    hint = _did_you_mean(str(name), list(SPACES))
    return f"{SPACE_KEY}: unknown space {name!r}; valid: {', '.join(SPACES)}{hint}"


def unknown_parameter_problem(name: Any, space_name: str | None, valid: Sequence[str]) -> str:
    """The message for an override of a parameter the space does not search.

    Besides the valid names and the closest match, it says which other spaces search the
    parameter, and that `rst_threshold` is derived rather than searched.
    """
    where = f"space {space_name!r}" if space_name else "any space"
    message = (
        f"{OVERRIDES_KEY}.{name}: unknown parameter {name!r} for {where}; valid: "
        f"{', '.join(valid)}{_did_you_mean(str(name), valid)}"
    )
    if name == "rst_threshold":
        message += "; rst_threshold is derived as rst_threshold_over_lr * lr: override that one"
    others = [s.name for s in SPACES.values() if name in s.names]
    if others:
        message += f"; it is searched by {', '.join(others)}: choose one of those in {SPACE_KEY}"
    return message


def _number(raw: Any, key: str, base: Dimension, problems: list[str]) -> float | int | None:
    """`raw` as a legal number for `base`'s parameter, or None after recording why it is not."""
    value = parse_number(raw, integer=base.kind == "int")
    if value is None:
        kind = "an integer" if base.kind == "int" else "a number"
        problems.append(f"{key}: expected {kind}, got {raw!r}")
        return None
    problem = domain_problem(base.name, value, key)
    if problem:
        problems.append(problem)
        return None
    return value


def _bounds_override(
    base: Dimension, spec: Mapping[Any, Any], key: str, problems: list[str]
) -> Dimension | None:
    """A range dimension with the bounds (and log flag) of `spec` replacing `base`'s."""
    count = len(problems)
    unknown = [f for f in spec if f not in BOUND_FIELDS]
    for field_name in unknown:
        problems.append(
            f"{key}.{field_name}: unknown field; bounds take {', '.join(BOUND_FIELDS)} "
            "(a number fixes the value, a list gives choices)"
        )
    log = spec.get("log", base.log)
    if not isinstance(log, bool):
        problems.append(f"{key}.log: expected true or false, got {log!r}")
        log = base.log
    low = _number(spec["low"], f"{key}.low", base, problems) if "low" in spec else base.low
    high = _number(spec["high"], f"{key}.high", base, problems) if "high" in spec else base.high
    if low is None or high is None:
        return None
    if low > high:
        problems.append(f"{key}: low {low:g} is greater than high {high:g}")
    elif log and low <= 0:
        problems.append(
            f"{key}.low: a log-scale range needs a positive lower bound, got {low:g}; "
            "give log: false to include 0"
        )
    if len(problems) > count:
        return None
    return Dimension(base.name, base.kind, low=low, high=high, log=log)


def _choices_override(
    base: Dimension, spec: Sequence[Any], key: str, problems: list[str]
) -> Dimension | None:
    """A categorical dimension searching exactly the listed values."""
    if not spec:
        problems.append(f"{key}: the choice list is empty; give at least one value")
        return None
    count = len(problems)
    values = [_number(raw, f"{key}[{i}]", base, problems) for i, raw in enumerate(spec)]
    if len(problems) > count:
        return None
    if len(set(values)) < len(values):
        problems.append(f"{key}: the choice list {list(spec)} repeats a value")
        return None
    return categorical_dimension(base.name, tuple(values))


def parse_override(base: Dimension, spec: Any, problems: list[str]) -> Dimension | None:
    """The dimension that replaces `base` under one override.

    Args:
        base: the space's default (numeric) dimension of that name.
        spec: the override: a number, a {low, high, log} mapping or a list of choices.
        problems: collects the messages for what is wrong; nothing is raised here.

    Returns:
        The new dimension, or None when the override is invalid.
    """
    key = f"{OVERRIDES_KEY}.{base.name}"
    if isinstance(spec, Mapping):
        return _bounds_override(base, spec, key, problems)
    if isinstance(spec, (list, tuple)):
        return _choices_override(base, spec, key, problems)
    if spec is None or isinstance(spec, bool) or parse_number(spec) is None:
        problems.append(
            f"{key}: expected a number (to fix the value), {{low: .., high: ..}} bounds or a "
            f"list of choices, got {spec!r}"
        )
        return None
    value = _number(spec, key, base, problems)
    return None if value is None else fixed_dimension(base.name, value)


def build_space(
    name: str, overrides: Mapping[str, Any] | None = None, source: str | None = None
) -> SearchSpace:
    """The named space with the user's overrides applied.

    Args:
        name: a key of SPACES (`search.space` in the config).
        overrides: `search.space_overrides`: per dimension name, a number, bounds or choices.
        source: the config file the values came from, for the error message.

    Returns:
        The space, its dimensions in the default order.

    Raises:
        ConfigError: listing every problem at once: an unknown space, unknown parameters,
            non-numeric values, values outside a parameter's legal domain (e.g. a negative
            learning rate, a ratio outside (0, 1]), inverted bounds, a log range reaching 0, an
            empty or repeating choice list.
    """
    problems: list[str] = []
    base = SPACES.get(name)
    if base is None:
        problems.append(unknown_space_problem(name))
    # With an unknown space, still check the overrides against every known parameter, so one run
    # reports everything.
    dimensions = {d.name: d for d in base.dimensions} if base else dict(DEFAULT_DIMENSIONS)
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        problems.append(
            f"{OVERRIDES_KEY}: expected a mapping of parameter name to a number, bounds or "
            f"choices, got {overrides!r}"
        )
        overrides = {}
    replaced: dict[str, Dimension] = {}
    for param, spec in overrides.items():
        if param not in dimensions:
            problems.append(unknown_parameter_problem(param, base and base.name, list(dimensions)))
            continue
        dim = parse_override(dimensions[param], spec, problems)
        if dim is not None:
            replaced[param] = dim
    if problems or base is None:
        raise ConfigError(problems, source)
    return SearchSpace(
        base.name,
        tuple(replaced.get(d.name, d) for d in base.dimensions),
        base.constants,
    )
