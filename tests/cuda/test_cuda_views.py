"""The GPU's input path and channels_last ResNet towers against their CPU / contiguous twins."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from cuda_helpers import relative_error, tiny_task_run, tiny_visual
from helpers import write_tiny_domains

from vlpuda.trainables.rst import ResidualSparsity
from vlpuda.trainables.views import cached_train_input, model_input, train_views

pytestmark = pytest.mark.cuda

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size, crop, pad", [(40, 32, 2), (256, 224, 0)])
def test_gpu_batch_path_equals_cached_train_input(layout, size, crop, pad, device):
    """What a GPU node runs (gather the uint8 batch, move it, crop and normalise it there)
    gives the CPU path's (`cached_train_input`) values from the same generator draws."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(24, size, size, 3), dtype=np.uint8)
    index = rng.permutation(24)[:16]
    cpu_generator, gpu_generator = (torch.Generator().manual_seed(5) for _ in range(2))
    expected = cached_train_input(images, index, crop, pad, True, cpu_generator, MEAN, STD,
                                  layout)
    batch = torch.from_numpy(images[index]).to(device)
    actual = model_input(train_views(batch, crop, pad, True, gpu_generator), MEAN, STD, layout)
    assert actual.device == batch.device and actual.is_contiguous(memory_format=layout)
    # One multiply-add per element on both; a GPU may round the fused form differently (1 ulp).
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=1e-6)
    assert torch.equal(cpu_generator.get_state(), gpu_generator.get_state())


def test_trainer_views_match_across_devices(device, tmp_path):
    """TaskRun's own view of a batch (the batch path on a GPU, cached_train_input on a CPU) and
    FixMatch's strong view are the same on both devices for the same seed."""
    data_dir = write_tiny_domains(tmp_path / "data", per_class=12)
    runs = [tiny_task_run(data_dir, "tiny-rn-test", d, tmp_path / d.type, fixmatch=True)
            for d in (device, torch.device("cpu"))]
    views = []
    for run in runs:
        # the strong view is drawn on the CPU (PIL, strong_view.py) by the run's prefetcher
        index, strong = run.strong.next(run.iteration, ahead=False)
        weak = run._weak_view(run.assets.target, index)
        views.append((weak.cpu(), strong.cpu()))
        run.close()
    (weak_device, strong_device), (weak_cpu, strong_cpu) = views
    torch.testing.assert_close(weak_device, weak_cpu, rtol=0, atol=1e-6)
    assert torch.equal(strong_device, strong_cpu)


@pytest.mark.parametrize("arch", ["tiny-rn-test", "RN50"])
def test_channels_last_resnet_equals_contiguous(arch, device, no_tf32):
    """A ResNet tower in channels_last whose weights are views of RST's flat buffer (what the
    trainer builds on a GPU) computes the contiguous tower's features and gradients."""
    if arch == "RN50" and device.type == "cpu":
        pytest.skip("RN50 at 224 px takes minutes on 2 CPU cores: the dry run checks the tiny RN")
    # eval(): BatchNorm on its running statistics, as the trainer keeps the tower's (frozen);
    # gradients flow all the same.
    contiguous = tiny_visual(arch).to(device).eval()
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    ResidualSparsity(channels_last)  # after the move, as the trainer does: layouts kept
    conv_weights = [p for p in channels_last.parameters() if p.dim() == 4]
    assert conv_weights and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    size = contiguous.image_size if isinstance(contiguous.image_size, int) else \
        contiguous.image_size[0]
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(6))
    outputs = []
    for tower, layout in ((contiguous, torch.contiguous_format),
                          (channels_last, torch.channels_last)):
        x = images.to(device).contiguous(memory_format=layout)
        features = tower(x)
        features.square().mean().backward()
        outputs.append((features.detach(), [p.grad for p in tower.parameters()]))
    (features_a, grads_a), (features_b, grads_b) = outputs
    assert relative_error(features_b, features_a) < 1e-5
    assert relative_error(torch.cat([g.reshape(-1) for g in grads_b]),
                          torch.cat([g.reshape(-1) for g in grads_a])) < 1e-5
    # Per tensor against the largest gradient: some are zero up to rounding in both layouts
    # (the attention pool's key bias cancels in its softmax), so a relative error means nothing.
    scale = max(float(g.abs().max()) for g in grads_a)
    for grad_a, grad_b in zip(grads_a, grads_b):
        assert float((grad_b - grad_a).abs().max()) <= 1e-5 * scale

    # bf16 autocast, as `precision: amp_bf16` trains: still the same features to bf16 accuracy.
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        half_a = contiguous(images.to(device))
        half_b = channels_last(images.to(device).contiguous(memory_format=torch.channels_last))
    assert relative_error(half_b.float(), features_a) < 3e-2
    assert relative_error(half_b.float(), half_a.float()) < 3e-2
