"""Sparsity-ladder points on the front: derived points of their parent trial, hand-built study."""

from __future__ import annotations

import csv

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from vlpuda.front.pareto import hypervolume_2d
from vlpuda.front.table import format_front, write_front
from vlpuda.front.trials import front_of


def _trial(values, ladder=None, state=TrialState.COMPLETE):
    return create_trial(state=state, values=values if state == TrialState.COMPLETE else None,
                        params={"lr": 1e-3}, distributions={"lr": FloatDistribution(1e-4, 1e-2)},
                        user_attrs={"ladder": ladder} if ladder else {})


def test_non_dominated_ladder_points_join_the_front_marked_with_parent_and_fraction(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    # Trial 0: dense and accurate; its 1/2 cut (89, 500) is new front, its 1/4 cut (70, 300) is
    # dominated by trial 1 (80, 200). Trial 2 is pruned: neither it nor a ladder can count.
    study.add_trial(_trial([90.0, 1000.0], [
        {"fraction": 0.5, "target_acc": 89.0, "stored_params": 500, "target_acc_last": 89.0},
        {"fraction": 0.25, "target_acc": 70.0, "stored_params": 300}]))
    study.add_trial(_trial([80.0, 200.0]))
    study.add_trial(_trial(None, state=TrialState.PRUNED))
    front = front_of(study.get_trials())

    assert front.numbers == [0, 1]  # the trials' own front is Optuna's best_trials
    assert [(t.number, p["fraction"]) for t, p in front.derived] == [(0, 0.5)]
    # Hypervolume of trials and the ladder point together, reference (0, 1.1 x 1000).
    expected = hypervolume_2d([[90.0, 1000.0], [89.0, 500.0], [80.0, 200.0]],
                              ["max", "min"], (0.0, 1100.0))
    assert front.hypervolume == expected

    write_front(front, tmp_path)
    with open(tmp_path / "front.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["trial"], r["parent_trial"], r["fraction"]) for r in rows] == [
        ("0", "", ""), ("1", "", ""), ("", "0", "0.5")]
    text = format_front(front)
    assert "then 1 sparsity-ladder point(s)" in text and "parent_trial" in text


def test_without_ladder_points_the_columns_stay_as_they_were(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(_trial([90.0, 1000.0]))
    front = front_of(study.get_trials())
    assert front.derived == []
    write_front(front, tmp_path)
    header = (tmp_path / "front.csv").read_text().splitlines()[0]
    assert "parent_trial" not in header and "fraction" not in header
