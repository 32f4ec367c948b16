"""`vlpuda search`: a hyperparameter and sparsity search on Ray (Tune + Optuna, two objectives)."""

from __future__ import annotations

import argparse

from vlpuda.cli.common import add_config_arguments, collect_overrides
from vlpuda.config import read_yaml
from vlpuda.errors import ConfigError
from vlpuda.search.plan import build_plan, describe_plan, split_overrides
from vlpuda.search.settings import SAMPLERS
from vlpuda.tracking.where import with_cli_choices


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search hyperparameters and sparsity for the accuracy/storage front",
        description="Runs the preset's `search:` section on Ray: each trial trains the method "
        "(on N DDP workers), Optuna proposes the next trials from target accuracy and stored "
        "parameters, and the Pareto front is printed at the end. Local Ray starts by itself; "
        "set RAY_ADDRESS to use a cluster. KEY=VALUE overrides a training key, "
        "search.KEY=VALUE a search setting (search.early_stopping.asha=true). Examples: vlpuda search --config configs/demo.yaml; "
        "vlpuda search --config configs/office_home.yaml --data-dir data/office_home "
        "--src Art --tgt Clipart search.num_samples=64; vlpuda search --resume runs/demo",
    )
    add_config_arguments(parser)
    parser.add_argument("--name", help="the search's name: its study and run dir runs/NAME "
                        "(default: the preset's file name); reusing a name extends its study")
    parser.add_argument("--num-samples", type=int, help="trials to run (search.num_samples)")
    parser.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (default tpe)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a crashed or interrupted search from its run dir")
    parser.add_argument("--tracking-uri", help="MLflow tracking server (http://host:5000) or "
                        "database URL (tracking.uri; default: RUN_DIR/mlflow.db)")
    parser.add_argument("--no-tracking", action="store_true",
                        help="log nothing to MLflow (tracking.enabled: false)")
    parser.set_defaults(run=run)


def _search_flags(args: argparse.Namespace) -> dict:
    flags = {"name": args.name, "num_samples": args.num_samples, "sampler": args.sampler}
    return {key: value for key, value in flags.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    overrides = collect_overrides(args)
    if args.resume:
        given = (args.config or overrides or _search_flags(args) or args.tracking_uri
                 or args.no_tracking)
        if given:
            raise ConfigError(["--resume: the run dir's search.json holds the settings; "
                               "drop --config, flags and key=value overrides"])
        from vlpuda.search.driver import resume_search

        resume_search(args.resume)
        return 0
    if not args.config:
        raise ConfigError(["--config: a search needs a preset with a search: section "
                           "(e.g. configs/demo.yaml), or --resume RUN_DIR"])
    train_overrides, search_overrides = split_overrides(overrides)
    search_overrides.update(_search_flags(args))
    # The tracking choice goes into the preset, so the manifest keeps it for --resume and sync.
    raw = with_cli_choices(read_yaml(args.config), args.tracking_uri,
                           False if args.no_tracking else None)
    # A bad tracking section fails here too, before Ray: the plan resolves where to log.
    plan = build_plan(raw, train_overrides, search_overrides, args.config)
    print("\n".join(describe_plan(plan)), flush=True)
    # Ray and torch are imported only once the config is known to be good.
    from vlpuda.search.driver import run_search

    run_search(plan)
    return 0
