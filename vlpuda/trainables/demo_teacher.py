"""The demo's CLIP teacher: a small open_clip CLIP pre-trained on the MNIST domain with the
paper's digit prompt, saved as a `local-dir:` model folder and scored zero-shot on every domain."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlpuda.trainables.demo_digits import DEMO_CLASSES, IMAGE_SIZE, DigitDomains
from vlpuda.trainables.sampler import InfiniteSampler
from vlpuda.trainables.views import model_input, train_views

DEMO_TEMPLATE = 'a photo of the number: "{}"'

# Vision: ModifiedResNet so the demo exercises the RN code paths (BN freezing, attnpool). Text:
# a 2-layer tower with context 16 keeps the bundled BPE tokenizer (vocab 49408) at little cost.
TEACHER_MODEL_CFG: dict = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
TEACHER_PREPROCESS_CFG: dict = {
    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "size": IMAGE_SIZE
}
TEACHER_WEIGHTS = "open_clip_model.safetensors"
ZERO_SHOT_FILE = "zero_shot.json"

DEFAULT_TEACHER_STEPS = 300


def _write_teacher_config(teacher_dir: Path) -> None:
    teacher_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TEACHER_MODEL_CFG, "preprocess_cfg": TEACHER_PREPROCESS_CFG}
    (teacher_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices and conv kernels only: decaying norms, biases and the logit scale hurts CLIP.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _train_teacher(
    model: torch.nn.Module,
    text_tokens: torch.Tensor,
    images: np.ndarray,
    labels: np.ndarray,
    steps: int,
    seed: int,
    log: Callable[[str], None],
    batch_size: int = 128,
) -> None:
    """CLIP-style training with one prompt per digit: CE over logit_scale * cos(image, text)."""
    opt = torch.optim.AdamW(_param_groups(model, 0.05), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps,
                                                pct_start=0.1)
    sampler = InfiniteSampler(len(labels), batch_size, seed, name="the MNIST demo domain")
    gen = torch.Generator().manual_seed(seed)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    mean, std = TEACHER_PREPROCESS_CFG["mean"], TEACHER_PREPROCESS_CFG["std"]
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    model.train()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(sampler.next_batch())
        # ±2 px shift and pixel noise: enough augmentation for 2,500 images not to be memorised.
        x = train_views(images_t[idx], crop=IMAGE_SIZE, pad=2, hflip=False, generator=gen)
        x = model_input(x, mean, std)
        # Noise of 0.1 in [0, 1] pixel units is 0.1 / std once normalised.
        x = x + 0.1 * torch.randn(x.shape, generator=gen) / std_t
        image_f = model.encode_image(x, normalize=True)
        text_f = model.encode_text(text_tokens, normalize=True)
        loss = F.cross_entropy(model.logit_scale.exp() * image_f @ text_f.T, labels_t[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log(f"  teacher step {step}/{steps}: loss {loss.item():.3f}")


@torch.inference_mode()
def zero_shot_accuracy(
    model: torch.nn.Module, text_tokens: torch.Tensor, images: np.ndarray, labels: np.ndarray,
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy (%) of argmax cos(image, prompt) over the digit prompts."""
    model.eval()
    text_f = model.encode_text(text_tokens, normalize=True)
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = model_input(torch.from_numpy(images[start : start + batch_size]),
                        TEACHER_PREPROCESS_CFG["mean"], TEACHER_PREPROCESS_CFG["std"])
        pred = (model.encode_image(x, normalize=True) @ text_f.T).argmax(dim=1)
        correct += int((pred.numpy() == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(labels)


def _save_state(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def train_teacher(
    teacher_dir: Path, data: DigitDomains, steps: int, seed: int, log: Callable[[str], None]
) -> dict[str, float]:
    """Train the teacher on MNIST, save it as a local-dir: folder, and score it zero-shot."""
    import open_clip

    _write_teacher_config(teacher_dir)
    local = "local-dir:" + str(teacher_dir)
    tokenizer = open_clip.get_tokenizer(local)
    text_tokens = tokenizer([DEMO_TEMPLATE.format(c) for c in DEMO_CLASSES])
    # A forked RNG: the teacher is a function of `seed` alone and the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = open_clip.CLIP(**TEACHER_MODEL_CFG)
        _train_teacher(model, text_tokens, *data.domains["MNIST"], steps, seed, log)
    _save_state(model, teacher_dir / TEACHER_WEIGHTS)

    # Score the folder as users will load it, which also proves that it loads.
    loaded, _, _ = open_clip.create_model_and_transforms(local)
    eval_sets = {"MNIST-heldout": data.mnist_heldout, "Printed": data.domains["Printed"],
                 "MNIST-M": data.domains["MNIST-M"]}
    accuracy = {name: round(zero_shot_accuracy(loaded, text_tokens, *arrays), 2)
                for name, arrays in eval_sets.items()}
    summary = {
        "zero_shot_accuracy_percent": accuracy,
        "logit_scale": round(loaded.logit_scale.exp().item(), 4),
        "template": DEMO_TEMPLATE,
        "teacher_steps": steps,
        "seed": seed,
    }
    (teacher_dir / ZERO_SHOT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return accuracy
