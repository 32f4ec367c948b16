"""A real search (Ray, Optuna, MLflow) on a partial-set task selected by the class mean: the
office_home_pda / VisDA settings on a generated tree."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from helpers import write_tiny_task
from search_helpers import printed_front, run_study, tiny_preset, tune_trials, write_preset
from vlpuda.cli import main


@pytest.mark.slow
def test_pda_search_selects_by_class_mean(ray_session, tmp_path, capsys):
    data, model = write_tiny_task(tmp_path / "task", per_class=12)
    (data / "Clipart_2").mkdir()
    for cls in ("Bike", "TV"):  # the target holds 2 of the source's 4 classes
        (data / "Clipart_2" / cls).symlink_to(data / "Clipart" / cls, target_is_directory=True)
    run_dir = tmp_path / "run"
    preset = tiny_preset((data, model), run_dir, {"num_samples": 2}, tgt="Clipart_2", pda=True,
                         selection="target_acc_class_mean", epochs=2)
    config = write_preset(tmp_path / "pda.yaml", preset)

    assert main(["search", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    study = run_study(run_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert printed_front(out)
    lines = out.splitlines()
    header = lines[max(i for i, line in enumerate(lines) if "Pareto front" in line) + 1]
    assert "target_acc_class_mean" in header.split()  # the front shows the class mean
    for trial in tune_trials(run_dir).values():
        result = trial.last_result
        # The search's first objective is the best class-mean accuracy of the run's epochs (a
        # maximum over them, the last included); target_acc stays the best overall accuracy.
        assert result["target_acc_class_mean_best"] >= result["target_acc_class_mean"]
        assert result["target_acc"] >= result["target_acc_last"]
        assert 0 <= result["target_acc_class_mean"] <= 100

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("pda").experiment_id])
    children = [r for r in runs if r.data.tags["vlpuda.kind"] == "trial"]
    assert len(children) == 2
    assert all("target_acc_class_mean" in c.data.metrics for c in children)
    by_number = {t.number: t for t in study.trials}
    for number in printed_front(out):
        assert by_number[number].user_attrs["target_acc_class_mean"] is not None
