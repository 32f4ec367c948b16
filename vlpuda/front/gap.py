"""What a label-free choice costs, measured wherever the target has labels: the selection gap.

A search by a validator keeps, per trial, the epoch the validator scores best, and ranks trials
by that score. Where target labels exist each trial also reports the oracle's accuracy
(`target_acc`, its best epoch by true accuracy) and the true accuracy of the kept epoch
(`target_acc_selected`). Then:

* gap = best oracle accuracy over the complete trials - true accuracy of the label-free pick
  (the trial with the best objective; ties: lowest trial number), in accuracy points;
* hypervolume ratio = true-accuracy hypervolume of the label-free front (its trials at their
  kept epochs' accuracy) over that of the oracle front (non-dominated in (target_acc,
  stored_params) over the same trials), against one reference point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial

from vlpuda.front.pareto import default_reference, hypervolume_2d, pareto_front_mask
from vlpuda.objectives import MODES


@dataclass(frozen=True)
class SelectionGap:
    oracle_best: float  # best true accuracy of any complete trial (oracle selection)
    picked: float  # true accuracy of the label-free pick
    hypervolume_ratio: float

    @property
    def gap(self) -> float:
        return self.oracle_best - self.picked

    def as_dict(self) -> dict[str, float]:
        return {"oracle_best_acc": self.oracle_best, "label_free_pick_acc": self.picked,
                "selection_gap": self.gap, "hypervolume_ratio": self.hypervolume_ratio}

    def describe(self) -> str:
        return (f"selection gap {self.gap:.2f} points: the oracle's best trial reaches "
                f"{self.oracle_best:.2f} % target accuracy, the label-free pick "
                f"{self.picked:.2f} %; true-accuracy hypervolume of the label-free front "
                f"{self.hypervolume_ratio:.3f} x the oracle front's")


def selection_gap(complete: list[FrozenTrial], front: list[FrozenTrial]) -> SelectionGap | None:
    """The gap of a label-free search's `front` among its `complete` trials; None where the
    trials carry no true accuracies (an unlabeled target)."""
    def labelled(t: FrozenTrial) -> bool:
        return all(t.user_attrs.get(k) is not None for k in ("target_acc", "target_acc_selected"))

    if not complete or not front or not all(labelled(t) for t in complete):
        return None
    pick = min(complete, key=lambda t: (-t.values[0], t.number))
    oracle = np.array([[t.user_attrs["target_acc"], t.values[1]] for t in complete], dtype=float)
    chosen = np.array([[t.user_attrs["target_acc_selected"], t.values[1]] for t in front],
                      dtype=float)
    reference = default_reference(oracle, MODES)
    oracle_hv = hypervolume_2d(oracle[pareto_front_mask(oracle, MODES)], MODES, reference)
    chosen_hv = hypervolume_2d(chosen[pareto_front_mask(chosen, MODES)], MODES, reference)
    ratio = chosen_hv / oracle_hv if oracle_hv > 0 else float("nan")
    return SelectionGap(float(oracle[:, 0].max()), float(pick.user_attrs["target_acc_selected"]),
                        float(ratio))
