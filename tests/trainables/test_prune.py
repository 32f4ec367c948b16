"""A finished trial's checkpoint loses its dense training state and keeps what export, sync and
evaluate read."""

from __future__ import annotations

from vlpuda.trainables.prune import prune_training_state


def test_prune_keeps_deltas_and_metrics(tmp_path):
    checkpoint = tmp_path / "checkpoint_000002"
    for task in ("Art_to_Clipart", "Clipart_to_Art"):  # a multi-task trial: a folder per task
        (checkpoint / task).mkdir(parents=True)
        (checkpoint / task / "delta.safetensors").write_bytes(b"d" * 10)
        (checkpoint / task / "best_delta.safetensors").write_bytes(b"b" * 10)
        (checkpoint / task / "state.pt").write_bytes(b"s" * 1000)
    (checkpoint / "metrics.json").write_text("{}")
    assert prune_training_state(str(checkpoint)) == 2000
    left = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file())
    assert left == ["Art_to_Clipart/best_delta.safetensors", "Art_to_Clipart/delta.safetensors",
                    "Clipart_to_Art/best_delta.safetensors", "Clipart_to_Art/delta.safetensors",
                    "metrics.json"]
    assert prune_training_state(str(checkpoint)) == 0  # twice changes nothing


def test_prune_leaves_remote_and_missing_paths_alone(tmp_path):
    assert prune_training_state("s3://bucket/run/checkpoint_000001") == 0
    assert prune_training_state(tmp_path / "gone") == 0
    assert prune_training_state(None) == 0
