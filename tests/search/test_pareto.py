"""Pareto ranks, front and 2-d hypervolume against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vlpuda.front.pareto import (
    default_reference,
    hypervolume_2d,
    hypervolume_history,
    non_dominated_ranks,
    pareto_front_mask,
)

MIN_MIN = ("minimize", "minimize")
ACC_STORED = ("maximize", "minimize")

# A three-step staircase under the reference (4, 4), both minimised. Column by column:
# x in [1, 2) is covered for y in [3, 4] (area 1), x in [2, 3) for y in [2, 4] (area 2),
# x in [3, 4) for y in [1, 4] (area 3): 1 + 2 + 3 = 6.
STAIRCASE = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
STAIRCASE_AREA = 6.0


def test_single_point_is_the_front_and_spans_a_rectangle() -> None:
    values = [[0.8, 100.0]]
    assert non_dominated_ranks(values, ACC_STORED).tolist() == [0]
    assert pareto_front_mask(values, ACC_STORED).tolist() == [True]
    # accuracy 0 .. 0.8 times stored params 100 .. 200
    assert hypervolume_2d(values, ACC_STORED, (0.0, 200.0)) == pytest.approx(80.0)


def test_tie_in_one_objective_the_better_other_objective_dominates() -> None:
    assert non_dominated_ranks([[1.0, 2.0], [1.0, 3.0]], MIN_MIN).tolist() == [0, 1]
    assert non_dominated_ranks([[2.0, 2.0], [1.0, 2.0]], MIN_MIN).tolist() == [1, 0]
    # Only the better of the two tied points bounds area: (4 - 1) * (4 - 2) = 6.
    assert hypervolume_2d([[1.0, 3.0], [1.0, 2.0]], MIN_MIN, (4.0, 4.0)) == pytest.approx(6.0)


def test_exact_duplicates_share_a_rank_and_add_no_area() -> None:
    values = [[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0]]
    assert non_dominated_ranks(values, MIN_MIN).tolist() == [0, 0, 0, 1]
    assert pareto_front_mask(values, MIN_MIN).tolist() == [True, True, True, False]
    # Rectangles [1,4]x[2,4] (6) and [2,4]x[1,4] (6) overlap in [2,4]x[2,4] (4): 8.
    assert hypervolume_2d(values, MIN_MIN, (4.0, 4.0)) == pytest.approx(8.0)


def test_dominated_point_is_off_the_front() -> None:
    values = [[1.0, 1.0], [2.0, 2.0]]
    assert non_dominated_ranks(values, MIN_MIN).tolist() == [0, 1]
    assert pareto_front_mask(values, MIN_MIN).tolist() == [True, False]


def test_mixed_directions_accuracy_up_stored_down() -> None:
    # (0.7, 200) is dominated by (0.8, 100): less accurate and larger.
    values = [[0.9, 300.0], [0.8, 100.0], [0.7, 200.0]]
    assert non_dominated_ranks(values, ACC_STORED).tolist() == [0, 0, 1]
    # Reference (acc 0, stored 400). (0.8, 100) covers acc [0, 0.8] x stored [100, 400] = 240;
    # (0.9, 300) adds acc (0.8, 0.9] x stored [300, 400] = 10; (0.7, 200) lies inside: 250.
    assert hypervolume_2d(values, ACC_STORED, (0.0, 400.0)) == pytest.approx(250.0)


def test_ray_mode_spellings_are_accepted() -> None:
    values = [[0.9, 300.0], [0.8, 100.0], [0.7, 200.0]]
    assert non_dominated_ranks(values, ("max", "min")).tolist() == [0, 0, 1]
    assert hypervolume_2d(values, ("max", "min"), (0.0, 400.0)) == pytest.approx(250.0)


@pytest.mark.parametrize("empty", [[], np.empty((0, 2))])
def test_empty_input(empty: list | np.ndarray) -> None:
    assert non_dominated_ranks(empty, MIN_MIN).shape == (0,)
    assert pareto_front_mask(empty, MIN_MIN).shape == (0,)
    assert hypervolume_2d(empty, MIN_MIN, (1.0, 1.0)) == 0.0
    assert hypervolume_history(empty, MIN_MIN, (1.0, 1.0)).shape == (0,)


def test_points_beyond_or_on_the_reference_contribute_nothing() -> None:
    reference = (4.0, 4.0)
    assert hypervolume_2d([[5.0, 1.0]], MIN_MIN, reference) == 0.0
    assert hypervolume_2d([[4.0, 1.0]], MIN_MIN, reference) == 0.0  # on the boundary: no width
    assert hypervolume_2d([[1.0, 4.0]], MIN_MIN, reference) == 0.0
    # Only (1, 3) counts: (4 - 1) * (4 - 3) = 3.
    assert hypervolume_2d([[5.0, 1.0], [1.0, 3.0]], MIN_MIN, reference) == pytest.approx(3.0)
    # Accuracy below the reference's 0.5 is "beyond" it too.
    assert hypervolume_2d([[0.4, 10.0]], ACC_STORED, (0.5, 100.0)) == 0.0


def test_hypervolume_of_a_staircase() -> None:
    assert hypervolume_2d(STAIRCASE, MIN_MIN, (4.0, 4.0)) == pytest.approx(STAIRCASE_AREA)


def test_hypervolume_ignores_input_order() -> None:
    for order in itertools.permutations(range(3)):
        shuffled = [STAIRCASE[i] for i in order]
        assert hypervolume_2d(shuffled, MIN_MIN, (4.0, 4.0)) == pytest.approx(STAIRCASE_AREA)


@pytest.mark.parametrize("dominated", [[3.0, 3.0], [2.0, 3.0], [3.5, 1.0], [3.0, 1.5]])
def test_adding_a_dominated_point_keeps_the_hypervolume(dominated: list[float]) -> None:
    values = [*STAIRCASE, dominated]
    assert hypervolume_2d(values, MIN_MIN, (4.0, 4.0)) == pytest.approx(STAIRCASE_AREA)


def test_hypervolume_with_maximised_objectives_matches_the_mirror_image() -> None:
    mirrored = [[-x, -y] for x, y in STAIRCASE]
    area = hypervolume_2d(mirrored, ("maximize", "maximize"), (-4.0, -4.0))
    assert area == pytest.approx(STAIRCASE_AREA)


def test_rank_layers() -> None:
    values = [
        [1.0, 4.0], [2.0, 2.0], [4.0, 1.0],  # the front
        [2.0, 4.0], [3.0, 3.0],  # dominated only by the front
        [4.0, 4.0],  # dominated by (3, 3) and (2, 4)
        [5.0, 5.0],  # dominated by (4, 4)
    ]  # fmt: skip
    assert non_dominated_ranks(values, MIN_MIN).tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert non_dominated_ranks(values, MIN_MIN).dtype == np.int64


def test_ranks_match_a_brute_force_definition() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=(40, 2)).astype(float)  # small ints: many ties and copies
    remaining = set(range(len(values)))
    expected = np.full(len(values), -1)
    rank = 0
    while remaining:
        front = {
            i for i in remaining
            if not any(
                (values[j] <= values[i]).all() and (values[j] < values[i]).any()
                for j in remaining
            )
        }  # fmt: skip
        expected[list(front)] = rank
        remaining -= front
        rank += 1
    assert non_dominated_ranks(values, MIN_MIN).tolist() == expected.tolist()


def test_hypervolume_history_grows_step_by_step() -> None:
    # (2,2): 2*2 = 4; + (1,3) adds [1,2]x[3,4] = 1 -> 5; + (3,1) adds [3,4]x[1,2] = 1 -> 6;
    # + (3,3), dominated: still 6.
    values = [[2.0, 2.0], [1.0, 3.0], [3.0, 1.0], [3.0, 3.0]]
    history = hypervolume_history(values, MIN_MIN, (4.0, 4.0))
    assert history.tolist() == pytest.approx([4.0, 5.0, 6.0, 6.0])


def test_default_reference_is_zero_accuracy_and_a_tenth_above_the_largest_model() -> None:
    values = [[0.8, 100.0], [0.9, 300.0]]
    reference = default_reference(values, ACC_STORED)
    assert reference == pytest.approx((0.0, 330.0))
    assert all(isinstance(r, float) for r in reference)
    # Every point is strictly better than it, so each one counts.
    assert hypervolume_2d(values, ACC_STORED, reference) > 0.9 * 30.0


def test_default_reference_for_non_positive_values() -> None:
    # maximise with a negative worst: a tenth below it; minimise with worst 0: 1 above it.
    assert default_reference([[-2.0, 0.0], [1.0, -5.0]], ACC_STORED) == pytest.approx((-2.2, 1.0))
    assert default_reference([[0.0, -10.0]], ACC_STORED) == pytest.approx((-1.0, -9.0))


def test_default_reference_needs_a_point() -> None:
    with pytest.raises(ValueError, match="at least one point"):
        default_reference([], ACC_STORED)


@pytest.mark.parametrize(
    ("values", "directions", "match"),
    [
        ([[1.0, 2.0]], ("maximize", "up"), "directions"),
        ([[1.0, 2.0, 3.0]], MIN_MIN, "shape"),
        ([1.0, 2.0], MIN_MIN, "shape"),
        ([[1.0, float("nan")]], MIN_MIN, "NaN"),
    ],
)
def test_bad_input_is_refused(values: list, directions: tuple[str, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        non_dominated_ranks(values, directions)


def test_hypervolume_needs_two_objectives() -> None:
    with pytest.raises(ValueError, match="two"):
        hypervolume_2d([[1.0, 2.0, 3.0]], ("minimize",) * 3, (4.0, 4.0, 4.0))
