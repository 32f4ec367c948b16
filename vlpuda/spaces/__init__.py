"""Named define-by-run search spaces for OptunaSearch, user overrides, and the paper defaults as
the first point to evaluate."""

from __future__ import annotations

from vlpuda.spaces.catalogue import DEFAULT_DIMENSIONS, SPACES, make_space
from vlpuda.spaces.overrides import SPACE_KEY, build_space
from vlpuda.spaces.dimension import (
    Dimension,
    categorical_dimension,
    fixed_dimension,
    float_dimension,
)
from vlpuda.spaces.domains import PARAMETER_DOMAINS, Domain
from vlpuda.spaces.space import OVERRIDES_KEY, SearchSpace, derive_rst_threshold

__all__ = [
    "DEFAULT_DIMENSIONS",
    "OVERRIDES_KEY",
    "PARAMETER_DOMAINS",
    "SPACES",
    "SPACE_KEY",
    "Dimension",
    "Domain",
    "SearchSpace",
    "build_space",
    "categorical_dimension",
    "derive_rst_threshold",
    "fixed_dimension",
    "float_dimension",
    "make_space",
]
