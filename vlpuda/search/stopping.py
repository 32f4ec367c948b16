"""Early stopping: MOASHA or ASHA (vlpuda.search.moasha), and a storage budget.

Both only end trials; ParetoOptunaSearch then tells Optuna such trials as PRUNED, so neither can
put a partial result on the front.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.stopper import Stopper

from vlpuda.search.moasha import LoggedASHA, MOASHAScheduler
from vlpuda.search.plan import SearchPlan


def make_scheduler(plan: SearchPlan) -> TrialScheduler:
    """The preset's early stopping: MOASHA over the search's objectives (SearchPlan.objectives: the
    one place they are defined), ASHA on the first objective alone, or first-in-first-out."""
    stopping = plan.settings.early_stopping
    method = stopping.effective_method
    rungs = {"max_t": plan.epochs, "grace_period": plan.grace_period,
             "reduction_factor": stopping.reduction_factor}
    if method == "moasha":
        return MOASHAScheduler(*plan.objectives, **rungs)
    if method == "asha":
        return LoggedASHA(plan.objectives[0][0], plan.objectives[1][0], **rungs)
    return FIFOScheduler()


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
