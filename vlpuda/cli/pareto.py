"""`vlpuda pareto`: print a search's Pareto front (and hypervolume) again, from its study."""

from __future__ import annotations

import argparse

from vlpuda.front.table import format_front, trial_table
from vlpuda.front.trials import front_of
from vlpuda.layout import read_manifest
from vlpuda.search.study import load_study


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pareto",
        help="print the accuracy/storage front of a search",
        description="Loads the Optuna study of a search's run dir (wherever its storage is) and "
        "prints the non-dominated full-length trials with their parameters and the front's "
        "hypervolume. Example: vlpuda pareto runs/demo",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run dir a search printed")
    parser.add_argument("--all", action="store_true",
                        help="also list every trial with its state and why it was stopped")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.run_dir)
    study = load_study(manifest)
    front = front_of(study.get_trials(deepcopy=False))
    print(format_front(front, title=f"Pareto front of {manifest['name']}"))
    if args.all:
        print("\nall trials:")
        print(trial_table(study))
    return 0
