"""`vlpuda evaluate`: target accuracy of a delta artifact applied to its base model."""

from __future__ import annotations

import argparse

from vlpuda.config import TrainConfig, path_problems
from vlpuda.errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a delta on a target domain",
        description="Loads the base CLIP the delta names, writes the delta into it, loads the "
        "head and scores the target domain. Example: vlpuda evaluate --checkpoint "
        "runs/train/best_delta.safetensors",
    )
    parser.add_argument("--checkpoint", required=True, help="a delta.safetensors written by a run")
    parser.add_argument("--data-dir", help="data root, if it moved since training")
    parser.add_argument("--tgt", help="domain to score (default: the run's target)")
    parser.add_argument("--pretrained", help="base weights, if they moved since training")
    parser.add_argument("--cache-dir", help="Hugging Face / open_clip cache directory")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--allow-base-mismatch", action="store_true",
                        help="apply the delta even to base weights other than the ones it was "
                        "trained on (their fingerprints differ; the scores will be meaningless)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlpuda.trainables.rst import load_delta

    delta = load_delta(args.checkpoint)
    update = {key: getattr(args, key) for key in ("data_dir", "tgt", "pretrained", "cache_dir",
                                                   "device") if getattr(args, key) is not None}
    cfg = TrainConfig(**{**delta.config, **update})
    problems = path_problems(cfg.model_copy(update={"src": None}), need_domains=False)
    if problems:
        raise ConfigError(problems, args.checkpoint)
    from vlpuda.trainables.evaluation import evaluate_delta

    scores = evaluate_delta(cfg, delta, allow_other_base=args.allow_base_mismatch)
    accuracy = (f"task head accuracy {scores['target_acc_last']:.2f} %, "
                f"class mean {scores['target_acc_class_mean']:.2f} %, "
                f"zero-shot head {scores['target_acc_clip']:.2f} %, "
                if "target_acc_last" in scores else "unlabeled (no accuracy), ")
    print(
        f"{cfg.tgt}: {accuracy}SND {scores['proxy_snd']:.4f}, IM {scores['proxy_im']:.4f}, "
        f"agreement with zero-shot {scores['proxy_zs_agreement']:.1f} %, "
        f"stored parameters {scores['stored_params']:,}"
    )
    return 0
