"""What a file a user hands us is, when torch.load(weights_only=True) refuses it.

torch's own refusal tells the reader that weights_only=False "will likely succeed", which is
exactly the unsafe advice vlpuda never gives (a pickle can run code). These helpers look at the
file's first bytes instead and say whether it is a PyTorch file at all.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vlpuda.errors import VlpudaError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
PICKLE_PROTOCOL_2_PLUS = 0x80  # the legacy format starts with a pickle PROTO opcode


def file_kind(path: str | Path) -> str:
    """'torch-zip', 'pickle', 'empty' or 'other', from the file's first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "empty"
    if head == ZIP_MAGIC:
        return "torch-zip"
    if head[0] == PICKLE_PROTOCOL_2_PLUS:
        return "pickle"
    return "other"


def refusal(path: str | Path, err: BaseException) -> str:
    """One sentence on why `path` cannot be loaded with weights_only=True, never suggesting
    unsafe loading."""
    kind = file_kind(path)
    if kind == "empty":
        return f"{path} is empty"
    if kind == "other":
        return (f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a "
                "pickle): it is damaged, or another kind of file")
    if isinstance(err, pickle.UnpicklingError):
        return (f"{path} holds Python objects besides tensors and plain values; it is not "
                "loaded, because unpickling such objects can run code")
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{path} is a damaged PyTorch file ({cause})"


class StateFileError(VlpudaError):
    """A training state file (checkpoint/state.pt) cannot be read safely."""


def load_state_file(path: str | Path, what_to_do: str) -> Any:
    """torch.load(path, weights_only=True), or a StateFileError that names the file and says
    `what_to_do`."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise StateFileError(f"{path} does not exist; {what_to_do}") from None
    except Exception as err:  # torch raises several types for a damaged or foreign file
        raise StateFileError(f"{refusal(path, err)}; {what_to_do}") from None
