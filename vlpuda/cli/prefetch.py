"""`vlpuda prefetch`: fill the Hugging Face cache so nodes without internet can load weights.

Run it where the internet is reachable (a laptop, the head node), then share the cache
(HF_HOME or --cache-dir) with the nodes, which load with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prefetch",
        help="download a model's weights into the Hugging Face cache",
        description="Example: vlpuda prefetch --model ViT-B-16 --pretrained openai "
        "--cache-dir /shared/hf-cache",
    )
    parser.add_argument("--model", required=True, help="open_clip name or hf-hub:ORG/REPO")
    parser.add_argument("--pretrained", help="tag, e.g. openai")
    parser.add_argument("--cache-dir", help="cache to fill (default: the Hugging Face cache)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlpuda.trainables.models import load_clip

    # Loading is the download: open_clip fetches exactly the files a later offline load reads.
    loaded = load_clip(args.model, args.pretrained, args.cache_dir)
    loaded.tokenizer(["warm-up"])  # hub tokenizers are fetched on first use too
    where = args.cache_dir or os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or (
        "~/.cache/huggingface")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "")
    print(f"{args.model} ({args.pretrained or 'bundled weights'}) is in {where}"
          + (" (verified offline)" if offline else "")
          + "; on the nodes set HF_HUB_OFFLINE=1 and point HF_HOME / --cache-dir at this cache")
    return 0
