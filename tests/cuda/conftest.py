"""The GPU checks (`-m cuda`): every CUDA-only path of the trainer against its CPU twin or a hand
value. `scripts/gpu_check.sh` runs them on a GPU machine.

They run on the device VLPUDA_CHECK_DEVICE names, `cuda` unless set. Without a GPU they skip, so
the ordinary suite on a CPU machine passes by them; VLPUDA_CHECK_DEVICE=cpu (the GPU check's dry
run, `make gpu-check DEVICE=cpu`) runs the same code on the CPU instead, where a check still
means something there (the twins then coincide, so the comparisons hold trivially or exactly).
"""

from __future__ import annotations

import os

import pytest
import torch

CHECK_DEVICE = os.environ.get("VLPUDA_CHECK_DEVICE", "cuda")


@pytest.fixture(scope="session")
def device() -> torch.device:
    if CHECK_DEVICE not in ("cuda", "cpu"):
        raise pytest.UsageError(f"VLPUDA_CHECK_DEVICE={CHECK_DEVICE!r}: use cuda or cpu")
    if CHECK_DEVICE == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU check (scripts/gpu_check.sh) runs these on a GPU; "
                    "VLPUDA_CHECK_DEVICE=cpu runs them on this CPU")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture
def no_tf32():
    """Plain fp32 convolutions and matmuls for comparisons tighter than TF32's 1e-3 (cuDNN uses
    TF32 for fp32 convolutions by default; the trainer leaves that default alone)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

