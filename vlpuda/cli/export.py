"""`vlpuda export`: a trial's best delta, fetched from its MLflow run."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="download a trial's best delta from MLflow",
        description="Downloads the best-epoch delta a search logged on a trial's MLflow run "
        "(DIR/best_delta.safetensors, or DIR/<task>/best_delta.safetensors for a multi-task "
        "trial). Written into its base CLIP, it gives the accuracy the trial reported: check with "
        "vlpuda evaluate --checkpoint DIR/best_delta.safetensors. Example: vlpuda export --run "
        "3f2a... --out deltas/art_clipart --tracking-uri runs/demo",
    )
    parser.add_argument("--run", required=True, metavar="RUN_ID", dest="run_id",
                        help="a trial's MLflow run id (UI, or the front table's mlflow_run_id)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the delta")
    parser.add_argument("--tracking-uri",
                        help="the search's tracking URI, or its run dir (default: "
                        "MLFLOW_TRACKING_URI)")
    parser.add_argument("--ladder", type=int, metavar="D",
                        help="export the trial's sparsity-ladder point keeping 1/D of its changed "
                        "weights (the front's fraction column: 2, 4, 8, ...) instead of its delta")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlpuda.tracking.backfill import export_delta

    exported = export_delta(args.run_id, args.out, args.tracking_uri, args.ladder)
    reported = ""
    if exported.target_acc is not None:
        reported = f" (the trial reported target_acc {exported.target_acc:.2f}"
        if exported.stored_params is not None:
            reported += f", {int(exported.stored_params):,} stored parameters"
        reported += ")"
    from safetensors import safe_open

    from vlpuda.trainables.fingerprint import FINGERPRINT_KEY

    for path in exported.files:
        with safe_open(str(path), framework="pt") as handle:
            base = (handle.metadata() or {}).get(FINGERPRINT_KEY)
        # evaluate refuses base weights with another fingerprint; say which base this one needs
        print(f"wrote {path}" + (f" (base weights {base})" if base else ""))
    print(f"run {exported.run_id}: {len(exported.files)} delta(s){reported}; score with: "
          f"vlpuda evaluate --checkpoint {exported.files[0]}")
    return 0
