"""`vlpuda validate`: check a preset (and overrides) without starting anything heavy."""

from __future__ import annotations

import argparse

from vlpuda.cli.common import add_config_arguments, add_training_arguments, config_from_args
from vlpuda.config import path_problems
from vlpuda.errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("validate", help="check a config and its data paths")
    add_config_arguments(parser)
    add_training_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg, sections = config_from_args(args)
    problems = path_problems(cfg, need_domains=cfg.benchmark != "demo")
    if problems:
        raise ConfigError(problems, args.config)
    print(f"{args.config or 'config'}: OK")
    for key, value in cfg.model_dump().items():
        print(f"  {key}: {value}")
    return 0
