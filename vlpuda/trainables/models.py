"""Loading CLIP: open_clip weights by tag, file, folder or hub repo (docs/method.md#model).

One loading path, `open_clip.create_model`, serves every way of naming weights: a tag resolved
through the Hugging Face cache, a weights file, a `local-dir:` folder or an `hf-hub:` repo. Offline
clusters are the normal case, so every failure to find weights becomes a `ModelLoadError` that
lists the three offline ways to supply them.

The student built from the loaded model lives in student.py.
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
            # are below fp16/bf16 resolution (docs/method.md#precision).
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

