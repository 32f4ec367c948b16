"""MOASHA's rung rule on hand-built rungs, its state round trip, retries and replayed epochs.

Vectors in the pure-function tests are already in minimisation form (column 0: -accuracy,
column 1: log10 stored parameters), so dominance can be read off by eye.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from vlpuda.search.moasha import MOASHAScheduler, SchedulerState, stop_reason
from vlpuda.search.rungs import (
    epsilon_net_order,
    kept_at_rung,
    pareto_order,
    rung_decision,
    rung_levels,
    signed_vector,
)

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def test_rung_levels_stop_below_max_t_and_survive_float_powers():
    assert rung_levels(5, 3, 20) == [5, 15]
    assert rung_levels(1, 10, 1000) == [1, 10, 100]  # 10 ** 3 in floats is 999.99...
    assert rung_levels(1, 3, 3) == [1]
    assert rung_levels(4, 2, 4) == []  # a rung at max_t decides nothing


def test_kept_at_rung_is_floor_n_over_eta_plus_one():
    assert [kept_at_rung(n, 3) for n in range(1, 10)] == [1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert [kept_at_rung(n, 2) for n in range(1, 6)] == [1, 2, 2, 3, 3]


def test_signed_vector_flips_max_and_logs_storage():
    assert signed_vector([90.0, 1000.0], ["max", "min"], [False, True]) == (-90.0, 3.0)
    assert signed_vector([90.0, None], ["max", "min"], [False, True]) is None
    assert signed_vector([float("nan"), 10.0], ["max", "min"], [False, True]) is None
    assert signed_vector([90.0, 0.0], ["max", "min"], [False, True]) is None


def test_epsilon_net_starts_at_best_first_objective_then_goes_farthest():
    # Best column 0 is row 2; farthest from it row 0 (1.41); then row 1 (0.57 from row 0)
    # before row 3 (0.35 from row 2).
    points = np.array([[1.0, 0.0], [0.6, 0.4], [0.0, 1.0], [0.25, 0.75]])
    assert epsilon_net_order(points) == [2, 0, 1, 3]
    # Equal distances (rows 1 and 2 both sqrt 2 from row 0): the earlier row wins.
    assert epsilon_net_order(np.array([[0.0, 0.0], [1.0, 1.0], [1.0, -1.0]])) == [0, 1, 2]


def test_pareto_order_puts_fronts_in_turn():
    # 0 and 1 form the front; 2 is dominated by 1; 3 dominated by everything.
    vectors = [(-90.0, 5.0), (-80.0, 3.0), (-79.0, 4.0), (-70.0, 6.0)]
    order, fronts = pareto_order(vectors)
    assert fronts == [0, 0, 1, 2]
    assert order == [0, 1, 2, 3]


def test_a_dominated_trial_is_stopped():
    recorded = [(-90.0, 5.0), (-85.0, 4.0)]
    continues, position, n, front = rung_decision(recorded, (-80.0, 6.0), 3)
    assert (continues, position, n, front) == (False, 2, 3, 1)


def test_a_sparse_front_trial_survives_where_the_accurate_dense_one_is_kept_too():
    # Five trials, all denser and more accurate than the new one, which is the front's sparse
    # end. ASHA on accuracy would stop it (last of six); MOASHA keeps both extremes.
    recorded = [(-90.0, 6.0), (-89.0, 6.1), (-88.0, 6.2), (-87.0, 6.3), (-86.0, 6.4)]
    continues, position, n, front = rung_decision(recorded, (-70.0, 3.0), 3)
    assert continues and front == 0 and n == 6
    assert position == 1  # right after the most accurate one
    order, _ = pareto_order([*recorded, (-70.0, 3.0)])
    assert order[:2] == [0, 5]  # the accurate dense end is kept as well


def test_ties_share_a_front_and_go_in_recording_order():
    recorded = [(-80.0, 4.0), (-80.0, 4.0)]
    continues, position, n, front = rung_decision(recorded, (-80.0, 4.0), 3)
    # Three identical vectors: one front; the new one is last (recorded ones first); N = 3
    # keeps 2.
    assert (continues, position, n, front) == (False, 2, 3, 0)


def test_fewer_trials_than_the_reduction_factor():
    # The first arrival always continues; the second is kept only if it ranks first.
    assert rung_decision([], (-50.0, 9.0), 4)[0]
    assert not rung_decision([(-90.0, 5.0)], (-80.0, 6.0), 4)[0]
    better = rung_decision([(-80.0, 6.0)], (-90.0, 5.0), 4)
    assert better[0] and better[1] == 0
    # Two non-dominated: the more accurate one is ranked first, so a sparser second stops.
    assert not rung_decision([(-90.0, 6.0)], (-80.0, 3.0), 4)[0]


def _scheduler(**kw) -> MOASHAScheduler:
    return MOASHAScheduler(("target_acc", "stored_params"), ("max", "min"),
                           max_t=kw.get("max_t", 9), grace_period=kw.get("grace", 1),
                           reduction_factor=kw.get("eta", 3))


def _result(epoch: int, acc: float, stored: float) -> dict:
    return {"epoch": epoch, "target_acc": acc, "stored_params": stored,
            "training_iteration": epoch}


def test_decisions_depend_on_arrival_order_and_are_final():
    # Rung 1 (eta 3): a, b, c arrive; a first continues; b dominated by a, N=2 keeps 1: stops.
    s = _scheduler()
    assert s.decide("a", _result(1, 90, 1e5)) == CONTINUE
    assert s.decide("b", _result(1, 80, 2e5)) == STOP
    assert s.decide("c", _result(1, 85, 1e4)) == CONTINUE  # N=3 keeps 2; c is on the front
    # The other order: b first continues (a rung's first arrival always does).
    t = _scheduler()
    assert t.decide("b", _result(1, 80, 2e5)) == CONTINUE
    assert t.decide("a", _result(1, 90, 1e5)) == CONTINUE
    assert t.decide("c", _result(1, 85, 1e4)) == CONTINUE
    # Below the first rung and between rungs nothing is judged.
    assert t.decide("a", _result(2, 10, 1e9)) == CONTINUE
    assert s.stop_log["b"]["rung"] == 1 and s.stop_log["b"]["position"] == 2
    assert stop_reason(s.stop_log["b"]).startswith("moasha rung 1: 2nd of 2")


def test_a_replayed_or_repeated_epoch_is_counted_once():
    s = _scheduler()
    assert s.decide("a", _result(1, 90, 1e5)) == CONTINUE
    assert s.decide("a", _result(1, 10, 1e9)) == CONTINUE  # the same epoch reported again
    assert s.rungs[1] == {"a": [-90.0, 5.0]}  # first record kept
    assert s.decide("b", _result(1, 80, 2e5)) == STOP
    # A retried trial: Tune's iteration restarts at 1, its epochs resume from a checkpoint at 1.
    s.decide("a", _result(2, 91, 1e5))
    replay = {**_result(2, 50, 1e9), "training_iteration": 1}
    assert s.decide("a", replay) == CONTINUE
    assert s.last_epoch["a"] == 2 and len(s.rungs[1]) == 2


def test_a_retried_trial_is_ranked_by_its_epochs_not_tune_iterations():
    s = _scheduler(grace=3)  # rungs 3 (and 9 = max_t)
    for e in (1, 2, 3):
        s.decide("a", _result(e, 90, 1e5))
    # "b" is retried after epoch 2: Tune restarts its iterations at 1, epochs continue at 3.
    s.decide("b", _result(1, 70, 1e6))
    s.decide("b", _result(2, 70, 1e6))
    retried = {**_result(3, 70, 1e6), "training_iteration": 1}
    assert s.decide("b", retried) == STOP  # judged at rung 3, on its 3 epochs
    assert set(s.rungs[3]) == {"a", "b"}


def test_a_trial_past_a_rung_it_never_reported_is_not_judged_there():
    s = _scheduler(grace=3)
    s.decide("a", _result(3, 90, 1e5))
    assert s.decide("b", _result(4, 10, 1e9)) == CONTINUE  # skipped rung 3 (older snapshot)
    assert s.skipped["b"] == [3] and "b" not in s.rungs[3]


def test_state_round_trip_keeps_rungs_and_decisions(tmp_path):
    s = _scheduler()
    s.decide("a", _result(1, 90, 1e5))
    s.decide("b", _result(1, 80, 2e5))
    s.decide("c", _result(3, 85, 1e4))
    path = tmp_path / "moasha.json"
    s.save(str(path))
    json.loads(path.read_text())  # plain JSON, never a pickle
    restored = _scheduler()
    restored.restore(str(path))
    assert restored.state_dict() == s.state_dict()
    # The restored one decides as the original would: a replay of a is ignored, d is judged
    # against a and b at rung 1.
    assert restored.decide("a", _result(1, 0, 1e9)) == CONTINUE
    assert restored.decide("d", _result(1, 70, 3e5)) == s.decide("d", _result(1, 70, 3e5))
    # Through the Tune callback that carries it in the experiment checkpoint.
    carrier = SchedulerState(_scheduler())
    carrier.set_state(json.loads(json.dumps(SchedulerState(s).get_state())))
    assert carrier.scheduler.state_dict() == s.state_dict()


def test_state_of_other_parameters_is_refused():
    state = _scheduler(eta=3).state_dict()
    with pytest.raises(ValueError, match="cannot restore"):
        _scheduler(eta=2).load_state_dict(state)


def test_set_search_properties_accepts_no_metric_or_the_first_objective():
    s = _scheduler()
    assert s.set_search_properties(None, None)
    assert s.set_search_properties("target_acc", "max")
    assert not s.set_search_properties("proxy_im", "max")


def test_missing_objectives_continue_unranked():
    s = _scheduler()
    assert s.decide("a", {"epoch": 1, "target_acc": math.nan, "stored_params": 5}) == CONTINUE
    assert s.rungs[1] == {}
