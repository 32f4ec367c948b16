"""CLIP loading through real open_clip offline, text prototypes, heads and the student.

Every weight source runs open_clip's own loading code on tiny architectures: weights files,
`local-dir:`, a tag and `hf-hub:` resolved through a Hugging Face cache seeded under tmp_path.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.pretrained import _pcfg

from helpers import seed_hub_repo
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from torch import nn

from vlpuda.errors import ModelLoadError
from vlpuda.trainables.models import LoadedClip, load_clip
from vlpuda.trainables.rst import stored_params
from vlpuda.trainables.student import (
    Student,
    TaskHead,
    class_prompt_name,
    feature_dim,
    text_prototypes,
    visual_tower,
)

CLASSES = ["Alarm_Clock", "Bike", "Desk_Lamp", "The_Eiffel_Tower"]
TEMPLATE = "an image of a {}"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _reference_state(name: str, seed: int = 7) -> dict[str, torch.Tensor]:
    """Random weights of a tiny architecture; a fixed seed so the reload is a real comparison."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    with torch.no_grad():
        # A logit scale other than the init value shows it really came from the file.
        model.logit_scale.fill_(4.0)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _assert_bit_equal(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def _open_clip_config(name: str, mean: list[float], std: list[float]) -> dict:
    return {
        "model_cfg": open_clip.get_model_config(name),
        "preprocess_cfg": {"mean": mean, "std": std},
    }


def _gelu_variant(monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    """Register a copy of a tiny architecture with plain GELU, so forcing QuickGELU is visible."""
    variant = f"{name}-gelu"
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    cfg["quick_gelu"] = False
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, variant, cfg)
    return variant


def _activations(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, (nn.GELU, QuickGELU))}


