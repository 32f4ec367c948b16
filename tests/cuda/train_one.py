"""One trainer in its own process, as a search runs each trial: `python train_one.py DATA DEVICE
OUT` trains the tiny task for one epoch and prints its metrics as one JSON line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers

import open_clip  # noqa: E402
import torch  # noqa: E402
from cuda_helpers import tiny_task_run  # noqa: E402

from helpers import MODEL_CONFIGS  # noqa: E402


def main() -> None:
    data_dir, device, out_dir = Path(sys.argv[1]), torch.device(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    for config in MODEL_CONFIGS.glob("*.json"):
        open_clip.add_model_config(config)
    run = tiny_task_run(data_dir, "tiny-rn-test", device, out_dir, precision="amp_bf16",
                        rst=True, rst_threshold=1e-6, iters_per_epoch=8)
    metrics = {**run.train_epoch(), **run.evaluate()}
    metrics["weights_sum"] = float(run.sparsity.weights.double().sum())
    run.close()
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
