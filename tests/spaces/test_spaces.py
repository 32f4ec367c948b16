"""Named search spaces with real Optuna studies (and Ray's OptunaSearch), overrides, validation."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution

from vlpuda.errors import ConfigError
from vlpuda.spaces import SPACES, SearchSpace, build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

CMKD = ("lr", "lr_multiplier", "lambda1", "lambda2", "lambda3", "label_smoothing")
FIXMATCH = ("fixmatch_threshold", "fixmatch_factor")
LOG_SCALE = {"lr", "lr_multiplier", "lambda1", "rst_threshold_over_lr", "rst_ratio",
             "fixmatch_factor"}  # fmt: skip

# name -> (searched parameters, constants)
EXPECTED: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "cmkd": (CMKD, {"rst": False, "fixmatch": False}),
    "cmkd_fixmatch": ((*CMKD, *FIXMATCH), {"rst": False, "fixmatch": True}),
    "cmkd_rst": (
        (*CMKD, "rst_threshold_over_lr"),
        {"rst": True, "rst_mode": "threshold", "fixmatch": False},
    ),
    "cmkd_rst_fixmatch": (
        (*CMKD, "rst_threshold_over_lr", *FIXMATCH),
        {"rst": True, "rst_mode": "threshold", "fixmatch": True},
    ),
    "cmkd_rst_ratio": (
        (*CMKD, "rst_ratio"),
        {"rst": True, "rst_mode": "ratio", "fixmatch": False},
    ),
    "cmkd_rst_ratio_fixmatch": (
        (*CMKD, "rst_ratio", *FIXMATCH),
        {"rst": True, "rst_mode": "ratio", "fixmatch": True},
    ),
}

# Office-Home ViT-B/16 settings (docs/method.md#per-benchmark-settings), as a preset states them.
PAPER_DEFAULTS = {
    "lr": 3e-6,
    "lr_multiplier": 1000,
    "lambda1": 0.25,
    "lambda2": 0.1,
    "lambda3": 0.025,
    "label_smoothing": 0.1,
    "rst_threshold": 1e-6,
    "fixmatch_threshold": 0.95,
    "fixmatch_factor": 0.5,
}


def two_objective_study(seed: int = 0) -> optuna.Study:
    """The study OptunaSearch creates: accuracy up, stored parameters down."""
    return optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=seed)
    )


def test_the_catalogue_has_the_expected_spaces() -> None:
    assert set(SPACES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_space_suggests_within_bounds_in_an_optuna_study(name: str) -> None:
    space = SPACES[name]
    searched, constants = EXPECTED[name]
    study = two_objective_study()
    for _ in range(4):
        trial = study.ask()
        config = space(trial)
        assert tuple(trial.params) == searched
        for param in searched:
            dim = space.dimension(param)
            distribution = trial.distributions[param]
            assert isinstance(distribution, FloatDistribution)
            assert distribution.log == (param in LOG_SCALE)
            assert (distribution.low, distribution.high) == (dim.low, dim.high)
            assert dim.low <= config[param] <= dim.high
            assert config[param] == trial.params[param]
        for key, value in constants.items():
            assert config[key] == value
        if "rst_threshold_over_lr" in searched:
            expected_tau = config["rst_threshold_over_lr"] * config["lr"]
            assert config["rst_threshold"] == pytest.approx(expected_tau, rel=1e-12)
        else:
            assert "rst_threshold" not in config
        study.tell(trial, [0.5, 1e5])


def test_log_dimensions_are_sampled_in_log_space() -> None:
    # Everything but lr fixed, so each trial draws one log-uniform value in [1e-9, 1e-5].
    fixed = {"lr_multiplier": 1000, "lambda1": 0.25, "lambda2": 0.1, "lambda3": 0.025,
             "label_smoothing": 0.1}  # fmt: skip
    space = build_space("cmkd", fixed)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1)
    )
    draws = np.array([space(study.ask())["lr"] for _ in range(300)])
    # Log-uniform: the median is near the geometric midpoint 1e-7 and a quarter of the draws lie
    # below 1e-8. Uniform sampling would put the median near 5e-6 and almost nothing below 1e-8.
    assert 10**-7.5 < np.median(draws) < 10**-6.5
    assert 0.15 < np.mean(draws < 1e-8) < 0.35


def test_rst_threshold_is_derived_when_lr_or_the_ratio_is_fixed() -> None:
    space = build_space("cmkd_rst", {"rst_threshold_over_lr": 0.5})
    trial = two_objective_study().ask()
    config = space(trial)
    assert "rst_threshold_over_lr" not in trial.params
    assert config["rst_threshold_over_lr"] == 0.5
    assert config["rst_threshold"] == pytest.approx(0.5 * config["lr"])


def test_a_scalar_override_fixes_the_value_and_it_is_not_suggested() -> None:
    space = build_space("cmkd_rst", {"lambda2": 0.1, "lr": "3e-6"})
    assert [d.name for d in space.searched] == [
        "lr_multiplier", "lambda1", "lambda3", "label_smoothing", "rst_threshold_over_lr"
    ]  # fmt: skip
    assert "lambda2" not in space.optuna_distributions()
    trial = two_objective_study().ask()
    config = space(trial)
    assert "lambda2" not in trial.params and "lr" not in trial.params
    assert config["lambda2"] == 0.1 and config["lr"] == 3e-6
    assert config["rst_threshold"] == pytest.approx(3e-6 * config["rst_threshold_over_lr"])


def test_bounds_override_narrows_and_keeps_the_log_flag() -> None:
    # As PyYAML reads it: "1e-7" without a dot is a string in YAML 1.1.
    overrides = yaml.safe_load("lr: {low: 1e-7, high: 1.0e-6}\nlambda1: {high: 0.3, log: false}")
    assert overrides["lr"]["low"] == "1e-7"
    space = build_space("cmkd", overrides)
    lr, lambda1 = space.dimension("lr"), space.dimension("lambda1")
    assert (lr.low, lr.high, lr.log) == (1e-7, 1e-6, True)
    assert (lambda1.low, lambda1.high, lambda1.log) == (0.02, 0.3, False)
    study = two_objective_study()
    for _ in range(5):
        trial = study.ask()
        config = space(trial)
        assert 1e-7 <= config["lr"] <= 1e-6
        assert trial.distributions["lr"] == FloatDistribution(1e-7, 1e-6, log=True)
        assert trial.distributions["lambda1"] == FloatDistribution(0.02, 0.3, log=False)


def test_lowest_point_takes_each_lower_bound_and_first_choice() -> None:
    space = build_space("cmkd", {"lr": {"low": 1e-7, "high": 1e-6},
                                 "lr_multiplier": [10000, 1000], "lambda1": 0.1})
    point = space.lowest_point()
    assert point["lr"] == 1e-7  # a range's lower bound
    assert point["lr_multiplier"] == 10000  # a list's first choice, not its smallest
    assert "lambda1" not in point  # fixed: not searched
    assert set(point) == {d.name for d in space.searched}
    assert all(space.dimension(name).contains(value) for name, value in point.items())


def test_a_list_override_searches_those_choices() -> None:
    space = build_space("cmkd", {"lr_multiplier": [1000, 10000]})
    study = two_objective_study()
    seen = set()
    for _ in range(8):
        trial = study.ask()
        value = space(trial)["lr_multiplier"]
        assert isinstance(trial.distributions["lr_multiplier"], CategoricalDistribution)
        assert value in (1000.0, 10000.0) and isinstance(value, float)
        seen.add(value)
    assert seen  # at least one draw, all from the list


def test_a_bad_space_reports_every_problem_in_one_error() -> None:
    config = yaml.safe_load(
        """
        search:
          space: cmkd_rst
          space_overrides:
            lambda2: {low: 0.3, high: 0.1}
            lamda1: 0.1
            lr: -1.0e-6
        """
    )["search"]
    with pytest.raises(ConfigError) as info:
        build_space(config["space"], config["space_overrides"], source="office_home.yaml")
    error = info.value
    assert len(error.problems) == 3
    message = str(error)
    assert "office_home.yaml" in message
    assert "search.space_overrides.lambda2: low 0.3 is greater than high 0.1" in message
    assert "search.space_overrides.lamda1: unknown parameter" in message
    assert "did you mean 'lambda1'" in message
    assert "search.space_overrides.lr: the encoder learning rate must be > 0" in message


@pytest.mark.parametrize(
    ("space", "overrides", "expected"),
    [
        ("cmkd_rsst", {}, ["search.space: unknown space 'cmkd_rsst'", "cmkd_rst_ratio",
                           "did you mean 'cmkd_rst'"]),
        ("cmkd_rst_ratio", {"rst_ratio": 1.5}, ["rst_ratio: ", "must be in (0, 1]"]),
        ("cmkd_rst_ratio", {"rst_ratio": {"low": 0.0}}, ["rst_ratio.low: ", "(0, 1]"]),
        ("cmkd_fixmatch", {"fixmatch_threshold": 1.0}, ["fixmatch_threshold: ", "in (0, 1)"]),
        ("cmkd_fixmatch", {"fixmatch_threshold": [0.8, 0.0]}, ["fixmatch_threshold[1]: "]),
        ("cmkd", {"lr_multiplier": []}, ["lr_multiplier: the choice list is empty"]),
        ("cmkd", {"lr_multiplier": [1000, 1e3]}, ["lr_multiplier: the choice list", "repeats"]),
        ("cmkd", {"lambda1": "a lot"}, ["lambda1: expected a number", "'a lot'"]),
        ("cmkd", {"lambda1": {"high": "big"}}, ["lambda1.high: expected a number"]),
        ("cmkd", {"lambda1": True}, ["lambda1: expected a number"]),
        ("cmkd", {"lambda1": {"low": 0}}, ["lambda1.low: a log-scale range", "log: false"]),
        ("cmkd", {"lambda2": {"low": 0.1, "log": True}}, []),  # positive low: fine
        ("cmkd", {"lambda2": {"log": True}}, ["lambda2.low: a log-scale range"]),
        ("cmkd", {"lambda2": {"log": "yes"}}, ["lambda2.log: expected true or false"]),
        ("cmkd", {"lambda2": {"lo": 0.1}}, ["lambda2.lo: unknown field"]),
        ("cmkd", {"lr": {"low": 0.0, "high": 1e-6, "log": False}}, ["lr.low: ", "> 0"]),
        ("cmkd", {"lambda3": -0.1}, ["lambda3: a loss weight must be >= 0"]),
        ("cmkd", {"rst_ratio": 0.01}, ["rst_ratio: unknown parameter", "cmkd_rst_ratio"]),
        ("cmkd_rst", {"rst_threshold": 1e-6}, ["rst_threshold_over_lr * lr"]),
        ("cmkd", ["lr"], ["search.space_overrides: expected a mapping"]),
    ],
)
def test_each_validation_rule_names_its_key(
    space: str, overrides: Any, expected: list[str]
) -> None:
    if not expected:
        build_space(space, overrides)
        return
    with pytest.raises(ConfigError) as info:
        build_space(space, overrides)
    message = str(info.value)
    assert len(info.value.problems) == 1
    for fragment in expected:
        assert fragment in message


def test_an_unknown_space_still_checks_the_overrides() -> None:
    with pytest.raises(ConfigError) as info:
        build_space("nope", {"lr": -1.0, "lr_multplier": 10})
    assert len(info.value.problems) == 3


def test_defaults_point_converts_the_papers_tau_and_skips_fixed_dimensions() -> None:
    space = build_space("cmkd_rst_fixmatch", {"label_smoothing": 0.1})
    point = space.defaults_point(PAPER_DEFAULTS)
    assert set(point) == {d.name for d in space.searched}
    assert "label_smoothing" not in point and "rst_threshold" not in point
    assert point["rst_threshold_over_lr"] == pytest.approx(1e-6 / 3e-6)
    assert point["lr_multiplier"] == 1000.0


def test_defaults_point_leaves_out_what_the_defaults_do_not_state() -> None:
    point = SPACES["cmkd_rst_ratio"].defaults_point(PAPER_DEFAULTS)
    assert "rst_ratio" not in point and set(point) == set(CMKD)


def test_defaults_outside_the_bounds_raise_naming_each_key() -> None:
    space = build_space("cmkd_rst", {"lr": {"low": 1e-5, "high": 1e-4}})
    defaults = {**PAPER_DEFAULTS, "lr_multiplier": 1e5, "lambda2": "lots"}
    with pytest.raises(ConfigError) as info:
        space.defaults_point(defaults, source="preset.yaml")
    message = str(info.value)
    assert len(info.value.problems) == 3
    assert "lr: the default 3e-06 lies outside" in message
    assert "lr_multiplier: the default 100000.0 lies outside" in message
    assert "widen the bound in search.space_overrides.lr_multiplier" in message
    assert "lambda2: expected a number" in message
    # tau / lr = 1e-6 / 3e-6 is inside; it is the lr that is out, reported once above
    assert "rst_threshold_over_lr (rst_threshold 1e-06 / lr 3e-06)" not in message
    assert "label_smoothing" not in message


def test_defaults_point_picks_the_matching_choice() -> None:
    space = build_space("cmkd", {"lr_multiplier": [100, 1000]})
    assert space.defaults_point({"lr_multiplier": "1e3"}) == {"lr_multiplier": 1000.0}
    with pytest.raises(ConfigError, match="lr_multiplier: the default 10000"):
        space.defaults_point({"lr_multiplier": 10000})


@pytest.mark.parametrize("name", ["cmkd_rst_fixmatch", "cmkd_rst_ratio"])
def test_the_first_trial_carries_the_enqueued_paper_defaults(name: str) -> None:
    space = SPACES[name]
    point = space.defaults_point({**PAPER_DEFAULTS, "rst_ratio": 2e-3})
    study = two_objective_study()
    study.enqueue_trial(point)
    first = study.ask()
    config = space(first)
    assert first.params == point
    for key, value in point.items():
        assert config[key] == value
    if "rst_threshold" in config:
        assert config["rst_threshold"] == pytest.approx(1e-6)
    study.tell(first, [0.8, 1e5])
    second = space(study.ask())  # afterwards the sampler takes over
    assert set(second) == set(config)


def test_optuna_distributions_can_seed_a_study_with_a_finished_trial() -> None:
    space = SPACES["cmkd_rst"]
    point = space.defaults_point(PAPER_DEFAULTS)
    study = two_objective_study()
    study.add_trial(
        optuna.trial.create_trial(
            params=point, distributions=space.optuna_distributions(), values=[0.87, 35_328]
        )
    )
    assert study.best_trials[0].params == point
    assert space(study.ask()).keys() >= set(point)


def test_a_space_survives_pickling() -> None:
    # Ray snapshots the searcher, space included, with plain pickle.
    space = build_space("cmkd_rst", {"lambda2": 0.1, "lr_multiplier": [1e3, 1e4]})
    clone = pickle.loads(pickle.dumps(space))
    assert clone == space and clone.constants == space.constants


def test_space_is_a_frozen_value() -> None:
    space = SPACES["cmkd"]
    with pytest.raises(AttributeError):
        space.name = "other"  # type: ignore[misc]
    assert isinstance(hash(space), int)
    assert isinstance(space, SearchSpace)


def test_the_space_drives_rays_optuna_search_without_starting_ray(tmp_path: Path) -> None:
    # OptunaSearch.suggest runs in the driver process: no ray.init, no trials launched.
    from ray.tune.search.optuna import OptunaSearch

    space = SPACES["cmkd_rst_fixmatch"]
    point = space.defaults_point(PAPER_DEFAULTS)
    searcher = OptunaSearch(
        space=space,
        metric=["target_acc", "stored_params"],
        mode=["max", "min"],
        points_to_evaluate=[point],
        seed=0,
    )
    first = searcher.suggest("t1")
    expected_keys = {*space.names, *space.constants, "rst_threshold"}
    assert set(first) == expected_keys
    assert {k: first[k] for k in point} == point
    assert first["rst_threshold"] == pytest.approx(1e-6)
    assert first["rst_mode"] == "threshold" and first["fixmatch"] is True
    searcher.on_trial_complete("t1", {"target_acc": 0.87, "stored_params": 35_328})
    second = searcher.suggest("t2")
    assert set(second) == expected_keys
    assert math.isclose(second["rst_threshold"], second["rst_threshold_over_lr"] * second["lr"])
    # The searcher checkpoints with plain pickle; the space must come back with it.
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch(metric=["target_acc", "stored_params"], mode=["max", "min"])
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert set(restored.suggest("t3")) == expected_keys
