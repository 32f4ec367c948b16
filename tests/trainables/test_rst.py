"""RST invariants after real optimizer steps, stored-parameter counts and the delta artifact."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from vlpuda.trainables import rst
from vlpuda.trainables.rst import (
    DeltaError,
    ResidualSparsity,
    apply_delta_,
    kth_largest,
    load_delta,
    reset_below_threshold_,
    save_delta,
    stored_params,
)


def visual_tower(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(name).visual


def sgd_steps(visual: torch.nn.Module, sparsity: ResidualSparsity, steps: int, lr: float) -> None:
    """Real optimizer steps on a real loss, each followed by the RST reset."""
    optimizer = torch.optim.SGD(visual.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    generator = torch.Generator().manual_seed(1)
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    for _ in range(steps):
        images = torch.randn(8, 3, size, size, generator=generator)
        loss = visual(images).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsity.reset_()


@pytest.mark.parametrize("by_topk", [False, True])  # True: the CUDA route, run on the CPU
def test_kth_largest_matches_a_full_sort(by_topk):
    values = torch.randn(10_001, generator=torch.Generator().manual_seed(0)).abs()
    values[:50] = 7.0  # ties at the top
    ranked = values.sort(descending=True).values
    for k in (1, 2, 50, 51, 5_000, 10_001):
        assert float(kth_largest(values, k, by_topk)) == float(ranked[k - 1]), k


def test_reset_keeps_moved_entries_bit_exact_and_restores_the_rest():
    w0 = torch.tensor([1.0, 1.0, -2.0, 0.1, 3.0, 0.0, 5.0])
    # moved by: +0.5, exactly tau (reset: keep iff > tau), -0.5 (kept), below tau,
    # 1e-7 on 3.0 (below float32 resolution there: no move), -0.0 vs 0.0, NaN
    weight = torch.tensor([1.5, 1.25, -2.5, 0.1 + 1e-3, 3.0 + 1e-7, -0.0, float("nan")])
    kept = weight.clone()
    reset_below_threshold_([weight], [w0], tau=0.25)
    expected = torch.tensor([1.5, 1.0, -2.5, 0.1, 3.0, 0.0, float("nan")])
    assert torch.equal(weight[:6], expected[:6])
    assert torch.equal(weight[[0, 2]].view(torch.int32), kept[[0, 2]].view(torch.int32))
    assert torch.isnan(weight[6])  # a diverged entry is not hidden by resetting it


@pytest.mark.parametrize("chunk", [None, 1000])
def test_threshold_mode_invariant(tiny_model_name, monkeypatch, chunk):
    if chunk:  # the reset over many chunks of the flat buffers, a short one last
        monkeypatch.setattr(rst, "RESET_CHUNK", chunk)
    visual = visual_tower(tiny_model_name)
    tau = 1e-4
    sparsity = ResidualSparsity(visual, "threshold", threshold=tau)
    sgd_steps(visual, sparsity, steps=5, lr=1e-2)
    changed = 0
    for _, weight, w0 in sparsity.named_pairs():
        equal = weight == w0
        moved = (weight - w0).abs() > tau
        assert bool((equal | moved).all()), "an entry sits inside (0, tau] of w0"
        changed += int((~equal).sum())
    assert 0 < changed < sparsity.total  # the test is not trivial either way
    assert sparsity.changed() == changed


@pytest.mark.parametrize("chunk", [None, 1000])
def test_ratio_mode_keeps_at_most_rho(tiny_model_name, monkeypatch, chunk):
    if chunk:
        monkeypatch.setattr(rst, "RESET_CHUNK", chunk)
    visual = visual_tower(tiny_model_name)
    rho = 0.01
    sparsity = ResidualSparsity(visual, "ratio", ratio=rho)
    sgd_steps(visual, sparsity, steps=4, lr=1e-2)
    changed = sparsity.changed()
    assert 0 < changed <= int(rho * sparsity.total)
    # all moves are distinct float32 values, so the budget is used up, not undershot by ties
    assert changed >= 0.9 * int(rho * sparsity.total)


def test_off_mode_changes_everything_it_trains(tiny_model_name):
    visual = visual_tower(tiny_model_name)
    sparsity = ResidualSparsity(visual, "off")
    sgd_steps(visual, sparsity, steps=2, lr=1e-2)
    assert sparsity.changed() > 0.5 * sparsity.total


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_visual_weights_become_views_of_one_buffer(tiny_model_name, layout):
    visual = visual_tower(tiny_model_name).to(memory_format=layout)
    before = {name: (p.detach().clone(), p.stride()) for name, p in visual.named_parameters()}
    sparsity = ResidualSparsity(visual, "threshold", threshold=1e-4)
    buffer = sparsity.weights.untyped_storage().data_ptr()
    for name, param in visual.named_parameters():
        values, stride = before[name]
        assert torch.equal(param, values) and param.stride() == stride, name  # layout kept
        assert param.untyped_storage().data_ptr() == buffer, name
    assert sparsity.total == sum(v.numel() for v, _ in before.values())
    # The buffer is the weights: a change to it is a change to every parameter, w0 stays put.
    with torch.no_grad():
        sparsity.weights.add_(1.0)
    for name, param, w0 in sparsity.named_pairs():
        assert torch.equal(param, before[name][0] + 1.0) and torch.equal(w0, before[name][0])
    assert sparsity.changed() == sparsity.total


def test_stored_params_counts_nonzeros_plus_head():
    visual = visual_tower("tiny-vit-test")
    sparsity = ResidualSparsity(visual, "threshold", threshold=0.0)
    with torch.no_grad():
        visual.proj[0, :3] += 1.0  # exactly 3 entries change
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 5, bias=False))
    assert sparsity.changed() == 3
    assert stored_params(sparsity.changed(), head) == 3 + (32 + 32) + 32 * 5


def test_delta_round_trip_is_bit_exact_and_small(tmp_path, tiny_model_name):
    visual = visual_tower(tiny_model_name)
    sparsity = ResidualSparsity(visual, "threshold", threshold=1e-4)
    sgd_steps(visual, sparsity, steps=3, lr=1e-2)
    head = torch.nn.Linear(32, 4, bias=False)
    path = tmp_path / "delta.safetensors"
    meta = {"model": tiny_model_name, "classes": json.dumps(list("abcd"))}
    size = save_delta(path, sparsity.named_pairs(), head.state_dict(), meta)

    fresh = visual_tower(tiny_model_name)  # same seed: this is w0
    artifact = load_delta(path)
    apply_delta_(fresh, artifact)
    for (name, trained), (_, restored) in zip(visual.named_parameters(), fresh.named_parameters()):
        assert torch.equal(trained, restored), name
    assert torch.equal(artifact.head_state["weight"], head.weight)
    assert artifact.classes == list("abcd")

    nnz = sparsity.changed()
    head_bytes = 4 * head.weight.numel()
    assert size == path.stat().st_size
    assert size <= 8 * nnz + head_bytes + 16_384, "more than 8 bytes per non-zero plus header"


def test_dense_encoding_caps_bytes_when_most_entries_change(tmp_path):
    visual = visual_tower("tiny-vit-test")
    sparsity = ResidualSparsity(visual, "off")
    with torch.no_grad():
        for p in visual.parameters():
            p.add_(1.0)
    size = save_delta(tmp_path / "d.safetensors", sparsity.named_pairs(), {}, {})
    assert size <= 4 * sparsity.total + 16_384
    fresh = visual_tower("tiny-vit-test")
    apply_delta_(fresh, load_delta(tmp_path / "d.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(visual.parameters(), fresh.parameters()))


def test_delta_errors(tmp_path):
    visual = visual_tower("tiny-vit-test")
    sparsity = ResidualSparsity(visual, "threshold", threshold=0.0)
    with torch.no_grad():
        visual.proj.add_(1.0)
    path = tmp_path / "vit.safetensors"
    save_delta(path, sparsity.named_pairs(), {}, {"model": "tiny-vit-test"})
    with pytest.raises(DeltaError, match="tiny-vit-test"):
        apply_delta_(visual_tower("tiny-rn-test"), load_delta(path))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(DeltaError, match="garbage.safetensors"):
        load_delta(garbage)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(DeltaError, match="not a vlpuda delta"):
        load_delta(other)
    with pytest.raises(DeltaError, match="does not exist"):
        load_delta(tmp_path / "missing.safetensors")


def test_delta_applies_to_a_channels_last_tower(tmp_path):
    visual = visual_tower("tiny-rn-test")
    sparsity = ResidualSparsity(visual, "threshold", threshold=1e-4)
    sgd_steps(visual, sparsity, steps=2, lr=1e-2)
    save_delta(tmp_path / "d.safetensors", sparsity.named_pairs(), {}, {})
    fresh = visual_tower("tiny-rn-test").to(memory_format=torch.channels_last)
    apply_delta_(fresh, load_delta(tmp_path / "d.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(visual.parameters(), fresh.parameters()))


def test_tiny_threshold_still_acts_under_bf16_autocast():
    """Autocast computes in bf16 but the weights, their updates and the reset stay fp32: an
    update of ~1e-7 survives a threshold of 1e-8 (a bf16 model could not even represent it)."""
    visual = visual_tower("tiny-vit-test")
    tau = 1e-8
    sparsity = ResidualSparsity(visual, "threshold", threshold=tau)
    optimizer = torch.optim.SGD(visual.parameters(), lr=1e-6, momentum=0.9, nesterov=True)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = visual(images).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsity.reset_()
    assert all(p.dtype == torch.float32 for p in visual.parameters())
    changed = sparsity.changed()
    assert 0 < changed < sparsity.total
    for _, weight, w0 in sparsity.named_pairs():
        assert bool(((weight == w0) | ((weight - w0).abs() > tau)).all())
    moved = torch.cat([(w - w0).abs().flatten() for _, w, w0 in sparsity.named_pairs()])
    assert moved[moved > 0].min() < 1e-5  # tiny updates really were kept, not only large ones
