"""Arguments shared by subcommands: a preset, key=value overrides, and the data/model flags."""

from __future__ import annotations

import argparse
from typing import Any

from vlpuda.config import TrainConfig, load_config, parse_overrides

# flag -> config key; flags mirror the reference implementation's main.py where one exists
FLAG_KEYS = {
    "data_dir": "data_dir",
    "src": "src",
    "tgt": "tgt",
    "model": "model",
    "pretrained": "pretrained",
    "cache_dir": "cache_dir",
    "lr": "lr",
    "lr_multiplier": "lr_multiplier",
    "lambda1": "lambda1",
    "lambda2": "lambda2",
    "lambda3": "lambda3",
    "label_smoothing": "label_smoothing",
    "rst_threshold": "rst_threshold",
    "fixmatch_threshold": "fixmatch_threshold",
    "fixmatch_factor": "fixmatch_factor",
    "epochs": "epochs",
    "iters_per_epoch": "iters_per_epoch",
    "batch_size": "batch_size",
    "seed": "seed",
    "out_dir": "out_dir",
    "device": "device",
    "precision": "precision",
    "selection": "selection",
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a preset YAML from configs/ (its first line shows a command)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="any config key, e.g. lambda1=0.1 rst_mode=ratio")
    parser.add_argument("--data-dir", help="DATA_DIR/<Domain>/<class>/<image> or the image lists' root")
    parser.add_argument("--src", help="source domain (labelled), e.g. Art")
    parser.add_argument("--tgt", help="target domain (unlabelled), e.g. Clipart")
    parser.add_argument("--unlabeled-target", action="store_true",
                        help="the target is a folder of images (any depth) or a path-only image "
                        "list, without labels: classes come from the source, label metrics are "
                        "absent, epochs and trials are chosen by a label-free validator")
    parser.add_argument("--model", help="open_clip model name (RN50, ViT-B-16), local-dir:DIR or hf-hub:ORG/REPO")
    parser.add_argument("--pretrained", help="open_clip tag (openai), or a weights file")
    parser.add_argument("--cache-dir", help="Hugging Face / open_clip cache directory")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--lr", type=float, help="encoder learning rate (paper: 3e-7 ResNet, 3e-6 ViT)")
    add("--lr-multiplier", type=float, help="head lr = lr x this (paper: 1e4 ResNet, 1e3 ViT)")
    add("--lambda1", type=float)
    add("--lambda2", type=float)
    add("--lambda3", type=float)
    add("--label-smoothing", type=float)
    add("--baseline", action="store_true", help="source-only fine-tuning (no transfer terms)")
    add("--rst", action="store_true", help="residual sparse training, threshold mode")
    add("--rst-threshold", type=float, help="tau of threshold mode (paper: 1e-6)")
    add("--rst-ratio", type=float, help="ratio mode: keep at most this fraction of visual weights changed")
    add("--fixmatch", action="store_true", help="add FixMatch on both heads")
    add("--fixmatch-threshold", type=float)
    add("--fixmatch-factor", type=float)
    add("--pda", action="store_true",
        help="partial-set: the target holds a subset of the source's classes")
    add("--epochs", type=int)
    add("--iters-per-epoch", type=int)
    add("--batch-size", type=int)
    add("--seed", type=int)
    add("--out-dir", help="where the checkpoint, best delta and metrics.jsonl go")
    add("--device", choices=["auto", "cpu", "cuda"])
    add("--precision", choices=["fp32", "amp_bf16", "amp_fp16"])
    add("--selection", help="the metric that picks the epoch whose delta a run keeps: target_acc "
        "(oracle, needs target labels), target_acc_holdout or a validator such as proxy_snd")


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags given on the command line, then key=value overrides (which win)."""
    overrides: dict[str, Any] = {}
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "baseline", False):
        overrides["baseline"] = True
    if getattr(args, "rst", False):
        overrides["rst"] = True
    if getattr(args, "rst_ratio", None) is not None:
        overrides.update(rst=True, rst_mode="ratio", rst_ratio=args.rst_ratio)
    if getattr(args, "fixmatch", False):
        overrides["fixmatch"] = True
    if getattr(args, "pda", False):
        overrides["pda"] = True
    if getattr(args, "unlabeled_target", False):
        overrides["unlabeled_target"] = True
    overrides.update(parse_overrides(args.overrides))
    return overrides


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    return load_config(args.config, collect_overrides(args))
