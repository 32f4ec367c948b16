"""The `vlpuda` command line. `main(argv)` takes argv so tests run the real CLI in-process."""

from __future__ import annotations

import argparse
import os
import sys

from vlpuda.errors import VlpudaError

# Each subcommand lives in its own small module with add_parser(subparsers) and run(args).
SUBCOMMANDS = ("train", "evaluate", "validate", "search", "pareto", "prefetch", "sync", "export")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="vlpuda",
        description="Hyperparameter and sparsity search for CLIP unsupervised domain adaptation "
        "(CMKD + residual sparse training) on Ray.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"vlpuda.cli.{name}").add_parser(subparsers)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, accepting key=value overrides anywhere among the flags.

    argparse gives a `nargs="*"` positional only the first run of positionals; later ones come
    back unrecognised (and parse_intermixed_args does not work with subcommands). They join the
    overrides here, in their order; anything else unrecognised is the usual usage error."""
    args, extras = parser.parse_known_args(argv)
    misplaced = [item for item in extras if "=" in item and not item.startswith("-")]
    unknown = [item for item in extras if item not in misplaced]
    if unknown or (misplaced and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or misplaced)}")
    if misplaced:
        args.overrides = [*(args.overrides or []), *misplaced]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if args.command != "prefetch":
        # Weights come from the cache (filled by `vlpuda prefetch`): without this,
        # huggingface_hub retries a missing file for ~47 s before failing. Set HF_HUB_OFFLINE=0
        # to let any command download.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return int(args.run(args) or 0)
    except VlpudaError as err:
        print(f"vlpuda {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
