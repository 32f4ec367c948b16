"""The values each parameter can legally take, and reading a number from a YAML value: what a user
may fix, choose or bound a search dimension to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


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
