"""How the target's classes meet the source's: partial-set adaptation (pda) on generated trees,
and DomainNet's capitalised names keeping the dataset's own order for prompts and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_train_overrides, write_local_dir_model, write_tiny_domains
from vlpuda.cli import main
from vlpuda.config import build_config, read_yaml
from vlpuda.errors import ConfigError, DataError
from vlpuda.layout import BEST_DELTA_FILE
from vlpuda.search.plan import build_plan
from vlpuda.trainables.assets import build_task_assets
from vlpuda.trainables.lists import list_imagefolder
from vlpuda.trainables.models import load_clip
from vlpuda.trainables.partial import align_target
from vlpuda.trainables.student import text_prototypes

REPO = Path(__file__).resolve().parents[2]
SOURCE_CLASSES = ["Alarm_Clock", "Bike", "TV", "Table"]  # helpers.CLASSES, ImageFolder order


def _partial_target(data: Path, name: str, classes: list[str], from_domain: str = "Clipart"
                    ) -> None:
    """A target domain that links a subset of a full domain's class folders, the way the
    office_home_pda preset tells users to build theirs."""
    (data / name).mkdir()
    for cls in classes:
        (data / name / cls).symlink_to(data / from_domain / cls, target_is_directory=True)


@pytest.fixture(scope="module")
def pda_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("pda")
    data = write_tiny_domains(root / "data", per_class=10)
    _partial_target(data, "Clipart_2", ["Bike", "Table"])
    _partial_target(data, "Clipart_extra", ["Bike", "Sofa"])
    (data / "Clipart" / "Sofa").symlink_to(data / "Clipart" / "Bike", target_is_directory=True)
    model = write_local_dir_model(root / "model", "tiny-vit-test")
    return root, data, model


def _cfg(data: Path, model: str, out: Path, **extra):
    cfg, _ = build_config({**tiny_train_overrides(data, model, out), "pretrained": None, **extra})
    return cfg


def test_pda_target_is_re_indexed_into_the_source_classes(pda_task, tmp_path) -> None:
    _, data, model = pda_task
    cfg = _cfg(data, model, tmp_path / "run", tgt="Clipart_2", pda=True)
    assets = build_task_assets(cfg)
    assert assets.classes == assets.target.classes == SOURCE_CLASSES
    # The heads score all four source classes; target labels are the source's indices.
    assert assets.prototypes.shape[0] == 4
    _, samples = list_imagefolder(data / "Clipart_2")
    expected = [SOURCE_CLASSES.index(s.path.parent.name) for s in samples]
    assert assets.target.labels.tolist() == expected
    assert set(expected) == {1, 3}
    # Without pda the mismatch is refused, naming the missing classes.
    with pytest.raises(DataError, match="only in Art"):
        build_task_assets(cfg.model_copy(update={"pda": False}))


def test_pda_refuses_a_target_class_the_source_lacks(pda_task) -> None:
    _, data, _ = pda_task
    classes, samples = list_imagefolder(data / "Clipart_extra")
    from vlpuda.trainables.decoded import decoded_from_arrays

    target = decoded_from_arrays("Clipart_extra", classes, np.array([s.label for s in samples]),
                                 np.zeros((len(samples), 4, 4, 3), np.uint8),
                                 np.zeros((len(samples), 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"pda: target 'Clipart_extra' has classes .*\['Sofa'\]"):
        align_target(True, "Art", SOURCE_CLASSES, target)


def test_pda_train_and_evaluate_by_class_mean(pda_task, tmp_path, capsys) -> None:
    _, data, model = pda_task
    overrides = {**tiny_train_overrides(data, model, tmp_path / "run"), "tgt": "Clipart_2",
                 "selection": "target_acc_class_mean", "epochs": 3, "fixmatch": True,
                 "fixmatch_threshold": 0.3, "pda_min_predictions": 5}
    argv = ["train", "--pda"] + [f"{k}={v}" for k, v in overrides.items() if v is not None]
    assert main(argv + ["pretrained=null"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    # The label set each epoch's evaluation picks for the next: at least one class, at most
    # the source's 4 (20 target images, a class needs 5 predictions).
    assert all(1 <= m["pda_label_set"] <= 4 for m in lines)
    # target_acc is the best class-mean accuracy so far, and best_epoch the epoch it came from.
    for i, m in enumerate(lines):
        best = max(lines[: i + 1], key=lambda x: x["target_acc_class_mean"])
        assert m["target_acc"] == best["target_acc_class_mean"]
        assert m["best_epoch"] == best["epoch"]
    assert "class-mean" in capsys.readouterr().out
    # The kept delta scores the same on the partial target (its labels mapped the same way).
    best = max(lines, key=lambda x: x["target_acc_class_mean"])
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / BEST_DELTA_FILE)]) == 0
    assert f"task head accuracy {best['target_acc_last']:.2f} %" in capsys.readouterr().out


def test_office_home_pda_preset_validates_as_a_search(pda_task, tmp_path) -> None:
    _, data, model = pda_task
    raw = read_yaml(REPO / "configs/office_home_pda.yaml")
    assert raw["pda"] is True and raw["tgt"] in raw["domains"]
    (data / "Art_25").mkdir(exist_ok=True)
    _partial_target(data, "Clipart_25", ["Alarm_Clock", "Bike"])
    plan = build_plan(raw, {"data_dir": str(data), "model": model, "pretrained": None},
                      {"run_dir": str(tmp_path / "search")})
    assert [(t.src, t.tgt, t.pda) for t in plan.tasks] == [("Art", "Clipart_25", True)]
    with pytest.raises(ConfigError, match="selection"):
        build_plan(raw, {"data_dir": str(data), "selection": "target_acc_best"})


# DomainNet's real folder names: the capitalised three sort before every lowercase name.
DOMAINNET_CLASSES = ["aircraft_carrier", "The_Mona_Lisa", "zebra", "The_Eiffel_Tower",
                     "The_Great_Wall_of_China", "tiger", "tent"]


def _write_named_domain(root: Path, classes: list[str], per_class: int = 3) -> None:
    rng = np.random.default_rng(1)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")


def test_domainnet_prompts_follow_the_labels(tmp_path) -> None:
    data = tmp_path / "domainnet"
    for domain in ("clipart", "real"):
        _write_named_domain(data / domain, DOMAINNET_CLASSES)
    model = write_local_dir_model(tmp_path / "model", "tiny-vit-test")
    cfg, _ = build_config({**tiny_train_overrides(data, model, tmp_path / "run"),
                           "pretrained": None, "src": "clipart", "tgt": "real",
                           "train_resize": 16, "image_size": 16, "pad": 0})
    assets = build_task_assets(cfg)
    # ImageFolder's case-sensitive order, not the reference's lowercase list
    # (docs/method.md#d1-domainnet-class-order).
    order = ["The_Eiffel_Tower", "The_Great_Wall_of_China", "The_Mona_Lisa",
             "aircraft_carrier", "tent", "tiger", "zebra"]
    assert assets.classes == order
    loaded = load_clip(model, None)
    for domain in (assets.source, assets.target):
        _, samples = list_imagefolder(data / domain.name)
        for sample, label in zip(samples, domain.labels):
            assert order[label] == sample.path.parent.name  # label i is the folder classes[i]
    # Row i of the zero-shot head is the prompt of class i: "a photo of a the eiffel tower"
    # scores label 0, whatever the reference's list order was.
    for i, name in enumerate(order):
        alone = text_prototypes(loaded, [name], cfg.prompt_template)[0]
        assert torch.allclose(torch.from_numpy(assets.prototypes[i]), alone, atol=1e-6), name
    lowercase_sorted = sorted(order, key=str.lower)
    assert lowercase_sorted != order  # the two orders really differ on these names
