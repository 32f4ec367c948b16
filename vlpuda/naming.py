"""One trial number everywhere, and run names that say what a run is.

The number of a trial is its Optuna trial number (`study.trials[n].number`): it is unique across
every run of a study (a resumed or extended search keeps counting), it is what `vlpuda pareto`,
front.csv/json, the figures and optuna-dashboard show, and it is known as soon as the searcher
asks Optuna for the trial. Tune's own 1-based trial index restarts with every Tune experiment,
so it is never shown; the manifest maps Tune trial ids to numbers (`trial_numbers`).

A child run is named `t03` while it runs and `t03 · 95.1 % · 499k` once finished
(`t03 · pruned (early_stopping)` or `t03 · failed` otherwise), so the runs table and its charts
say which trial is which without opening a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vlpuda.objectives import TUNE_TRIAL_ID


def trial_label(number: int | None, trial_id: str = "") -> str:
    """`t03` for Optuna trial 3; Tune's id when the study has no word on the trial."""
    return f"t{number:02d}" if number is not None else f"trial {trial_id}"


def compact_count(value: float) -> str:
    """A parameter count in three significant figures: 812, 35.2k, 499k, 1.20M."""
    value = float(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            scaled = value / scale
            digits = 0 if scaled >= 100 else 1 if scaled >= 10 else 2
            return f"{scaled:.{digits}f}{suffix}"
    return f"{value:.0f}"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(float(value)) else float(value)


def finished_run_name(label: str, state: str, reason: str, last: Mapping[str, Any],
                      objectives: tuple[str, str]) -> str:
    """A finished trial's run name: its label, then its objectives (COMPLETE) or its fate.

    Args:
        label: trial_label of the trial.
        state: COMPLETE, PRUNED or FAIL, as the study counts it.
        reason: why a PRUNED or FAIL trial ended (its `stopped_by`).
        last: the trial's last result.
        objectives: the first (an accuracy in %, or a proxy score) and second (a count)
            objective's result keys.
    """
    if state == "FAIL":
        return f"{label} · failed"
    if state == "PRUNED":
        return f"{label} · pruned ({reason})" if reason else f"{label} · pruned"
    score, count = (_finite(last.get(name)) for name in objectives)
    parts = [label]
    if score is not None:
        parts.append(f"{score:.1f} %" if objectives[0].startswith("target_acc")
                     else f"{score:.3g}")
    if count is not None:
        parts.append(compact_count(count))
    return " · ".join(parts)


class TrialNumbers:
    """Tune trial id -> Optuna trial number, read from the study's storage and cached.

    The searcher records the Tune trial id on the study trial when it asks for it (before Tune
    starts the trial), so a trial's number is known when its run is created.

    Args:
        storage: the study's database URL; "" turns the lookup off (names fall back to Tune's id).
        study: the study's name.
    """

    def __init__(self, storage: str, study: str) -> None:
        self.storage, self.study = storage, study
        self._numbers: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "study": self.study}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["storage"], state["study"])

    def _read(self) -> None:
        import optuna

        study = optuna.load_study(study_name=self.study, storage=self.storage)
        for trial in study.get_trials(deepcopy=False):
            tune_id = trial.user_attrs.get(TUNE_TRIAL_ID)
            if tune_id is not None:
                # In number order: a rerun (a later trial for the same Tune trial) wins.
                self._numbers[str(tune_id)] = trial.number

    def number(self, trial_id: str) -> int | None:
        """The trial's number, or None when the study does not hold it (or cannot be read)."""
        if trial_id not in self._numbers and self.storage:
            try:
                self._read()
            except Exception:  # a name is not worth a failed log call: fall back to the id
                return None
        return self._numbers.get(trial_id)
