"""`vlpuda validate`: check a preset (and overrides) without starting anything heavy.

With a `search:` section, the search settings, the space and its overrides, the tasks and their
data folders are checked too, exactly as `vlpuda search` checks them before Ray starts.
"""

from __future__ import annotations

import argparse

from vlpuda.cli.checks import class_problems, model_problems
from vlpuda.cli.common import add_config_arguments, add_training_arguments, collect_overrides
from vlpuda.config import build_config, path_problems, read_yaml
from vlpuda.errors import ConfigError
from vlpuda.search.plan import build_plan, describe_plan, split_overrides
from vlpuda.search.settings import SEARCH_KEY


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("validate", help="check a config, its search section and "
                                   "its data paths")
    add_config_arguments(parser)
    add_training_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raw = read_yaml(args.config) if args.config else {}
    train_overrides, search_overrides = split_overrides(collect_overrides(args))
    cfg, sections = build_config(raw, train_overrides, args.config)
    if SEARCH_KEY in sections or search_overrides:
        # The plan checks the training config of every task, data folders included.
        plan = build_plan(raw, train_overrides, search_overrides, args.config)
        problems = model_problems(plan.tasks[0])
        for task in plan.tasks:
            problems += class_problems(task)
        if problems:
            raise ConfigError(problems, args.config)
        print(f"{args.config or 'config'}: OK")
        print("\n".join(describe_plan(plan)))
        return 0
    problems = path_problems(cfg, need_domains=cfg.benchmark != "demo")
    # Names and folder listings only: nothing is decoded and no weights are read.
    problems += model_problems(cfg) + ([] if problems else class_problems(cfg))
    if problems:
        raise ConfigError(problems, args.config)
    print(f"{args.config or 'config'}: OK")
    for key, value in cfg.model_dump().items():
        print(f"  {key}: {value}")
    return 0
