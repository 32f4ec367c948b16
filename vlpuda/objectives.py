"""What a run selects its epoch by and what a search optimises: names and checks, one home.

A run keeps the epoch its `selection` metric scores best (its best delta); a search's first
objective is `search.objective` and sets each trial's selection to it. The value a trial reports
for its objective is the kept epoch's, under `selected_key(name)`: `target_acc` itself for the
oracle (it is already the best so far), `<name>_best` otherwise (`proxy_snd_best`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.trial import TrialState

# Label-free validators, each stored higher-is-better (docs/validators.md).
VALIDATORS = ("proxy_entropy", "proxy_im", "proxy_bnm", "proxy_snd", "proxy_mixval",
              "proxy_zs_agreement", "proxy_source_acc")
ORACLE = "target_acc"
# The mean of per-class accuracies, VisDA-2017's metric: an oracle too (it needs target labels).
CLASS_MEAN = "target_acc_class_mean"
HOLDOUT = "target_acc_holdout"
SELECTIONS = (ORACLE, CLASS_MEAN, HOLDOUT, *VALIDATORS)
# Metrics that need the target's labels: absent (never 0 or NaN) for an unlabeled target.
LABEL_METRICS = ("target_acc", "target_acc_last", "target_acc_clip", "target_acc_selected",
                 "target_acc_class_mean")
# The label-free objective an unlabeled target is searched by when the preset names none: the
# best of benchmarks/validators.py on the offline digit tasks (mean selection gap 0.92 points,
# front hypervolume ratio 1.000; figures in benchmarks/README.md). BNM also scores collapse low,
# where SND, entropy and MixVal score it best (docs/validators.md#4-bnm-batch-nuclear-norm).
DEFAULT_LABEL_FREE = "proxy_bnm"
STORED = "stored_params"
# The two objectives of a labelled search (the first is `selected_key(objective)` in general):
# names are the metrics contract, modes are Ray's spelling.
METRICS = (ORACLE, STORED)
MODES = ("max", "min")
DIRECTIONS = ["maximize" if m == "max" else "minimize" for m in MODES]  # Optuna's spelling

# ---- result keys: what the training loop reports each epoch (the metrics contract) ----------
# The per-epoch metrics worth a chart; trainables/loop.py's docstring documents each of them.
RESULT_METRICS = frozenset({
    "target_acc", "target_acc_last", "target_acc_class_mean", "target_acc_clip", "stored_params",
    "delta_bytes", "changed_params", "changed_fraction", "best_epoch", "epoch", "loss", "lr",
    "seconds_per_iteration", "peak_gpu_memory_gib", "target_acc_selected", "target_acc_holdout",
    "target_acc_holdout_best", "target_acc_class_mean_best", "eval_seconds", "mixval_cost_ratio",
    "pda_label_set",
})
PROXY_PREFIX = "proxy_"
# The step of each metric; Tune's own counter is the fallback for results without it.
STEP_KEYS = ("iteration", "training_iteration")


def task_metric(task: str, name: str) -> str:
    """The result key of one task's metric in a multi-task trial: `Art_to_Clipart/target_acc`."""
    return f"{task}/{name}"


# ---- what a study trial carries (Optuna user attributes) and how a Tune trial counts ---------
# Why a trial was pruned or failed.
STOP_REASON = "stopped_by"
# For a trial the scheduler stopped: which rung and its rank there ("moasha rung 5: 4th of 7").
STOP_DETAIL = "stopped_at"
# A complete trial's sparsity ladder: [{fraction, target_acc, stored_params, ...}], densest first.
LADDER = "ladder"
TUNE_TRIAL_ID = "tune_trial_id"
# The Tune experiment that asked for a trial: cleanup after a crash touches only its own trials,
# never those of another search sharing the study.
EXPERIMENT = "tune_experiment"
# Result keys kept on each Optuna trial, so the front table can say where a trial's delta is.
KEPT_METRICS = ("target_acc_last", "target_acc_class_mean", "epoch", "delta_bytes",
                "checkpoint_path", "best_epoch", "target_acc", "target_acc_selected",
                "target_acc_holdout")
# The result key of the trial's first objective (objective_metrics), kept on every trial so a
# front read back from the study knows what its first value is.
OBJECTIVE = "objective"


def selected_key(name: str) -> str:
    """The result key holding the kept epoch's value of selection metric `name`."""
    return ORACLE if name == ORACLE else f"{name}_best"


def objective_metrics(objective: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The result keys a search optimises and their modes: (first objective, stored_params).
    Everything that ranks trials (Optuna, the front, ASHA, MLflow) takes them from here."""
    return (selected_key(objective), STORED), ("max", "min")


def selection_problems(key: str, name: str, *, unlabeled: bool, holdout: bool,
                       source_holdout: float) -> list[str]:
    """Why `name` cannot select epochs (or be a search's objective) here, naming `key`."""
    if name not in SELECTIONS:
        return [f"{key}: {name!r} is not a selection metric; choose one of {list(SELECTIONS)}"]
    if name in (ORACLE, CLASS_MEAN) and unlabeled:
        return [f"{key}: {name} needs target labels, but the target is unlabeled "
                f"(unlabeled_target: true); use a label-free validator such as "
                f"{DEFAULT_LABEL_FREE}, or target_acc_holdout with target_holdout_list"]
    if name == HOLDOUT and not holdout:
        return [f"{key}: target_acc_holdout needs target_holdout_list: FILE (a labelled "
                "image list of target images kept for measurement)"]
    if name == "proxy_source_acc" and source_holdout <= 0:
        return [f"{key}: proxy_source_acc needs a held-out source slice: set source_holdout "
                "(e.g. 0.1)"]
    return []


def trial_outcome(result: dict | None, error: bool, full_epochs: int,
                  budget: int | None = None, metrics: tuple[str, ...] = METRICS
                  ) -> tuple[TrialState, str]:
    """How a finished Tune trial counts in the study, and why.

    COMPLETE only for a trial that ran every epoch within the budget; a trial stopped early (by
    ASHA) or over the storage budget is PRUNED; an error or a missing metric is a FAIL.
    """
    from optuna.trial import TrialState

    if error:
        return TrialState.FAIL, "error"
    if not result or any(result.get(m) is None for m in metrics):
        return TrialState.FAIL, "no metrics"
    if budget is not None and result["stored_params"] > budget:
        return TrialState.PRUNED, "stored_params_budget"
    if result.get("epoch", 0) < full_epochs:
        return TrialState.PRUNED, "early_stopping"
    return TrialState.COMPLETE, "complete"
