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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
