"""Shared by the search tests: tiny presets, and reading a search back from its run dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from helpers import seed_study, tiny_train_overrides


def tiny_preset(tiny_assets: tuple[Path, str], run_dir: Path, search: dict[str, Any],
                **train: Any) -> dict[str, Any]:
    """A preset dict for a seconds-long trial on the tiny task, with a `search:` section."""
    data, model = tiny_assets
    preset = tiny_train_overrides(data, model, run_dir / "train")
    preset.update(epochs=1, iters_per_epoch=3, rst_threshold=1e-4)
    preset.update(train)
    preset["search"] = {
        "space": "cmkd_rst",
        # Wide enough for the tiny task's lr 1e-3 / multiplier 10 defaults.
        "space_overrides": {"lr": {"low": 1e-4, "high": 1e-2},
                            "lr_multiplier": {"low": 1, "high": 100}},
        "run_dir": str(run_dir),
        "seed": 0,
        **search,
    }
    return preset


def write_preset(path: Path, preset: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def seeded_search(tiny_assets: tuple[Path, str], tmp_path: Path, search: dict[str, Any],
                  points: tuple[dict[str, Any], ...], epochs: int) -> tuple[Path, Path]:
    """A preset whose study is seeded with `points` (tried first, in order), lr widened down to
    1e-9 so FROZEN is legal: (preset path, run dir)."""
    run_dir = tmp_path / "run"
    preset = tiny_preset(tiny_assets, run_dir, search, epochs=epochs)
    preset["search"]["space_overrides"]["lr"] = {"low": 1e-9, "high": 1e-2}
    config = write_preset(tmp_path / f"{search['name']}.yaml", preset)
    seed_study(run_dir, search["name"], *points)
    return config, run_dir


def run_study(run_dir: Path):
    """The Optuna study of a search, found through its run dir's manifest."""
    from vlpuda.layout import read_manifest
    from vlpuda.search.study import load_study

    return load_study(read_manifest(run_dir))


def tune_trials(run_dir: Path) -> dict[str, Any]:
    """Tune's own record of the run dir's (latest) experiment: trial id -> Trial (status,
    last_result), read from the experiment state the way Tune restores it."""
    import ray.tune

    from vlpuda.layout import read_manifest

    manifest = read_manifest(run_dir)
    experiment = Path(manifest["ray_storage"]) / manifest["experiment"]
    return {t.trial_id: t for t in ray.tune.ExperimentAnalysis(str(experiment)).trials}


def tune_epochs(run_dir: Path) -> dict[str, list[int]]:
    """The epochs each trial of the run dir's experiment reported, in order, across restores."""
    import ray.tune

    from vlpuda.layout import read_manifest

    manifest = read_manifest(run_dir)
    experiment = Path(manifest["ray_storage"]) / manifest["experiment"]
    frames = ray.tune.ExperimentAnalysis(str(experiment)).trial_dataframes
    return {trial_id: [int(e) for e in frame["epoch"]] for trial_id, frame in frames.items()}


def printed_front(text: str) -> list[int]:
    """The trial numbers of the last front table printed in `text`."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if "Pareto front" in line)
    numbers = []
    for line in lines[start + 3:]:  # title, header, rule
        first = line.split()[0] if line.split() else ""
        if not first.isdigit():
            break
        numbers.append(int(first))
    return numbers


def dominates(a, b) -> bool:
    """a dominates b for (accuracy: max, stored parameters: min)."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])
