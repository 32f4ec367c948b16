"""Run dirs and command lines a user gets wrong: a damaged search.json, a directory that holds
no search, overrides among flags, and what `validate` checks. Each answer is one message naming
the file or key (exit 2, no traceback), and nothing is created or lost."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import write_tiny_domains
from vlpuda.cli import main
from vlpuda.objectives import EXPERIMENT
from vlpuda.search.study import experiment_counts

optuna.logging.set_verbosity(optuna.logging.WARNING)


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_clean(err: str, *names: str) -> None:
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)


@pytest.mark.parametrize("content, names", [
    ('{"name": "demo", "study_na', ["not valid JSON"]),   # cut short
    ("{}", ["lacks", "name", "study_name"]),
    ('["a list"]', ["JSON object"]),
])
@pytest.mark.parametrize("command", ["pareto", "resume", "sync"])
def test_damaged_manifest_is_named(tmp_path, capsys, content, names, command):
    (tmp_path / "search.json").write_text(content)
    before = listing(tmp_path)
    argv = {"pareto": ["pareto", str(tmp_path)], "resume": ["search", "--resume", str(tmp_path)],
            "sync": ["sync", str(tmp_path)]}[command]
    assert main(argv) == 2
    assert_clean(capsys.readouterr().err, str(tmp_path / "search.json"), *names)
    assert listing(tmp_path) == before  # nothing created, the file kept for the user to mend


def test_manifest_without_the_preset_is_refused_by_resume(tmp_path, capsys):
    manifest = {"name": "n", "study_name": "n", "storage": f"sqlite:///{tmp_path}/optuna.db",
                "ray_storage": str(tmp_path / "ray"), "experiment": "tune-x"}
    (tmp_path / "search.json").write_text(json.dumps(manifest))
    assert main(["search", "--resume", str(tmp_path)]) == 2
    assert_clean(capsys.readouterr().err, "search.json", "lacks raw")
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("command", ["pareto", "sync"])
def test_missing_study_storage_is_not_created(tmp_path, capsys, command):
    manifest = {"name": "n", "study_name": "n", "storage": f"sqlite:///{tmp_path}/optuna.db",
                "ray_storage": str(tmp_path / "ray"), "experiment": "tune-x", "raw": {}}
    (tmp_path / "search.json").write_text(json.dumps(manifest))
    assert main([command, str(tmp_path)]) == 2
    assert_clean(capsys.readouterr().err, str(tmp_path / "optuna.db"), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.json"]


def test_export_from_a_dir_without_a_search_creates_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--run", "0123", "--out", str(tmp_path / "out"),
                 "--tracking-uri", str(empty)]) == 2
    assert_clean(capsys.readouterr().err, str(empty / "mlflow.db"))
    assert not list(empty.iterdir()) and not (tmp_path / "out").exists()


def test_summary_counts_come_from_the_study(tmp_path):
    """After Ctrl-C Tune calls interrupted trials terminated; the study knows 2 of 4 ended."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db",
                                directions=["maximize", "minimize"])
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING,
                  TrialState.RUNNING, TrialState.PRUNED):
        trial = study.ask()
        trial.set_user_attr(EXPERIMENT, "tune-a" if state != TrialState.PRUNED else "tune-b")
        if state == TrialState.COMPLETE:
            study.tell(trial, [80.0, 10.0])
        elif state == TrialState.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
    counts = experiment_counts(study, "tune-a")
    assert (counts["COMPLETE"], counts["RUNNING"], counts["PRUNED"]) == (2, 2, 0)


def test_overrides_anywhere_among_flags(tmp_path, capsys):
    # the command line (with an lr inside the demo space's bounds)
    assert main(["validate", "--config", "configs/demo.yaml", "epochs=1", "--lr", "0.001",
                 "iters_per_epoch=2"]) == 0
    assert "configs/demo.yaml: OK" in capsys.readouterr().out
    from vlpuda.cli import build_parser, parse_args

    args = parse_args(build_parser(), ["train", "a=1", "--lr", "0.1", "b=2", "--seed", "3",
                                       "c=3"])
    assert (args.overrides, args.lr, args.seed) == (["a=1", "b=2", "c=3"], 0.1, 3)
    with pytest.raises(SystemExit) as exit_info:  # a stray key=value where none are taken
        main(["pareto", str(tmp_path), "epochs=1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: epochs=1" in capsys.readouterr().err


def test_validate_checks_model_name_and_classes(tmp_path, capsys):
    data = write_tiny_domains(tmp_path / "data")
    (data / "Clipart" / "Table").rename(data / "Clipart" / "Chair")
    base = ["validate", "--data-dir", str(data), "--src", "Art", "--tgt", "Clipart",
            "benchmark=tiny"]
    assert main([*base, "--model", "RN5O"]) == 2
    err = capsys.readouterr().err
    assert_clean(err, "model:", "'RN5O'", "RN50", "only in Art: ['Table']",
                 "only in Clipart: ['Chair']")


def test_image_list_preset_gets_an_image_list_hint(tmp_path, capsys):
    assert main(["validate", "--config", "configs/office31.yaml",
                 "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert_clean(err, "image_list/amazon.txt")
    assert "<class>/<image>" not in err


def test_image_list_label_disagreeing_with_its_folder(tmp_path, capsys):
    data = write_tiny_domains(tmp_path / "data")
    lists = {}
    for domain in ("Art", "Clipart"):
        lines = [f"{domain}/{name}/{i}.png {label}" for label, name in
                 enumerate(sorted(p.name for p in (data / domain).iterdir())) for i in range(3)]
        if domain == "Clipart":
            lines[4] = lines[4].rsplit(" ", 1)[0] + " 3"  # an image of folder 1 labelled 3
        (data / f"{domain}.txt").write_text("\n".join(lines) + "\n")
        lists[domain] = f"{domain}.txt"
    assert main(["validate", "--data-dir", str(data), "--src", "Art", "--tgt", "Clipart",
                 "benchmark=tiny", f"image_lists={json.dumps(lists)}"]) == 2
    assert_clean(capsys.readouterr().err, f"{data / 'Clipart.txt'}:5", "label 3",
                 "disagrees with its folder")
