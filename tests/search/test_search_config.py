"""The `search:` section: every problem named by its key, through the real CLI, before Ray starts;
CLI overrides; and how many trials fit a cluster."""

from __future__ import annotations

import socket

import pytest

from search_helpers import tiny_preset, write_preset
from vlpuda.cli import main
from vlpuda.errors import ConfigError, VlpudaError
from vlpuda.layout import write_manifest
from vlpuda.search.cluster import derive_concurrency, local_cluster_cpus, running_cluster_address
from vlpuda.search.manifest import check_extension
from vlpuda.search.plan import build_plan, split_overrides
from vlpuda.search.settings import SearchSettings


@pytest.fixture
def preset(tiny_assets, tmp_path):
    return tiny_preset(tiny_assets, tmp_path / "run", {"num_samples": 2})


BAD_SPACES = {
    "inverted bound": ({"lr": {"low": 1e-2, "high": 1e-4}}, "search.space_overrides.lr"),
    "unknown parameter": ({"lamda1": 0.1}, "search.space_overrides.lamda1"),
    "negative rate": ({"lr": {"low": -1e-3, "high": 1e-2}}, "search.space_overrides.lr.low"),
}


@pytest.mark.parametrize("command", ["validate", "search"])
@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_space_fails_naming_the_key(preset, tmp_path, capsys, command, case):
    overrides, key = BAD_SPACES[case]
    preset["search"]["space_overrides"] = overrides
    config = write_preset(tmp_path / "bad.yaml", preset)
    assert main([command, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert key in err and str(config) in err
    assert not (tmp_path / "run").exists()  # failed before anything started


def test_every_settings_problem_is_listed_at_once(preset, tmp_path, capsys):
    preset["epochs"] = 8
    preset["search"].update({
        "num_sample": 4,  # typo
        "early_stopping": {"asha": True, "grace_period": 1},
    })
    config = write_preset(tmp_path / "bad.yaml", preset)
    assert main(["validate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "search.num_sample: unknown key" in err

    del preset["search"]["num_sample"]
    preset["search"].update({"gpus_per_trial": 3, "workers_per_trial": 2,
                             "tasks": [["Art", "Art"], ["Art", "Nowhere"]], "name": "a b"})
    with pytest.raises(ConfigError) as info:
        build_plan(preset, source="bad.yaml")
    problems = "\n".join(info.value.problems)
    for key in ("search.early_stopping.grace_period: 1 epochs is less than a quarter",
                "use at least 2", "search.gpus_per_trial: 3 GPUs over 2 workers",
                "search.tasks[0] ([Art, Art]): tgt: equals src",
                "search.tasks[1] ([Art, Nowhere]): tgt: no folder", "search.name:"):
        assert key in problems, key


def test_cli_and_key_value_overrides_reach_the_plan(preset, tmp_path, capsys):
    config = write_preset(tmp_path / "ok.yaml", preset)
    argv = ["validate", "--config", str(config), "search.num_samples=5",
            "search.sampler=nsga2", "search.early_stopping.asha=true", "epochs=4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "5 trials, sampler nsga2" in out and "grace 1 of 4 epochs" in out

    train, search = split_overrides({"lr": 1e-3, "search.early_stopping.grace_period": 2})
    assert train == {"lr": 1e-3} and search == {"early_stopping": {"grace_period": 2}}
    plan = build_plan(preset, {"epochs": 4}, {"early_stopping": {"asha": True}})
    assert plan.grace_period == 1 and plan.run_dir.is_absolute()
    assert plan.storage == f"sqlite:///{plan.run_dir / 'optuna.db'}"
    assert plan.ray_storage == str(plan.run_dir / "ray")


def test_search_without_a_task_or_a_preset_says_what_to_do(preset, tmp_path, capsys):
    assert main(["search"]) == 2
    assert "--config" in capsys.readouterr().err
    preset["src"] = None
    with pytest.raises(ConfigError, match="src/tgt"):
        build_plan(preset)


def settings(**values) -> SearchSettings:
    return SearchSettings.model_validate({"num_samples": 16, **values})


@pytest.mark.parametrize("values, resources, expected", [
    ({}, {"CPU": 4}, 2),  # 1 driver + 1 worker CPU per trial
    ({"workers_per_trial": 2}, {"CPU": 6}, 2),
    ({"gpus_per_trial": 0.5}, {"CPU": 32, "GPU": 2}, 4),  # fractional: 2 trials per GPU
    ({"gpus_per_trial": 2, "workers_per_trial": 2}, {"CPU": 32, "GPU": 4}, 2),  # multi-GPU
    ({"gpus_per_trial": 1}, {"CPU": 3, "GPU": 8}, 1),  # CPUs limit too
    ({"max_concurrent_trials": 3}, {"CPU": 1}, 3),
    ({"num_samples": 1}, {"CPU": 64}, 1),
])
def test_concurrency_follows_the_cluster_and_the_trial_share(values, resources, expected):
    assert derive_concurrency(settings(**values), resources) == expected


def test_workers_are_packed_node_by_node():
    # cluster.yaml at full size: a head (no CPUs), the driver node, 4 A10G and 2 H100 nodes.
    a10g = {"CPU": 8, "GPU": 1, "accelerator_type:A10G": 1}
    h100 = {"CPU": 26, "GPU": 1, "accelerator_type:H100": 1}
    nodes = [{"CPU": 0}, {"CPU": 8, "TRAIN_DRIVER": 8}, *[a10g] * 4, *[h100] * 2]
    totals = {name: sum(n.get(name, 0) for n in nodes) for name in {k for n in nodes for k in n}}
    # Half a GPU per trial: 12 trials, their drivers on the driver node at a quarter CPU each.
    assert derive_concurrency(settings(gpus_per_trial=0.5), totals, nodes) == 12
    # Kept on the H100s: only their 2 GPUs count, though the totals hold 6.
    h100_only = settings(gpus_per_trial=0.5, worker_resources={"accelerator_type:H100": 0.01})
    assert derive_concurrency(h100_only, totals) == 12  # totals alone over-count
    assert derive_concurrency(h100_only, totals, nodes) == 4
    # Two half-free GPUs on two nodes are not one GPU: a 1-GPU worker fits on neither.
    with pytest.raises(VlpudaError, match="max_concurrent_trials"):
        derive_concurrency(settings(gpus_per_trial=1), {"CPU": 16, "GPU": 1},
                           [{"CPU": 8, "GPU": 0.5}, {"CPU": 8, "GPU": 0.5}])


def test_a_trial_that_cannot_fit_is_an_error():
    with pytest.raises(VlpudaError, match="max_concurrent_trials"):
        derive_concurrency(settings(gpus_per_trial=1), {"CPU": 8, "GPU": 0})


def test_local_ray_gets_logical_cpus_for_drivers_and_workers():
    # 2 cores: two 1-worker trials at once, each with a driver, need 4 logical CPUs.
    assert local_cluster_cpus(settings(), cores=2, gpus=0) == 4
    assert local_cluster_cpus(settings(workers_per_trial=2), cores=2, gpus=0) == 3
    assert local_cluster_cpus(settings(gpus_per_trial=0.5), cores=8, gpus=1) == 8
    assert local_cluster_cpus(settings(max_concurrent_trials=3), cores=2, gpus=0) == 6


def test_a_run_dir_is_extended_only_by_a_comparable_finished_search(preset):
    plan = build_plan(preset)
    manifest = {"name": "earlier", "status": "finished", "fingerprint": plan.fingerprint()}
    write_manifest(plan.run_dir, manifest)
    assert check_extension(plan)["name"] == "earlier"  # same space, tasks, budget: extend
    with pytest.raises(ConfigError, match="epochs differ"):
        check_extension(build_plan({**preset, "epochs": 2}))
    write_manifest(plan.run_dir, {**manifest, "status": "running"})
    with pytest.raises(ConfigError, match="vlpuda search --resume"):
        check_extension(plan)


def test_a_ray_running_on_this_machine_is_found_and_a_dead_ones_record_ignored(tmp_path,
                                                                                monkeypatch):
    # `ray start` records its address in RAY_TMPDIR/ray/ray_current_cluster; a search started
    # in a head node's shell joins that Ray instead of starting a second one.
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert running_cluster_address() is None  # no record
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        record.write_text(address + "\n")
        assert running_cluster_address() == address
    assert running_cluster_address(timeout=0.5) is None  # the port closed: a dead Ray's record
    record.write_text("garbage")
    assert running_cluster_address() is None


def test_early_stopping_method_alias_default_and_conflict(preset, tmp_path, capsys):
    from vlpuda.search.moasha import LoggedASHA, MOASHAScheduler
    from vlpuda.search.stopping import make_scheduler

    def plan(stopping):
        return build_plan(preset, {"epochs": 8}, {"early_stopping": stopping})

    assert plan({}).settings.early_stopping.effective_method == "none"
    # Configuring early stopping without naming a method turns on MOASHA.
    moasha = plan({"grace_period": 2})
    assert moasha.settings.early_stopping.effective_method == "moasha"
    scheduler = make_scheduler(moasha)
    assert isinstance(scheduler, MOASHAScheduler)
    assert (scheduler.metrics, scheduler.levels) == (("target_acc", "stored_params"), [2, 6])
    assert isinstance(make_scheduler(plan({"asha": True})), LoggedASHA)  # the old spelling
    assert isinstance(make_scheduler(plan({"method": "asha"})), LoggedASHA)
    assert plan({"method": "none", "grace_period": 1}).settings.early_stopping.\
        effective_method == "none"  # an unused grace period is not checked
    with pytest.raises(ConfigError, match="asha: true means method: asha"):
        plan({"asha": True, "method": "moasha"})
    with pytest.raises(ConfigError, match="search.early_stopping.method"):
        plan({"method": "hyperband"})
    config = write_preset(tmp_path / "ok.yaml", preset)
    assert main(["validate", "--config", str(config), "epochs=8",
                 "search.early_stopping.grace_period=2", "search.sparsity_ladder=0"]) == 0
    out = capsys.readouterr().out
    assert "MOASHA, Pareto rank over target_acc and stored_params (grace 2 of 8 epochs" in out
    assert "the default once early stopping is configured" in out
    assert "sparsity ladder: off" in out
