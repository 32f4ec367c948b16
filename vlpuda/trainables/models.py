"""CLIP loading, text prototypes and the student network (method.md section 2).

One loading path, `open_clip.create_model`, serves every way of naming weights: a tag resolved
through the Hugging Face cache, a weights file, a `local-dir:` folder or an `hf-hub:` repo. Offline
clusters are the normal case, so every failure to find weights becomes a `ModelLoadError` that
lists the three offline ways to supply them.

The student is the CLIP image tower with a new task head; the zero-shot head compares the same
features with text prototypes computed once. The text tower is released after that: only the
image tower is trained, and keeping the text weights would cost memory on every worker.
"""

from __future__ import annotations

import difflib
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import open_clip
import torch
import torch.nn.functional as F
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from safetensors import SafetensorError
from torch import nn

from vlpuda.errors import ModelLoadError
from vlpuda.trainables.filekind import refusal

log = logging.getLogger(__name__)

LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")

# Errors open_clip, torch and safetensors raise for a missing, unreadable or mismatched model.
# Anything else (TypeError, AttributeError) is a bug and must keep its own traceback.
_LOAD_ERRORS = (RuntimeError, OSError, ValueError, pickle.UnpicklingError, SafetensorError)

# Attributes that hold the text tower: CLIP keeps it flat on the model, CustomTextCLIP and CoCa
# keep it under `text` (CoCa also has a `text_decoder`).
_TEXT_ATTRIBUTES = (
    "transformer",
    "token_embedding",
    "positional_embedding",
    "ln_final",
    "text_projection",
    "attn_mask",
    "text",
    "text_decoder",
)


