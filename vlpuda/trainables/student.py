"""The student network: the CLIP image tower with a new task head, and the zero-shot head.

The zero-shot head compares the tower's features with text prototypes computed once (one prompt
per class, in the dataset's label order). The text tower is released after that: only the image
tower is trained, and keeping the text weights would cost memory on every worker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlpuda.trainables.models import LoadedClip

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

    One prompt per class, no ensembling (docs/method.md#prompts-and-class-order), from a template
    such as 'an image of a {}'. The row order must be the dataset's label order, or the zero-shot
    head teaches the wrong classes. `loaded.model` is moved to `device` in place. Returns a float32
    (C, d) tensor on the CPU.
    """
    # Templates may say '{}' or '{class}'; both get the name
    # (docs/method.md#prompts-and-class-order).
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


class TaskHead(nn.Module):
    """BatchNorm1d -> LayerNorm -> Linear (no bias) on unnormalised features
    (docs/method.md#student-and-heads)."""

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
        BatchNorm1d normalises each domain with its own statistics (docs/method.md#batchnorm).
        All batches go through one call so DistributedDataParallel sees exactly one forward per
        backward.
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
        weight and bias are still trained (docs/method.md#batchnorm). The head's BatchNorm1d
        trains normally.
        """
        super().train(mode)
        for module in self.visual.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self
