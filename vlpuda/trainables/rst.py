"""Residual sparse training and the sparse delta artifact.

See docs/method.md#residual-sparse-training-rst.

After every optimizer step the visual weights are pulled back to their pre-trained values w0
wherever they have not moved far enough, so a task is stored as one shared CLIP plus a small
sparse delta. Two ways to decide "far enough":

- threshold (the paper): keep an entry iff |w - w0| > tau. Sparsity emerges from tau.
- ratio (for searching the sparsity directly): keep at most a fraction rho of all visual entries,
  the ones with the largest |w - w0|.

The artifact is a safetensors file: per changed visual tensor, flat int32 indices and the fp32
trained values at those indices (or the dense tensor when that is smaller), plus the dense task head
and metadata. Storing trained values rather than differences makes restoring bit-exact: in floating
point w0 + (w - w0) is not always w.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vlpuda.errors import VlpudaError
from vlpuda.trainables.fingerprint import FINGERPRINT_KEY, weights_fingerprint

RstMode = Literal["off", "threshold", "ratio"]
DELTA_FORMAT = "vlpuda-delta/1"


# Entries per reset operation: the reset's temporaries (a float difference and a bool mask) stay
# at this size however large the tower, instead of one of each per whole tower.
RESET_CHUNK = 1 << 24


@torch.no_grad()
def reset_below_threshold_(
    params: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], tau: float
) -> None:
    """Set every entry with |w - w0| <= tau back to exactly w0, in place.

    A blend w = lerp(w0, w, keep) with keep 1.0 or 0.0: torch.lerp returns its end points
    exactly at those weights, and unlike torch.where it is vectorised on CPUs (several times
    faster). A NaN entry stays NaN, so a diverged trial shows it rather than being reset.
    """
    for weight, w0 in zip(params, reference):
        keep = torch.sub(weight, w0).abs_()
        torch.gt(keep, tau, out=keep)  # 1.0 where the entry moved more than tau, else 0.0
        torch.lerp(w0, weight, keep, out=weight)


@torch.no_grad()
def kth_largest(values: torch.Tensor, k: int, by_topk: bool | None = None) -> torch.Tensor:
    """The k-th largest entry of a flat tensor, found by selection rather than a full sort.

    On CUDA by topk, which spreads one large slice over many thread blocks; kthvalue gives a
    slice one block, and over a whole tower (one slice of ~10^8 entries) is slower there than
    sorting it (pytorch/pytorch#75599). On a CPU kthvalue's quickselect is the cheaper one.
    `by_topk` overrides the choice (tests run both ways on a CPU).
    """
    if by_topk if by_topk is not None else values.is_cuda:
        return torch.topk(values, k, sorted=False).values.min()
    return torch.kthvalue(values, values.numel() - k + 1).values


@torch.no_grad()
def ratio_cutoff(weights: torch.Tensor, weights0: torch.Tensor, ratio: float) -> float:
    """The |w - w0| above which at most floor(ratio * N) of the N entries of the flat `weights`
    lie.

    It is the (k+1)-th largest magnitude: keeping entries strictly above it keeps at most k of
    them, ties included, and never an unchanged one. Selection is exact, so the kept set is the
    one a full sort would give: no approximation, no effect on accuracy.
    """
    magnitudes = (weights - weights0).abs_()
    total = magnitudes.numel()
    keep = int(ratio * total)
    if keep >= total:
        return 0.0
    return max(float(kth_largest(magnitudes, keep + 1)), 0.0)


@torch.no_grad()
def count_changed(params: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> int:
    """nnz(w - w0) over the given tensors."""
    return int(sum(int(torch.count_nonzero(w != w0)) for w, w0 in zip(params, reference)))


def _keeps_layout(param: torch.Tensor) -> bool:
    """Whether the parameter is dense in one of the layouts a flat buffer can hold as is."""
    return param.is_contiguous() or (
        param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last))


@torch.no_grad()
def share_one_buffer_(params: list[nn.Parameter]) -> torch.Tensor:
    """Move the parameters' values into one flat buffer, each parameter becoming a view of its
    own segment (channels_last stays channels_last), and return the buffer.

    Optimizers, DDP and state dicts still see the same Parameter objects with the same values;
    only where the values live changes, so whole-tower operations become a few operations on
    the buffer instead of several per tensor (hundreds of kernel launches on a ViT-B).
    """
    dtypes, devices = {p.dtype for p in params}, {p.device for p in params}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ValueError(f"RST needs the visual weights in one dtype on one device, got "
                         f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}")
    buffer = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype,
                         device=params[0].device)
    offset = 0
    for param in params:
        if _keeps_layout(param):
            view = buffer.as_strided(param.shape, param.stride(), offset)
        else:
            view = buffer[offset : offset + param.numel()].view(param.shape)
        view.copy_(param)
        param.data = view
        offset += param.numel()
    return buffer


class ResidualSparsity:
    """Keeps w0 of the visual tower (only that tower: the text tower is never trained) and applies
    the reset after each optimizer step.

    The visual weights are moved into one flat buffer (`share_one_buffer_`), and w0 is a copy of
    it: the reset runs over chunks of the two buffers. Build it after anything that re-creates
    the weights (`.to(device)`, `.to(memory_format=...)`), which would undo the sharing.

    The SGD momentum buffers are left alone, as in the reference code: an entry sitting at w0 only
    escapes when a single step moves it past the threshold, so tau acts on the per-step update size
    and its best value tracks the learning rate
    (docs/method.md#reset-after-every-step).
    """

    def __init__(
        self, visual: nn.Module, mode: RstMode = "off", threshold: float = 1e-6, ratio: float = 0.0
    ) -> None:
        self.mode = mode
        self.threshold = threshold
        self.ratio = ratio
        named = [(name, p) for name, p in visual.named_parameters()]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.weights = share_one_buffer_(self.params)
        self.weights0 = self.weights.clone()
        # Per tensor, w0 is the same segment of the copy, in the same layout.
        self.reference = [self.weights0.as_strided(p.shape, p.stride(), p.storage_offset())
                          for p in self.params]
        self._chunks = self.weights.split(RESET_CHUNK)
        self._chunks0 = self.weights0.split(RESET_CHUNK)

    @property
    def total(self) -> int:
        return self.weights.numel()

    def reset_(self) -> None:
        """Apply the mode's rule to every visual entry (no-op when RST is off)."""
        if self.mode == "threshold":
            reset_below_threshold_(self._chunks, self._chunks0, self.threshold)
        elif self.mode == "ratio":
            cutoff = ratio_cutoff(self.weights, self.weights0, self.ratio)
            reset_below_threshold_(self._chunks, self._chunks0, cutoff)

    def changed(self) -> int:
        return count_changed(self._chunks, self._chunks0)

    def named_pairs(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        return list(zip(self.names, self.params, self.reference))


def stored_params(changed_visual: int, head: nn.Module) -> int:
    """Stored (downstream) parameters as the paper counts them: nnz(w - w0) + all head parameters."""
    return changed_visual + sum(p.numel() for p in head.parameters())


# ----------------------------------------------------------------------------------------------
# The delta artifact


class DeltaError(VlpudaError):
    """A delta file is unreadable or does not fit the model it is applied to."""


@dataclass
class DeltaArtifact:
    """A loaded delta: per visual tensor (flat indices or None for dense, values), head, metadata."""

    visual: dict[str, tuple[torch.Tensor | None, torch.Tensor]]
    head_state: dict[str, torch.Tensor]
    metadata: dict[str, str]
    source: str = "the delta"  # the file it was read from, for messages

    @property
    def config(self) -> dict:
        return json.loads(self.metadata.get("config", "{}"))

    @property
    def classes(self) -> list[str]:
        return json.loads(self.metadata["classes"])


@torch.no_grad()
def save_delta(
    path: str | Path,
    pairs: list[tuple[str, torch.Tensor, torch.Tensor]],
    head_state: dict[str, torch.Tensor],
    metadata: dict[str, str],
) -> int:
    """Write the delta for (name, w, w0) pairs plus the head; returns the file's size in bytes.

    Per tensor the cheaper of two encodings: int32 index + fp32 value (8 bytes per changed entry)
    or the dense fp32 tensor (4 bytes per entry, chosen once more than half the entries changed).
    Unchanged tensors are not written at all. The write is atomic (temp file, then rename).
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, weight, w0 in pairs:
        flat = weight.detach().reshape(-1).float().cpu()
        changed = torch.nonzero(flat != w0.detach().reshape(-1).float().cpu()).squeeze(1)
        if changed.numel() == 0:
            continue
        if changed.numel() * 8 >= flat.numel() * 4:
            tensors[f"visual.{name}.dense"] = flat.clone()
        else:
            if flat.numel() >= 2**31:
                raise DeltaError(f"parameter {name} has {flat.numel()} entries: int32 indices overflow")
            tensors[f"visual.{name}.index"] = changed.to(torch.int32)
            tensors[f"visual.{name}.value"] = flat[changed].clone()
    for key, value in head_state.items():
        tensors[f"head.{key}"] = value.detach().cpu().contiguous()
    shapes = {name: list(weight.shape) for name, weight, _ in pairs}
    meta = {**metadata, "format": DELTA_FORMAT, "visual_shapes": json.dumps(shapes)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path.stat().st_size


def load_delta(path: str | Path) -> DeltaArtifact:
    """Read a delta written by save_delta (safetensors: no code runs while loading)."""
    path = Path(path)
    if not path.is_file():
        raise DeltaError(f"delta file {path} does not exist: pass the delta.safetensors a run wrote")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise DeltaError(f"{path} is not a readable safetensors delta ({err})") from err
    if metadata.get("format") != DELTA_FORMAT:
        raise DeltaError(f"{path} is not a vlpuda delta (format {metadata.get('format')!r})")
    visual: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    head_state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("head."):
            head_state[key[len("head."):]] = value
        elif key.endswith(".dense"):
            visual[key[len("visual."):-len(".dense")]] = (None, value)
        elif key.endswith(".value"):
            name = key[len("visual."):-len(".value")]
            visual[name] = (tensors[f"visual.{name}.index"].long(), value)
    return DeltaArtifact(visual=visual, head_state=head_state, metadata=metadata,
                         source=str(path))


@torch.no_grad()
def apply_delta_(visual: nn.Module, artifact: DeltaArtifact, base_fingerprint: str | None = None,
                 allow_other_base: bool = False) -> None:
    """Write the stored trained values into a freshly loaded pre-trained visual tower, in place.

    Refuses a tower whose weights are not the base the delta was trained on (its fingerprint
    in the metadata; `base_fingerprint` when the caller already hashed the tower), unless
    `allow_other_base`. Deltas written before fingerprints existed are applied unchecked."""
    expected = artifact.metadata.get(FINGERPRINT_KEY)
    if expected and not allow_other_base:
        found = base_fingerprint or weights_fingerprint(visual.named_parameters())
        if found != expected:
            raise DeltaError(
                f"{artifact.source} was trained on other base weights than the ones loaded for "
                f"model {artifact.metadata.get('model', '?')!r} (pretrained "
                f"{artifact.metadata.get('pretrained', '?')}): delta base {expected}, loaded "
                f"{found}. Load the weights it was trained on (the model folder or "
                "--pretrained file it names), or pass --allow-base-mismatch to apply it anyway")
    params = dict(visual.named_parameters())
    shapes = json.loads(artifact.metadata.get("visual_shapes", "{}"))
    missing = [name for name in shapes if name not in params]
    if missing:
        model = artifact.metadata.get("model", "?")
        raise DeltaError(
            f"the delta was made for model {model!r}; this visual tower lacks {missing[:3]}: "
            "load the base model the delta names"
        )
    for name, (index, values) in artifact.visual.items():
        target = params[name]
        if list(target.shape) != shapes.get(name, list(target.shape)):
            raise DeltaError(f"delta tensor {name} has shape {shapes[name]}, model {list(target.shape)}")
        # Work on a logically ordered flat copy, then copy back: the tower may be stored in
        # channels_last, where a flat view of the storage is not the logical order.
        flat = target.data.reshape(-1).clone()
        if index is None:
            flat.copy_(values.to(flat.device, flat.dtype))
        else:
            flat[index.to(flat.device)] = values.to(flat.device, flat.dtype)
        target.data.copy_(flat.view(target.shape))