@dataclass
class LoadedClip:
    """A CLIP model in fp32 eval mode with what the trainer needs from its configuration."""

    model: nn.Module
    tokenizer: Callable
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale: float


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_clip(model_name: str, pretrained: str | None, cache_dir: str | None = None) -> LoadedClip:
    """Build an open_clip model with its weights, in fp32 and eval mode.

    `model_name` is an open_clip architecture, `local-dir:/folder` or `hf-hub:org/repo`;
    `pretrained` is None, a tag (resolved through the Hugging Face cache) or a weights file.
    Raises ModelLoadError with what to do when the name or the weights cannot be resolved.
    """
    pretrained = pretrained or None
    schema = _schema(model_name)
    if schema is None:
        _check_architecture(model_name)
        # open_clip's tokenizer lookup does not accept 'ViT-B/16'; hand it the registry key.
        model_name = _architecture(model_name)
        pretrained = _check_pretrained(model_name, pretrained)
    elif pretrained is not None:
        # open_clip ignores `pretrained` for these schemas; say so instead of failing, because a
        # preset's default tag should not stop someone who points at a folder.
        log.warning("ignoring pretrained=%r: %s carries its own weights", pretrained, model_name)
        pretrained = None
    try:
        model = open_clip.create_model(
            model_name,
            pretrained=pretrained,
            # Never half precision: RST thresholds of 1e-6..1e-8 and learning rates near 3e-7
            # are below fp16/bf16 resolution (method.md 2.1).
            precision="fp32",
            device="cpu",
            force_quick_gelu=_needs_quick_gelu(model_name, pretrained),
            cache_dir=cache_dir,
            # A folder or hub repo without weights would otherwise train a random model silently.
            require_pretrained=schema is not None,
            # Checkpoints are user-supplied files: never unpickle arbitrary objects.
            weights_only=True,
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except _LOAD_ERRORS as err:
        raise ModelLoadError(_load_failure_message(model_name, pretrained, err)) from err
    except AssertionError as err:
        # open_clip asserts while resizing a checkpoint's embeddings to the model's ("text
        # pos_embed width changed!"): the weights are of another architecture.
        raise ModelLoadError(
            f"the weights {pretrained or model_name} do not fit model {model_name!r} "
            f"(open_clip: {err}): pass the --model the weights were trained with") from err
    model.eval()
    mean, std = _normalisation(model)
    return LoadedClip(
        model=model,
        tokenizer=tokenizer,
        mean=mean,
        std=std,
        logit_scale=float(model.logit_scale.detach().exp().reshape(-1)[0]),
    )


def _schema(model_name: str) -> str | None:
    """'local-dir', 'hf-hub' or None for a plain architecture name."""
    if model_name.startswith(LOCAL_DIR_PREFIX):
        return "local-dir"
    if model_name.startswith(HF_HUB_PREFIX):
        return "hf-hub"
    return None


def _architecture(model_name: str) -> str:
    """The registry key open_clip looks up ('ViT-B/16' is accepted for 'ViT-B-16')."""
    return model_name.replace("/", "-")


def _check_architecture(model_name: str) -> None:
    """Fail early on an unknown architecture, suggesting the closest registered names."""
    known = open_clip.list_models()
    if _architecture(model_name) in known:
        return
    # Match case-insensitively: 'rn50' or 'vit-b-16' are the usual slips.
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(_architecture(model_name).lower(), list(by_lower), n=5)
    hint = f" Did you mean: {', '.join(by_lower[c] for c in close)}?" if close else ""
    raise ModelLoadError(
        f"unknown model {model_name!r}.{hint} Use an open_clip architecture name "
        f"(open_clip.list_models()), '{LOCAL_DIR_PREFIX}/path/to/folder' or "
        f"'{HF_HUB_PREFIX}org/repo'."
    )


def _check_pretrained(model_name: str, pretrained: str | None) -> str | None:
    """Resolve `pretrained` to a known tag or an existing file, or fail with a useful message."""
    if pretrained is None or get_pretrained_cfg(_architecture(model_name), pretrained):
        return pretrained
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    if _looks_like_path(pretrained):
        raise ModelLoadError(
            f"weights file not found: {pretrained} (model {model_name!r}).\n"
            + _offline_ways(model_name, pretrained)
        )
    tags = list_pretrained_tags_by_model(_architecture(model_name))
    raise ModelLoadError(
        f"{pretrained!r} is neither a pretrained tag of model {model_name!r} nor an existing file."
        f" Tags for this model: {', '.join(tags) if tags else 'none'}."
    )


def _looks_like_path(value: str) -> bool:
    """A value a user meant as a file: it has a directory part or a weights suffix."""
    return (
        os.sep in value
        or "/" in value
        or value.startswith(("~", "."))
        or value.lower().endswith(WEIGHT_SUFFIXES)
    )


def _needs_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """OpenAI weights were trained with QuickGELU; plain GELU would silently change the function.

    open_clip only warns on a tag mismatch, so force it for 'openai' and for any tag whose
    registry entry says it was trained with QuickGELU.
    """
    if pretrained is None or model_name.endswith("-quickgelu"):
        return False
    if pretrained == "openai":
        return True
    return bool(get_pretrained_cfg(_architecture(model_name), pretrained).get("quick_gelu"))


def _normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Image mean/std from the preprocess config open_clip attached to the image tower."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean", getattr(model.visual, "image_mean", None))
    std = cfg.get("std", getattr(model.visual, "image_std", None))
    return _three_channels(mean), _three_channels(std)


def _three_channels(values: Sequence[float] | float) -> tuple[float, float, float]:
    values = [float(v) for v in values] if isinstance(values, Sequence) else [float(values)]
    if len(values) == 1:
        values = values * 3
    return (values[0], values[1], values[2])


