"""Early stopping: ASHA on target accuracy, and a storage budget.

Both only end trials; ParetoOptunaSearch then tells Optuna such trials as PRUNED, so neither can
put a partial result on the front.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.stopper import Stopper

from vlpuda.search.settings import SearchPlan

# ASHA counts epochs as the loop reports them, not Tune iterations: a trial retried from its
# checkpoint restarts Tune's iteration count but continues its epochs.
TIME_ATTR = "epoch"


def make_scheduler(plan: SearchPlan) -> TrialScheduler:
    """ASHA on the search's first objective when the preset asks for it, else FIFO."""
    stopping = plan.settings.early_stopping
    if not stopping.asha:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=plan.objectives[0][0],
        mode=plan.objectives[1][0],
        max_t=plan.epochs,
        grace_period=plan.grace_period,
        reduction_factor=stopping.reduction_factor,
    )


class StoredParamsBudget(Stopper):
    """Stops a trial as soon as it stores more parameters than the budget.

    The count of changed weights mostly grows as training goes on, so a trial over the budget at
    some epoch is not worth finishing: its compute goes to the next trial instead.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        stored = result.get("stored_params")
        return stored is not None and stored > self.budget

    def stop_all(self) -> bool:
        return False
