"""The sparsity ladder's cut: the largest |w - w0| entries kept, nested, reported and parsed."""

from __future__ import annotations

import torch

from vlpuda.trainables.ladder import keep_counts, ladder_metrics, parse_ladder, truncate_largest


def test_keep_counts_halve_the_changed_weights():
    assert keep_counts(100, 3) == [50, 25, 12]
    assert keep_counts(1, 2) == [0, 0]
    assert keep_counts(7, 0) == []


def test_truncation_keeps_exactly_the_largest_changes():
    w0 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    w = torch.tensor([1.5, 2.0, 2.9, 4.0, 8.0, 5.0])  # changes 0.5, 0, -0.1, 0, 3, -1
    cut = truncate_largest(w, w0, 2)
    assert cut.tolist() == [1.0, 2.0, 3.0, 4.0, 8.0, 5.0]  # |3| and |-1| kept, the rest w0
    nested = truncate_largest(cut, w0, 1)
    assert nested.tolist() == [1.0, 2.0, 3.0, 4.0, 8.0, 6.0]
    assert truncate_largest(w, w0, 0).equal(w0)
    assert truncate_largest(w, w0, 4).equal(w)  # every changed entry
    # Bit-exact: kept entries are the trained values, not w0 + (w - w0).
    assert cut[4].item() == w[4].item() and w[5].item() == 5.0


def test_ladder_metrics_round_trip():
    points = [{"fraction": 0.5, "target_acc": 80.0, "stored_params": 120},
              {"fraction": 0.25, "target_acc": 75.5, "stored_params": 70}]
    flat = ladder_metrics(points)
    assert flat["ladder_2/target_acc"] == 80.0 and flat["ladder_4/stored_params"] == 70
    assert parse_ladder({**flat, "target_acc": 90.0, "epoch": 3}) == points


def test_ladder_cuts_are_real_deltas_that_reproduce_their_scores(tmp_path):
    """After the last epoch the loop scores nested cuts of the best delta; each is written
    beside it, and that file alone (a fresh base model + the cut) gives the accuracy and stored
    parameters reported."""
    import shutil

    from helpers import tiny_train_overrides, write_local_dir_model, write_tiny_domains
    from vlpuda.config import build_config
    from vlpuda.trainables.evaluation import evaluate_delta
    from vlpuda.trainables.loop import train
    from vlpuda.trainables.rst import load_delta

    data = write_tiny_domains(tmp_path / "data")
    model = write_local_dir_model(tmp_path / "model", "tiny-rn-test")
    cfg, _ = build_config({**tiny_train_overrides(data, model, tmp_path / "run"),
                           "rst": True, "rst_threshold": 1e-4})
    cuts, seen = tmp_path / "cuts", []
    cuts.mkdir()

    def reporter(metrics, directory):
        names = sorted(p.name for p in directory.glob("ladder_*.safetensors"))
        for name in names:  # the loop deletes the directory once this returns
            shutil.copy(directory / name, cuts / f"{metrics['epoch']}_{name}")
        seen.append((metrics, names))

    train(cfg, reporter=reporter, ladder=2)
    (first, first_names), (last, names) = seen
    assert not any(k.startswith("ladder") for k in first) and first_names == []
    assert names == ["ladder_2.safetensors", "ladder_4.safetensors"]
    points = parse_ladder(last)
    assert [p["fraction"] for p in points] == [0.5, 0.25]
    assert 0 < last["ladder_share"] < 1 and last["ladder_seconds"] > 0
    assert points[1]["changed_params"] == points[0]["changed_params"] // 2
    for point, name in zip(points, names):
        scores = evaluate_delta(cfg, load_delta(cuts / f"2_{name}"))
        assert scores["target_acc_last"] == point["target_acc"]
        assert scores["stored_params"] == point["stored_params"]
