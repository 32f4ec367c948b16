"""`vlpuda sync`: fill MLflow in from a search's run dir (after the tracking server was down)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sync",
        help="log a search's trials and front to MLflow from its run dir",
        description="Reads a search's Tune results and Optuna study and writes to MLflow what it "
        "lacks: the parent run, one child run per trial with its metric histories and best "
        "delta, and the front. Runs already logged are found by their tags and completed, never "
        "duplicated, so running it twice changes nothing. Use it when the tracking server was "
        "down during a search. Example: vlpuda sync runs/demo",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run dir a search printed")
    parser.add_argument("--tracking-uri",
                        help="where to log (default: where the search logged, else "
                        "RUN_DIR/mlflow.db); an http(s):// server or a database URL")
    parser.add_argument("--experiment", help="MLflow experiment (default: the search's name)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlpuda.search.tracked import sync_search

    sync_search(args.run_dir, args.tracking_uri, args.experiment)
    return 0
