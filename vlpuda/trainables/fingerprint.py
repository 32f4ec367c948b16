"""A fingerprint of the base weights a delta was trained on.

A delta stores trained values at the entries that changed; written into any other base of the
same architecture it gives a model that silently scores like chance. The hash of w0 (the visual
tower's pre-trained weights), taken once when a run builds its model, goes into the delta's
metadata, and every path that applies a delta compares it with the base it loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

FINGERPRINT_KEY = "base_fingerprint"


@torch.no_grad()
def weights_fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over each tensor's name, shape and fp32 values in logical (row-major) order, so
    the memory layout (channels_last, one shared buffer) and the device do not change it."""
    digest = hashlib.sha256()
    for name, tensor in named:
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{list(values.shape)};".encode())
        digest.update(memoryview(values.numpy()).cast("B"))
    return f"sha256:{digest.hexdigest()[:32]}"
