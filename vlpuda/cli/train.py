"""`vlpuda train`: one CMKD (+RST, +FixMatch) run in this process."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlpuda.cli.common import add_config_arguments, add_training_arguments, config_from_args
from vlpuda.cli.outdir import prepare_out_dir
from vlpuda.config import path_problems
from vlpuda.errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one run",
        description="Example: vlpuda train --config configs/office_home.yaml "
        "--data-dir data/office_home --src Art --tgt Clipart --model RN50 --lr 3e-7 "
        "--lr-multiplier 10000 --rst",
    )
    add_config_arguments(parser)
    add_training_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT_DIR/checkpoint if it exists")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run OUT_DIR already holds (its checkpoint, best delta "
                        "and metrics.jsonl)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg, _ = config_from_args(args)
    problems = path_problems(cfg)
    if problems:
        raise ConfigError(problems, args.config)
    if args.resume and args.overwrite:
        raise ConfigError(["--resume and --overwrite: choose one (continue the run in out_dir, "
                           "or replace it)"], args.config)
    # Before any data or model is loaded: a bad out_dir costs seconds, and a finished run is
    # never replaced unless asked.
    prepare_out_dir(cfg.out_dir, args.resume, args.overwrite)
    # Heavy imports only once the config is known to be good.
    from vlpuda.trainables.loop import train
    from vlpuda.trainables.reporting import LocalReporter

    reporter = LocalReporter(cfg.out_dir)
    resume_from = None
    if args.resume and (reporter.checkpoint_dir / "state.pt").exists():
        resume_from = reporter.checkpoint_dir
        print(f"resuming from {resume_from}")
    final = train(cfg, reporter=reporter, resume_from=resume_from)
    out = Path(cfg.out_dir)
    selection = cfg.selection_effective
    kept = (f"kept epoch {final['best_epoch']} by {selection}"
            + ("" if selection == "target_acc" else f" ({final[selection + '_best']:.4g})"))
    accuracy = (f"target accuracy {final['target_acc_last']:.2f} (last epoch), "
                f"{final['target_acc']:.2f} (oracle best), "
                f"{final['target_acc_selected']:.2f} (kept epoch); "
                if "target_acc_last" in final else "target unlabeled; ")
    print(
        f"done: {accuracy}{kept}; stored parameters {final['stored_params']:,}\n"
        f"delta: {out / 'best_delta.safetensors'}  "
        f"(vlpuda evaluate --checkpoint {out / 'best_delta.safetensors'})"
    )
    return 0
