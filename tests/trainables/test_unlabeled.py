"""Unlabeled targets: listing, classes from the source, absent label metrics, the kept epoch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import tiny_train_overrides, write_local_dir_model, write_tiny_domains
from vlpuda.config import build_config
from vlpuda.errors import ConfigError, DataError
from vlpuda.layout import BEST_DELTA_FILE
from vlpuda.objectives import LABEL_METRICS
from vlpuda.trainables.assets import build_task_assets, source_split
from vlpuda.trainables.lists import list_imagefolder
from vlpuda.trainables.loop import train
from vlpuda.trainables.reporting import LocalReporter
from vlpuda.trainables.rst import load_delta
from vlpuda.trainables.unlabeled import UNLABELED, list_unlabeled_folder, read_path_list


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny task plus its Clipart target flattened (Flat/) and nested by index (Nested/)."""
    root = tmp_path_factory.mktemp("unlabeled")
    data = write_tiny_domains(root / "data")
    _, samples = list_imagefolder(data / "Clipart")
    for i, s in enumerate(samples):
        shutil.copy(s.path, (data / "Flat").mkdir(exist_ok=True) or data / "Flat" / f"{i:03d}.png")
        nested = data / "Nested" / f"batch{i % 3}" / "deeper"
        nested.mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, nested / f"{i:03d}.png")
    labelled = "\n".join(f"Clipart/{s.path.parent.name}/{s.path.name} {s.label}" for s in samples)
    (data / "clipart_labelled.txt").write_text(labelled + "\n")
    (data / "clipart_paths.txt").write_text(
        "\n".join(f"Clipart/{s.path.parent.name}/{s.path.name}" for s in samples) + "\n")
    (data / "clipart_holdout.txt").write_text("\n".join(labelled.splitlines()[:8]) + "\n")
    model = write_local_dir_model(root / "model", "tiny-vit-test")
    return root, data, model, samples


def test_flat_and_nested_folders_list_every_image_without_labels(tiny):
    _, data, _, samples = tiny
    flat, nested = list_unlabeled_folder(data / "Flat"), list_unlabeled_folder(data / "Nested")
    assert len(flat) == len(nested) == len(samples) == 48
    assert {s.label for s in flat + nested} == {UNLABELED}
    assert [p.path.name for p in flat] == sorted(p.path.name for p in flat)
    (data / "Empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        list_unlabeled_folder(data / "Empty")


def test_path_lists_keep_paths_and_drop_labels(tiny):
    _, data, _, samples = tiny
    paths = read_path_list(data / "clipart_paths.txt", data)
    labelled = read_path_list(data / "clipart_labelled.txt", data)
    assert [s.path for s in paths] == [s.path for s in labelled] == [s.path for s in samples]
    assert {s.label for s in labelled} == {UNLABELED}


def test_flat_folder_given_as_labelled_suggests_unlabeled_target(tiny):
    _, data, _, _ = tiny
    with pytest.raises(DataError, match="--unlabeled-target"):
        list_imagefolder(data / "Flat")


def config(tiny, tmp_path, **extra):
    root, data, model, _ = tiny
    cfg, _ = build_config({**tiny_train_overrides(data, model, tmp_path / "run"),
                           "tgt": "Flat", "unlabeled_target": True, **extra})
    return cfg


def test_classes_come_from_the_source_and_the_holdout_never_trains(tiny, tmp_path):
    _, data, _, samples = tiny
    cfg = config(tiny, tmp_path, tgt="Clipart", image_lists={"Clipart": "clipart_paths.txt"},
                 target_holdout_list="clipart_holdout.txt")
    assets = build_task_assets(cfg)
    assert assets.target.classes == assets.source.classes == ["Alarm_Clock", "Bike", "TV",
                                                              "Table"]
    assert not assets.target.labelled and len(assets.target) == len(samples) - 8
    assert assets.target_holdout is not None and len(assets.target_holdout) == 8
    assert assets.target_holdout.labels.tolist() == [s.label for s in samples[:8]]


def test_selection_by_target_acc_on_unlabeled_target_names_the_key(tiny, tmp_path):
    with pytest.raises(ConfigError, match="selection: target_acc needs target labels"):
        config(tiny, tmp_path, selection="target_acc")
    with pytest.raises(ConfigError, match="selection: proxy_source_acc needs"):
        config(tiny, tmp_path, selection="proxy_source_acc")


def test_source_split_is_fixed_and_disjoint():
    train_a, held_a = source_split(50, 0.1)
    train_b, held_b = source_split(50, 0.1)
    assert np.array_equal(held_a, held_b) and len(held_a) == 5
    assert sorted([*train_a, *held_a]) == list(range(50))
    assert len(source_split(50, 0.0)[1]) == 0


def test_unlabeled_run_has_no_label_metric_and_keeps_the_validators_epoch(tiny, tmp_path):
    cfg = config(tiny, tmp_path, selection="proxy_snd", epochs=3, source_holdout=0.25,
                 lr=3e-3)
    lines = []
    train(cfg, reporter=LocalReporter(cfg.out_dir, log=lines.append))
    epochs = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 3
    for metrics in epochs:
        assert not set(LABEL_METRICS) & set(metrics), metrics.keys()
        for name in ("proxy_entropy", "proxy_im", "proxy_bnm", "proxy_snd", "proxy_mixval",
                     "proxy_zs_agreement", "proxy_source_acc"):
            assert np.isfinite(metrics[name]), name
    assert all("unlabeled" in line and "acc last" not in line for line in lines)
    snd = [m["proxy_snd"] for m in epochs]
    picked = int(np.argmax(snd)) + 1  # the earliest epoch on ties
    assert epochs[-1]["best_epoch"] == picked
    assert epochs[-1]["proxy_snd_best"] == max(snd)
    kept = load_delta(tmp_path / "run" / BEST_DELTA_FILE)
    assert kept.metadata["epoch"] == str(picked)
