"""The mean of per-class accuracies (VisDA's metric): hand-computed, and in the evaluation pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlpuda.trainables.decoded import decoded_from_arrays
from vlpuda.trainables.evaluation import evaluate
from vlpuda.trainables.metrics import class_mean_accuracy, per_class_counts
from vlpuda.trainables.models import load_clip
from vlpuda.trainables.student import Student, visual_tower
from vlpuda.trainables.views import model_input


def test_class_mean_of_a_tiny_confusion_case() -> None:
    # Class 0: 3 of 4 right; class 1: 1 of 2; class 2: 1 of 1; class 3 has no image.
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    correct, count = per_class_counts(pred, labels, num_classes=4)
    assert correct.tolist() == [3.0, 1.0, 1.0, 0.0]
    assert count.tolist() == [4.0, 2.0, 1.0, 0.0]
    # (3/4 + 1/2 + 1/1) / 3: the absent class does not count; overall accuracy would be 5/7.
    assert class_mean_accuracy(correct, count) == pytest.approx(75.0)
    # Always predicting the frequent class: overall 4/7, class mean only 1/3.
    correct, count = per_class_counts(torch.zeros(7, dtype=torch.long), labels, 4)
    assert class_mean_accuracy(correct, count) == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="undefined"):
        class_mean_accuracy(torch.zeros(3), torch.zeros(3))


def test_evaluate_reports_the_class_mean_of_its_own_predictions() -> None:
    loaded = load_clip("tiny-vit-test", None)
    torch.manual_seed(0)
    prototypes = torch.nn.functional.normalize(torch.randn(5, loaded.model.visual.output_dim),
                                               dim=1)
    student = Student(visual_tower(loaded), prototypes, 100.0).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0] * 9 + [1] * 6 + [3] * 8)  # classes 2 and 4 absent (a partial target)
    domain = decoded_from_arrays("tgt", list("abcde"), labels, images, images)
    scores = evaluate(student, domain, loaded.mean, loaded.std, torch.device("cpu"),
                      batch_size=7, autocast=torch.autocast("cpu", enabled=False))
    with torch.no_grad():
        ((task, _),) = student(model_input(torch.from_numpy(images), loaded.mean, loaded.std))
    pred = task.argmax(1).numpy()
    per_class = [np.mean(pred[labels == c] == c) for c in (0, 1, 3)]
    assert scores["target_acc_class_mean"] == pytest.approx(100 * np.mean(per_class))
    assert scores["target_acc_last"] == pytest.approx(100 * np.mean(pred == labels))


def test_visda_preset_reports_and_selects_the_class_mean() -> None:
    from pathlib import Path

    from vlpuda.config import load_config
    from vlpuda.objectives import DEFAULT_LABEL_FREE

    configs = Path(__file__).resolve().parents[2] / "configs"
    assert load_config(configs / "visda.yaml")[0].selection == "target_acc_class_mean"
    # Every other preset keeps overall accuracy, the paper's metric there.
    for preset in sorted(configs.glob("*.yaml")):
        if preset.name != "visda.yaml":
            cfg = load_config(preset)[0]
            assert cfg.selection is None, preset.name  # the default: the oracle, or label-free
            assert cfg.selection_effective == (DEFAULT_LABEL_FREE if cfg.unlabeled_target
                                               else "target_acc"), preset.name
