"""The `search.early_stopping` section: which scheduler, its rungs, and how it is described.

Kept apart from settings.py (which validates the rest of the section) and free of Ray imports,
so `vlpuda validate` stays fast.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EarlyStopping(BaseModel):
    """MOASHA (Pareto rank over both objectives) or ASHA (first objective only). Trials either
    stops are PRUNED in the study and never reach the front."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["moasha", "asha", "none"] | None = None
    asha: bool = False  # the older spelling of method: asha
    # Epochs every trial runs before ASHA may stop it; default: a quarter of the budget. Less is
    # refused: the ramp and the sparsity reset make early accuracy a poor predictor.
    grace_period: int | None = Field(None, gt=0)
    reduction_factor: float = Field(3.0, gt=1)

    @property
    def effective_method(self) -> str:
        """The method that runs: as named; `asha: true` is asha; a section that sets a grace
        period or reduction factor without naming a method turns on the default, moasha."""
        if self.method is not None:
            return self.method
        if self.asha:
            return "asha"
        return "moasha" if self.model_fields_set & {"grace_period", "reduction_factor"} \
            else "none"


def describe_stopping(stopping: EarlyStopping, grace: int, epochs: int,
                      metrics: tuple[str, ...]) -> str:
    """Which scheduler runs, on what, and why that one (for the start-up line and MLflow)."""
    method = stopping.effective_method
    if method == "none":
        return "none (every trial runs all epochs)"
    why = ("search.early_stopping.method" if stopping.method else
           "early_stopping.asha: true" if stopping.asha else
           "the default once early stopping is configured")
    rungs = f"grace {grace} of {epochs} epochs, top 1/{stopping.reduction_factor:g} continue"
    if method == "asha":
        return f"ASHA on {metrics[0]} alone ({rungs}; chosen by {why})"
    return (f"MOASHA, Pareto rank over {' and '.join(metrics)} ({rungs}; chosen by {why})")