class _NotAWeight:
    """Any pickled object that is not a tensor: weights_only=True must refuse it."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from a second thread, and while other processes load the two
    cores, spinning OpenMP threads turn a 50 ms forward into seconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def loaded(tiny_model_name: str) -> LoadedClip:
    torch.manual_seed(0)
    return load_clip(tiny_model_name, None)


# ------------------------------------------------------------------------------------------------
# 1-2: weights files and local-dir:
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pt", "safetensors", "checkpoint"])
def test_weights_file_loads_bit_equal(tiny_model_name: str, tmp_path: Path, form: str) -> None:
    state = _reference_state(tiny_model_name)
    if form == "pt":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    elif form == "safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    result = load_clip(tiny_model_name, str(path))

    _assert_bit_equal(result.model, state)
    assert not result.model.training
    assert result.logit_scale == pytest.approx(torch.tensor(4.0).exp().item())


def test_weights_file_is_read_with_weights_only(tmp_path: Path) -> None:
    state = _reference_state("tiny-vit-test")
    path = tmp_path / "with_object.pt"
    torch.save({"state_dict": state, "extra": _NotAWeight()}, path)
    with pytest.raises(ModelLoadError, match="Python objects besides tensors") as info:
        load_clip("tiny-vit-test", str(path))
    assert "tiny-vit-test" in str(info.value) and str(path) in str(info.value)
    assert "weights_only=False" not in str(info.value)  # never advise unsafe loading


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    save_file(_reference_state("tiny-vit-test"), str(path))
    with pytest.raises(ModelLoadError, match="do not fit model 'tiny-rn-test'"):
        load_clip("tiny-rn-test", str(path))


def test_local_dir_loads_weights_and_preprocess(tiny_model_name: str, tmp_path: Path) -> None:
    state = _reference_state(tiny_model_name)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    config = _open_clip_config(tiny_model_name, mean, std)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))

    # A preset's default tag must not get in the way of a folder that carries its own weights.
    result = load_clip(f"local-dir:{tmp_path}", "openai")

    _assert_bit_equal(result.model, state)
    assert result.mean == pytest.approx(tuple(mean))
    assert result.std == pytest.approx(tuple(std))
    assert result.tokenizer(["a photo"]).shape == (1, 16)


def test_local_dir_without_weights_is_an_error(tmp_path: Path) -> None:
    config = _open_clip_config("tiny-vit-test", [0.5] * 3, [0.5] * 3)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="local-dir:"):
        load_clip(f"local-dir:{tmp_path}", None)


# ------------------------------------------------------------------------------------------------
# 3: tag and hf-hub: through a seeded Hugging Face cache
# ------------------------------------------------------------------------------------------------


def test_openai_tag_from_seeded_cache_forces_quick_gelu(
    tiny_model_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variant = _gelu_variant(monkeypatch, tiny_model_name)
    repo = "timm/tiny_clip.openai"
    tag = {"openai": _pcfg(hf_hub=f"{repo}/", quick_gelu=True)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, variant, tag)
    state = _reference_state(variant)
    seed_hub_repo(tmp_path, repo, _open_clip_config(variant, [0.1] * 3, [0.9] * 3), state)
    assert huggingface_hub.constants.HF_HUB_OFFLINE

    result = load_clip(variant, "openai", cache_dir=str(tmp_path))

    _assert_bit_equal(result.model, state)
    assert _activations(result.model) == {QuickGELU}
    # The variant really is a GELU architecture: without the OpenAI tag nothing is forced.
    assert _activations(load_clip(variant, None).model) == {nn.GELU}
    # A tag's preprocessing comes from the pretrained registry (OpenAI mean/std).
    assert result.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert result.std == pytest.approx(open_clip.OPENAI_DATASET_STD)


def test_hf_hub_repo_from_seeded_cache(tiny_model_name: str, tmp_path: Path) -> None:
    state = _reference_state(tiny_model_name)
    mean, std = [0.3, 0.3, 0.3], [0.6, 0.6, 0.6]
    config = _open_clip_config(tiny_model_name, mean, std)
    seed_hub_repo(tmp_path, "local/tiny-clip", config, state)

    result = load_clip("hf-hub:local/tiny-clip", None, cache_dir=str(tmp_path))

    _assert_bit_equal(result.model, state)
    assert result.mean == pytest.approx(tuple(mean))
    assert result.tokenizer(["a photo"]).shape == (1, 16)


# ------------------------------------------------------------------------------------------------
# 4: failures a user can cause
# ------------------------------------------------------------------------------------------------


def test_missing_tag_weights_fail_fast_with_the_three_ways(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_clip("RN50", "openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    for expected in (
        "'RN50'",
        "'openai'",
        "--pretrained",
        "-quickgelu",
        "local-dir:",
        "open_clip_config.json",
        "HF_HUB_OFFLINE=1",
        "timm/resnet50_clip.openai",
    ):
        assert expected in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_offline_hint_mentions_retries_when_not_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the message is checked: the missing file is found before any download is attempted.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelLoadError, match="47 s"):
        load_clip("RN50", str(tmp_path / "missing.bin"))


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ModelLoadError, match="Did you mean: .*tiny-vit-test"):
        load_clip("tiny-vit-tset", None)
    with pytest.raises(ModelLoadError, match="RN50"):
        load_clip("rn50", "openai")


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(ModelLoadError, match=str(path)):
        load_clip("tiny-vit-test", str(path))


def test_unknown_tag_lists_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match="yfcc15m"):
        load_clip("RN50", "laion9000")


# ------------------------------------------------------------------------------------------------
# 5: prompts and text prototypes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "prompt"),
    [
        ("Alarm_Clock", "alarm clock"),
        ("The_Eiffel_Tower", "the eiffel tower"),
        ("back_pack", "back pack"),
        ("aeroplane", "aeroplane"),
        ("7", "7"),
    ],
)
def test_class_prompt_name(folder: str, prompt: str) -> None:
    assert class_prompt_name(folder) == prompt


def test_text_prototypes_match_hand_computation(loaded: LoadedClip) -> None:
    protos = text_prototypes(loaded, CLASSES, TEMPLATE)

    assert protos.shape == (len(CLASSES), 32)
    assert protos.dtype == torch.float32 and protos.device.type == "cpu"
    assert torch.allclose(protos.norm(dim=1), torch.ones(len(CLASSES)), atol=1e-6)
    prompts = [
        "an image of a alarm clock",
        "an image of a bike",
        "an image of a desk lamp",
        "an image of a the eiffel tower",
    ]
    with torch.no_grad():
        expected = F.normalize(loaded.model.encode_text(loaded.tokenizer(prompts)), dim=-1)
    assert torch.allclose(protos, expected, atol=1e-6)


def test_text_prototypes_follow_the_given_class_order(loaded: LoadedClip) -> None:
    order = [2, 0, 3, 1]
    protos = text_prototypes(loaded, CLASSES, TEMPLATE)
    permuted = text_prototypes(loaded, [CLASSES[i] for i in order], TEMPLATE)
    assert torch.allclose(permuted, protos[order], atol=1e-6)


def test_text_prototypes_accept_a_named_class_field(loaded: LoadedClip) -> None:
    positional = text_prototypes(loaded, CLASSES, "a photo of a {}")
    named = text_prototypes(loaded, CLASSES, "a photo of a {class}")
    assert torch.equal(positional, named)


# ------------------------------------------------------------------------------------------------
# 6: heads, student, text tower release
# ------------------------------------------------------------------------------------------------


def test_task_head_init_and_stored_params() -> None:
    torch.manual_seed(0)
    dim, classes = 512, 65
    head = TaskHead(dim, classes)

    weight = head.fc.weight
    assert weight.shape == (classes, dim) and head.fc.bias is None
    assert weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert abs(weight.mean().item()) < 1e-4
    assert torch.equal(head.bn.weight, torch.ones(dim)) and head.bn.weight.requires_grad
    assert torch.equal(head.bn.bias, torch.zeros(dim)) and not head.bn.bias.requires_grad
    assert head.ln.eps == 1e-6
    assert torch.equal(head.ln.weight, torch.ones(dim))
    assert stored_params(0, head) == 4 * dim + dim * classes


def test_frozen_head_bias_stays_zero() -> None:
    head = TaskHead(8, 3).train()
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0, weight_decay=5e-4)
    head(torch.randn(16, 8)).pow(2).sum().backward()
    optimizer.step()
    assert torch.equal(head.bn.bias, torch.zeros(8))


def _student(loaded: LoadedClip, zs_scale: float = 100.0) -> Student:
    protos = text_prototypes(loaded, CLASSES, TEMPLATE)
    return Student(visual_tower(loaded), protos, zs_scale=zs_scale)


def test_student_clip_logits_are_scaled_cosines(loaded: LoadedClip) -> None:
    student = _student(loaded, zs_scale=37.5).eval()
    images = torch.randn(5, 3, 32, 32)

    [(task, clip)] = student(images)

    with torch.no_grad():
        feats = student.visual(images)
    cos = (feats / feats.norm(dim=1, keepdim=True)) @ student.prototypes.T
    assert torch.allclose(clip, 37.5 * cos, atol=1e-4)
    assert task.shape == (5, len(CLASSES))
    assert torch.allclose(task, student.head(feats), atol=1e-6)


def test_prototypes_are_a_non_persistent_buffer(loaded: LoadedClip) -> None:
    student = _student(loaded)
    assert "prototypes" in dict(student.named_buffers())
    assert "prototypes" not in student.state_dict()
    assert all("prototypes" not in name for name, _ in student.named_parameters())


def test_visual_batchnorm_stays_frozen_in_train_mode() -> None:
    torch.manual_seed(0)
    student = _student(load_clip("tiny-rn-test", None)).train()
    norms = [m for m in student.visual.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert student.training and student.head.bn.training
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]

    outputs = student(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32) + 1.0)
    sum(task.sum() + clip.sum() for task, clip in outputs).backward()

    for module, (mean, var) in zip(norms, before, strict=True):
        assert torch.equal(module.running_mean, mean) and torch.equal(module.running_var, var)
        assert module.weight.grad is not None and module.bias.grad is not None
    assert any(m.weight.grad.abs().sum() > 0 for m in norms)
    assert student.head.bn.num_batches_tracked.item() == 2


def test_head_batchnorm_normalises_each_batch_alone(loaded: LoadedClip) -> None:
    student = _student(loaded).train()
    # Larger head weights so a change in normalisation is visible in the logits.
    nn.init.normal_(student.head.fc.weight, std=1.0)
    source = torch.randn(3, 3, 32, 32)
    target = 2.0 * torch.randn(3, 3, 32, 32) + 1.5

    together = student(source, target)
    alone = [student(source)[0], student(target)[0]]

    for (task, clip), (task_alone, clip_alone) in zip(together, alone, strict=True):
        assert torch.allclose(task, task_alone, atol=1e-5)
        assert torch.allclose(clip, clip_alone, atol=1e-5)
    # Concatenating would mix the domains' statistics: a different answer.
    [(mixed, _)] = student(torch.cat([source, target]))
    assert not torch.allclose(mixed[:3], together[0][0], atol=1e-3)


def test_one_encoder_pass_equals_encoding_each_domain_alone() -> None:
    # The ResNet tower encodes source and target in one concatenated pass: with its BatchNorm
    # statistics frozen that must equal encoding each batch by itself, in train mode too.
    torch.manual_seed(0)
    student = _student(load_clip("tiny-rn-test", None)).train()
    source, target = torch.randn(3, 3, 32, 32), 2.0 * torch.randn(4, 3, 32, 32) + 1.0
    with torch.no_grad():
        together = student(source, target)
        alone = [student.visual(source), student.visual(target)]
    for (task, clip), feats in zip(together, alone, strict=True):
        assert task.shape == (len(feats), len(CLASSES))
        cos = (feats / feats.norm(dim=1, keepdim=True)) @ student.prototypes.T
        assert torch.allclose(clip, 100.0 * cos, atol=1e-4)


def test_visual_tower_releases_the_text_tower(loaded: LoadedClip) -> None:
    model = loaded.model
    visual = model.visual
    total = sum(p.numel() for p in model.parameters())
    text = sum(
        p.numel()
        for name, p in model.named_parameters()
        if not name.startswith("visual.") and not name.startswith("logit_")
    )
    assert text > 0

    returned = visual_tower(loaded)

    assert returned is visual
    names = [name for name, _ in model.named_parameters()]
    assert all(name.startswith("visual.") or name.startswith("logit_") for name in names)
    assert sum(p.numel() for p in model.parameters()) == total - text
    assert model.transformer is None and model.token_embedding is None


def test_feature_dim_restores_module_modes(loaded: LoadedClip) -> None:
    student = _student(loaded).train()
    modes = {name: m.training for name, m in student.named_modules()}

    assert feature_dim(student.visual) == 32

    assert {name: m.training for name, m in student.named_modules()} == modes


def test_loaded_model_is_fp32_eval(loaded: LoadedClip) -> None:
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
