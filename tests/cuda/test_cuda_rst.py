"""RST on the GPU: the fused SGD step through the flat-buffer views, the topk ratio cutoff, and
threshold 1e-8 under bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch
from cuda_helpers import relative_error, tiny_task_run, tiny_visual
from helpers import write_tiny_domains

from vlpuda.trainables.rst import (
    ResidualSparsity,
    apply_delta_,
    kth_largest,
    load_delta,
    ratio_cutoff,
    save_delta,
)

pytestmark = pytest.mark.cuda


def sgd(params, device: torch.device, **flags) -> torch.optim.SGD:
    """The trainer's optimiser settings (loop.TaskRun), with the implementation chosen by flags."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True,
                           **flags)


def fixed_gradients(params, steps: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(steps)]


@pytest.mark.parametrize("arch", ["tiny-rn-test", "tiny-vit-test"])
def test_fused_sgd_through_flat_buffer_views_matches_foreach_and_cpu(arch, device):
    """The trainer's fused SGD (one kernel for all parameters) on parameters that are views of
    RST's flat buffer takes the same steps as the foreach implementation on ordinary parameters
    and as the CPU, and writes them into the buffer that the reset reads."""
    steps = 5
    fused_tower = tiny_visual(arch).to(device)
    if device.type == "cuda" and arch == "tiny-rn-test":
        fused_tower.to(memory_format=torch.channels_last)  # as the trainer does for ResNets
    sparsity = ResidualSparsity(fused_tower)  # the weights become views of one buffer
    foreach_tower = tiny_visual(arch).to(device)
    cpu_tower = tiny_visual(arch)
    towers = {"fused": fused_tower, "foreach": foreach_tower, "cpu": cpu_tower}
    optimisers = {
        "fused": sgd(fused_tower.parameters(), device, fused=device.type == "cuda"),
        "foreach": sgd(foreach_tower.parameters(), device, foreach=True),
        "cpu": sgd(cpu_tower.parameters(), device, foreach=False),
    }
    for grads in fixed_gradients(list(cpu_tower.parameters()), steps):
        for name, tower in towers.items():
            for param, grad in zip(tower.parameters(), grads):
                # In the parameter's own layout (channels_last too), as autograd gives it.
                param.grad = torch.empty_like(param).copy_(grad)
            optimisers[name].step()

    start = sparsity.weights.data_ptr()
    end = start + sparsity.weights.numel() * sparsity.weights.element_size()
    flat_params = []
    for fused, foreach, cpu in zip(*(t.parameters() for t in towers.values())):
        assert start <= fused.data_ptr() < end, "a fused step moved a weight out of the buffer"
        flat_params.append(fused.detach().reshape(-1))
        assert relative_error(fused, foreach) < 1e-6
        assert relative_error(fused, cpu) < 1e-6
        assert not torch.equal(fused.detach().cpu(), cpu.detach().clone().zero_())
    # The buffer holds the stepped weights, and the reset sees them: tau 0 keeps every moved one.
    assert torch.equal(torch.cat(flat_params).cpu().sort().values,
                       sparsity.weights.cpu().sort().values)
    assert sparsity.changed() == sum(
        int((w.detach().cpu() != w0.cpu()).sum()) for _, w, w0 in sparsity.named_pairs())
    assert sparsity.changed() > 0.99 * sparsity.total


def test_topk_cutoff_equals_sort_and_kthvalue(device):
    """kth_largest by topk (the CUDA path, one slice spread over many thread blocks) equals a
    full sort and the CPU's kthvalue, ties and zeros included; so the ratio cutoff and the set
    of kept weights are the same on both devices."""
    n = 20_000_000 if device.type == "cuda" else 200_000  # a ViT-B tower's order on a GPU
    generator = torch.Generator().manual_seed(2)
    # Rounded to 1e-4 so many entries tie, and a fifth exactly zero (weights still at w0).
    values = (torch.rand(n, generator=generator) * 1e-2).round(decimals=4)
    values[torch.rand(n, generator=generator) < 0.2] = 0.0
    descending = values.sort(descending=True).values
    on_device = values.to(device)
    weights0 = torch.randn(n, generator=generator)
    weights = weights0 + values * torch.sign(torch.randn(n, generator=generator))
    weights_device, weights0_device = weights.to(device), weights0.to(device)
    for fraction in (0.0, 1e-4, 0.05, 0.5, 1.0):
        k = max(1, int(fraction * n))
        expected = descending[k - 1].item()
        assert kth_largest(on_device, k, by_topk=True).item() == expected, fraction
        assert kth_largest(on_device, k).item() == expected  # the device's own choice
        assert kth_largest(values, k, by_topk=False).item() == expected

        cpu_cutoff = ratio_cutoff(weights, weights0, fraction)
        assert ratio_cutoff(weights_device, weights0_device, fraction) == cpu_cutoff
        assert int(((weights - weights0).abs() > cpu_cutoff).sum()) <= int(fraction * n)


def test_ratio_mode_reset_on_device_matches_cpu(device):
    """A whole ratio-mode reset on the device keeps exactly the entries the CPU keeps."""
    towers = [tiny_visual("tiny-vit-test").to(d) for d in (device, torch.device("cpu"))]
    resets = [ResidualSparsity(t, "ratio", ratio=0.1) for t in towers]
    generator = torch.Generator().manual_seed(3)
    step = torch.randn(resets[1].total, generator=generator) * 1e-3
    for sparsity in resets:
        sparsity.weights.add_(step.to(sparsity.weights.device))
        sparsity.reset_()
    assert torch.equal(resets[0].weights.cpu(), resets[1].weights)
    assert resets[0].changed() == resets[1].changed() <= int(0.1 * resets[1].total)


@pytest.mark.parametrize("arch", ["tiny-rn-test", "tiny-vit-test"])
def test_bf16_autocast_with_tiny_threshold_moves_and_restores_weights_exactly(
        arch, device, tmp_path):
    """Under bf16 autocast the weights, gradients and updates stay fp32, so lr-1e-4 updates
    survive a threshold of 1e-8: the tower changes, every entry that moved 1e-8 or less is
    exactly w0 again, and the delta written to disk restores the trained tower bit for bit."""
    tau = 1e-8
    data_dir = write_tiny_domains(tmp_path / "data", per_class=12)
    run = tiny_task_run(data_dir, arch, device, tmp_path / "out", precision="amp_bf16",
                        rst=True, rst_threshold=tau, lr=1e-4, iters_per_epoch=6)
    assert all(p.dtype == torch.float32 for p in run.student.parameters())
    run.train_epoch()
    sparsity = run.sparsity
    moved = (sparsity.weights - sparsity.weights0).abs()
    assert 0 < sparsity.changed() == int((moved > 0).sum())
    assert int(((moved > 0) & (moved <= tau)).sum()) == 0  # nothing left inside the threshold
    scores = run.evaluate()
    assert 0.0 <= scores["target_acc_last"] <= 100.0

    path = tmp_path / "delta.safetensors"
    save_delta(path, sparsity.named_pairs(), run.student.head.state_dict(), {"model": arch})
    fresh = copy.deepcopy(run.student.visual).cpu()
    ResidualSparsity(fresh)  # the fresh copy must not share the trained buffer
    with torch.no_grad():
        for (_, _, w0), param in zip(sparsity.named_pairs(), fresh.parameters()):
            param.copy_(w0.cpu())
    apply_delta_(fresh, load_delta(path))
    for (name, trained, _), restored in zip(sparsity.named_pairs(), fresh.parameters()):
        assert torch.equal(restored, trained.detach().cpu()), name
    run.close()
