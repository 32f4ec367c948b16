"""What a run selects its epoch by and what a search optimises: names and checks, one home.

A run keeps the epoch its `selection` metric scores best (its best delta); a search's first
objective is `search.objective` and sets each trial's selection to it. The value a trial reports
for its objective is the kept epoch's, under `selected_key(name)`: `target_acc` itself for the
oracle (it is already the best so far), `<name>_best` otherwise (`proxy_snd_best`).
"""

from __future__ import annotations

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
# where SND, entropy and MixVal score it best (docs/validators.md).
DEFAULT_LABEL_FREE = "proxy_bnm"
STORED = "stored_params"


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