def _hub_repo(model_name: str, pretrained: str | None) -> str | None:
    """The Hugging Face repo that holds the requested weights, when there is one."""
    if model_name.startswith(HF_HUB_PREFIX):
        return model_name[len(HF_HUB_PREFIX) :]
    if pretrained is None or _schema(model_name) is not None:
        return None
    hub = get_pretrained_cfg(_architecture(model_name), pretrained).get("hf_hub", "")
    # Registry entries read 'org/name/' or 'org/name/file.bin'; the repo is the first two parts.
    parts = [p for p in hub.split("/") if p]
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def _offline_ways(model_name: str, pretrained: str | None) -> str:
    """The three ways to supply weights without a network, filled in for this request."""
    repo = _hub_repo(model_name, pretrained) or "<org>/<repo>"
    arch = "RN50" if _schema(model_name) else _architecture(model_name)
    quick = arch if arch.endswith("-quickgelu") else f"{arch}-quickgelu"
    lines = [
        "Supply the weights offline in one of three ways:",
        f"  (1) --pretrained /path/to/open_clip_pytorch_model.bin (for OpenAI weights use a "
        f"-quickgelu model name, e.g. --model {quick});",
        f"  (2) --model {LOCAL_DIR_PREFIX}/path/to/folder holding open_clip_config.json and "
        "open_clip_model.safetensors;",
        f"  (3) pre-fill the Hugging Face cache on a machine with internet (`hf download {repo}`,"
        " `huggingface-cli download` on older huggingface_hub, or `vlpuda prefetch`), copy it "
        "over, and set HF_HUB_OFFLINE=1 (plus HF_HOME or the cache directory).",
    ]
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        lines.append(
            "HF_HUB_OFFLINE is not in effect: export HF_HUB_OFFLINE=1 before starting so a "
            "missing file fails at once instead of after ~47 s of download retries."
        )
    return "\n".join(lines)


def _load_failure_message(model_name: str, pretrained: str | None, err: BaseException) -> str:
    """Name the request, the cause in one line, and what to do about it."""
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    what = f"model {model_name!r}" + (f" with pretrained={pretrained!r}" if pretrained else "")
    if isinstance(err, pickle.UnpicklingError):
        # torch's own message would advise weights_only=False: say what the file is instead.
        is_file = pretrained is not None and Path(pretrained).is_file()
        found = refusal(pretrained, err) if is_file else (
            "the weights hold Python objects besides tensors; they are not loaded, because "
            "unpickling such objects can run code")
        return (f"cannot load {what}: {found}. Pass an open_clip state dict "
                "(torch.save(model.state_dict(), path)) or a safetensors file.")
    if "TorchScript" in str(err):
        return (
            f"cannot load {what}: it is a TorchScript archive (the original OpenAI .pt format), "
            "which is not loaded because it needs unpickling with weights_only=False. Use the "
            "open_clip state dict (open_clip_pytorch_model.bin) of the same model instead.\n"
            + _offline_ways(model_name, pretrained)
        )
    if "Error(s) in loading state_dict" in str(err):
        return (
            f"the weights do not fit {what}: {cause}. Check that the model name is the "
            "architecture the weights were trained with."
        )
    return f"cannot load {what}: {cause}\n" + _offline_ways(model_name, pretrained)


# --------------------------------------------------------------------------------------------
# Text prototypes and the image tower
# --------------------------------------------------------------------------------------------


def class_prompt_name(folder_name: str) -> str:
    """Class folder name as it goes into a prompt: 'Alarm_Clock' -> 'alarm clock'."""
    return folder_name.replace("_", " ").lower()


def text_prototypes(
    loaded: LoadedClip,
    classes: list[str],
    template: str,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One L2-normalised text embedding per class, rows in the given (dataset) order.

    One prompt per class, no ensembling (method.md 2.2), from a template such as
    'an image of a {}'. The row order must be the dataset's
    label order, or the zero-shot head teaches the wrong classes. `loaded.model` is moved to
    `device` in place. Returns a float32 (C, d) tensor on the CPU.
    """
    # Templates may say '{}' or '{class}' (method.md writes the latter); both get the name.
    prompts = [
        template.format(class_prompt_name(name), **{"class": class_prompt_name(name)})
        for name in classes
    ]
    model = loaded.model.to(device).eval()
    chunks = []
    # fp32 even inside a caller's autocast: the prototypes are fixed for the whole search, and a
    # bf16 rounding error here is multiplied by the zero-shot scale (100) in every logit.
    with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=False):
        for start in range(0, len(prompts), 256):
            tokens = loaded.tokenizer(prompts[start : start + 256]).to(device)
            chunks.append(model.encode_text(tokens).float())
    return F.normalize(torch.cat(chunks), dim=-1).cpu()


def visual_tower(loaded: LoadedClip) -> nn.Module:
    """Return the image tower and release the text tower from `loaded.model`.

    The text tower is only needed for the prototypes; dropping the references lets its memory be
    freed before the student is copied to every worker.
    """
    visual = loaded.model.visual
    for name in _TEXT_ATTRIBUTES:
        if hasattr(loaded.model, name):
            # Setting None (instead of deleting) keeps attribute reads working on the husk.
            setattr(loaded.model, name, None)
    return visual


def feature_dim(visual: nn.Module) -> int:
    """Size of the image embedding, from one forward of a blank image.

    A forward is the one answer that holds for ViT, ModifiedResNet and timm towers alike (a timm
    tower without projection has no `output_dim`). Every module's train/eval flag is restored.
    """
    size = getattr(visual, "image_size", None)
    if size is None:
        return int(visual.output_dim)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    first = next(visual.parameters())
    modes = [(module, module.training) for module in visual.modules()]
    visual.eval()
    try:
        with torch.no_grad():
            out = visual(torch.zeros(1, 3, height, width, device=first.device, dtype=first.dtype))
    finally:
        for module, training in modes:
            module.training = training
    return int(_pooled(out).shape[-1])


def _pooled(out: torch.Tensor | tuple) -> torch.Tensor:
    """Image towers built with output_tokens return (pooled, tokens); the trainer wants pooled."""
    return out[0] if isinstance(out, (tuple, list)) else out


# --------------------------------------------------------------------------------------------
# Heads and the student
# --------------------------------------------------------------------------------------------


class TaskHead(nn.Module):
    """BatchNorm1d -> LayerNorm -> Linear (no bias) on unnormalised features (method.md 2.5)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes, bias=False)
        # Tiny weights make p_h start near uniform, so early distillation is not fighting
        # confident random predictions.
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.001)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        # The reference freezes the BN shift at 0; it still counts as a stored parameter.
        self.bn.bias.requires_grad_(False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(self.bn(feats)))


class Student(nn.Module):
    """CLIP image tower + task head + zero-shot head against frozen text prototypes."""

    prototypes: torch.Tensor

    def __init__(self, visual: nn.Module, prototypes: torch.Tensor, zs_scale: float) -> None:
        super().__init__()
        num_classes, dim = prototypes.shape
        self.visual = visual
        self.head = TaskHead(dim, num_classes)
        # A buffer so it follows .to(device); not persistent because it is rebuilt from text,
        # and not a parameter so no optimiser or DDP gradient sync ever touches it.
        self.register_buffer("prototypes", prototypes.detach().float().clone(), persistent=False)
        self.zs_scale = float(zs_scale)

    def forward(self, *batches: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(task_logits, clip_logits) for each image batch.

        The image tower encodes all batches in one pass: its BatchNorm statistics are frozen and
        its other layers work per image, so that equals encoding them one by one, and a larger
        batch keeps the GPU busier. The heads then see each batch alone, so the head's
        BatchNorm1d normalises each domain with its own statistics (method.md 2.8). All batches
        go through one call so DistributedDataParallel sees exactly one forward per backward.
        """
        feats = _pooled(self.visual(torch.cat(batches) if len(batches) > 1 else batches[0]))
        return [self._logits(f) for f in feats.split([len(b) for b in batches])]

    def _logits(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Heads in fp32 even under autocast: they are tiny, and the zero-shot logits multiply any
        # rounding of the cosine by the scale (100).
        with torch.autocast(feats.device.type, enabled=False):
            feats = feats.float()
            task = self.head(feats)
            clip = self.zs_scale * F.normalize(feats, dim=-1) @ self.prototypes.T
        return task, clip

    def train(self, mode: bool = True) -> Student:
        """Train mode everywhere except the image tower's BatchNorm layers.

        Their running statistics stay frozen at the pre-trained values while their affine
        weight and bias are still trained (method.md 2.6). The head's BatchNorm1d trains normally.
        """
        super().train(mode)
        for module in self.visual.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self
