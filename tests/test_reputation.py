"""The adapted Elo update (SPARTA.md, "The reputation update (adapted Elo)"), worked by hand.

Constants used throughout (the defaults): K0 = 10, K_min = 5, decay = 0.9, steps = 10, S = 20,
eps = 0.01, floor = 10, W = 10, sigma_min = 0.1.  tanh(0.5) = 0.4621171573.
"""

import json
import math
import statistics

import pytest

from sparta.arena.reputation import (
    EloParams,
    ReputationState,
    apply_duel,
    initial_state,
)

P = EloParams()
TANH_HALF = 0.46211715726000974


def state_with(ratings: dict[str, float], sigmas: dict[str, float], n: int = 0) -> ReputationState:
    return ReputationState(
        ratings=dict(ratings), sigmas=dict(sigmas), changes={m: [] for m in ratings}, n_updates=n
    )


def test_equal_ratings_give_gap_eps_and_a_tiny_update():
    """R_a = R_b = 100, sigma = 0.5 each, scores 7.5 vs 5.0, n = 0.

    z    = 0 / sqrt(0.25 + 0.25) = 0
    Phi(0) - Phi(-0) = 0.5 - 0.5 = 0      -> gap = max(0, 0.01) = 0.01
    K    = max(5, 10 * 0.9^(0/10)) = 10
    tanh(0.5) = 0.4621171573
    dR_a = 10 * 2.5 * 0.4621171573 * 0.01 / 20 = 0.0057764645
    dR_b = -0.0057764645
    sigma after one change: pstdev([x]) = 0 -> floored to 0.1
    """
    st = initial_state(["a", "b"], P)
    up = apply_duel(st, "a", "b", 7.5, 5.0, P)
    assert up.gap == pytest.approx(0.01)
    assert up.k == pytest.approx(10.0)
    assert up.rating_a_after == pytest.approx(100 + 0.0057764645)
    assert up.rating_b_after == pytest.approx(100 - 0.0057764645)
    assert up.sigma_a_after == up.sigma_b_after == pytest.approx(0.1)
    assert st.n_updates == 1 and up.n_before == 0
    assert st.changes["a"] == [pytest.approx(0.0057764645)]


def test_distant_ratings_give_gap_one():
    """R_a = 120, R_b = 100, sigma = 0.5 each, scores 7.5 vs 5.0, n = 0.

    z    = 20 / sqrt(0.5) = 28.284
    Phi(28.28) - Phi(-28.28) = 1 - 0 = 1  -> gap = 1
    K    = 10
    dR_a = 10 * 2.5 * 0.4621171573 * 1 / 20 = 0.5776464466   -> R_a = 120.5776464466
    dR_b = -0.5776464466                                      -> R_b =  99.4223535534
    """
    st = state_with({"a": 120.0, "b": 100.0}, {"a": 0.5, "b": 0.5})
    up = apply_duel(st, "a", "b", 7.5, 5.0, P)
    assert up.gap == pytest.approx(1.0)
    assert up.rating_a_after == pytest.approx(120.5776464466)
    assert up.rating_b_after == pytest.approx(99.4223535534)
    assert st.ratings == {"a": up.rating_a_after, "b": up.rating_b_after}


def test_close_ratings_give_an_intermediate_gap():
    """R_a = 100.5, R_b = 100, sigma = 0.5 each, scores 7.5 vs 5.0, n = 0.

    z    = 0.5 / sqrt(0.5) = 0.7071067812
    Phi(z) - Phi(-z) = erf(z / sqrt 2) = erf(0.5) = 0.5204998778   -> gap
    K    = 10
    dR_a = 10 * 2.5 * 0.4621171573 * 0.5204998778 / 20 = 0.3006649049
    dR_b = -0.3006649049
    """
    st = state_with({"a": 100.5, "b": 100.0}, {"a": 0.5, "b": 0.5})
    up = apply_duel(st, "a", "b", 7.5, 5.0, P)
    assert up.gap == pytest.approx(0.5204998778)
    assert up.rating_a_after == pytest.approx(100.5 + 0.3006649049)
    assert up.rating_b_after == pytest.approx(100.0 - 0.3006649049)


@pytest.mark.parametrize(
    "n, k",
    [
        (0, 10.0),  # 10 * 0.9^0
        (5, 9.4868329805),  # 10 * 0.9^0.5: a real exponent, not 5 // 10 = 0
        (20, 8.1),  # 10 * 0.9^2
        (65, 5.0416920060),  # 10 * 0.9^6.5, still above K_min
        (70, 5.0),  # 10 * 0.9^7 = 4.783 -> K_min
        (1000, 5.0),  # 10 * 0.9^100 ~ 0 -> K_min
    ],
)
def test_k_decays_with_the_global_counter_and_is_floored(n, k):
    """K = max(5, 10 * 0.9^(n/10)); at n = 20 the duel of case (b) moves by 8.1/10 as much.

    n = 20, R_a = 120, R_b = 100 (gap = 1): dR_a = 8.1 * 2.5 * 0.4621171573 / 20 = 0.4678936217
    """
    st = state_with({"a": 120.0, "b": 100.0}, {"a": 0.5, "b": 0.5}, n=n)
    up = apply_duel(st, "a", "b", 7.5, 5.0, P)
    assert up.k == pytest.approx(k)
    assert up.n_before == n and st.n_updates == n + 1
    assert up.rating_a_after - 120.0 == pytest.approx(k * 2.5 * TANH_HALF / 20)
    if n == 20:
        assert up.rating_a_after == pytest.approx(120.4678936217)


def test_rating_floor_is_respected_and_the_applied_change_recorded():
    """R_a = 100 (sigma 0.5), R_b = 12 (sigma 3), scores 10 vs 1, n = 0.

    z    = 88 / sqrt(0.25 + 9) = 28.93  -> gap = 1;  K = 10;  tanh(3) = 0.9950547537
    dR_b = 10 * (1 - 10) * 0.9950547537 * 1 / 20 = -4.4777463916 -> 12 - 4.478 = 7.522
    R_b  = max(10, 7.522) = 10, so the applied change is 10 - 12 = -2
    dR_a = 10 * 9 * 0.4621171573 / 20 = 2.0795272077
    """
    st = state_with({"a": 100.0, "b": 12.0}, {"a": 0.5, "b": 3.0})
    up = apply_duel(st, "a", "b", 10.0, 1.0, P)
    assert up.rating_b_after == 10.0 and st.ratings["b"] == 10.0
    assert st.changes["b"] == [pytest.approx(-2.0)]
    assert up.rating_a_after == pytest.approx(102.0795272077)
    # Already at the floor: further losses change nothing, and the recorded change is 0.
    apply_duel(st, "a", "b", 10.0, 1.0, P)
    assert st.ratings["b"] == 10.0
    assert st.changes["b"][-1] == 0.0


def test_sigma_is_pstdev_of_the_last_window_applied_changes():
    members = ["a", "b", "c"]
    st = initial_state(members, P)
    applied: dict[str, list[float]] = {m: [] for m in members}
    duels = [("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")] * 6  # a plays 18 times
    for i, (x, y) in enumerate(duels):
        before = dict(st.ratings)
        apply_duel(st, x, y, 1.0 + (i * 7) % 9, 1.0 + (i * 4) % 9, P)
        for m in (x, y):
            applied[m].append(st.ratings[m] - before[m])
    for m in members:
        last = applied[m][-P.window :]
        assert len(st.changes[m]) == P.window
        assert st.changes[m] == pytest.approx(last)
        assert st.sigmas[m] == pytest.approx(max(P.sigma_min, statistics.pstdev(last)))
    assert any(st.sigmas[m] > P.sigma_min for m in members)  # the window is not trivially floored


def test_sigma_is_floored_at_sigma_min():
    """A near-constant history has pstdev ~0, so sigma falls to sigma_min; the window truncates."""
    st = state_with({"a": 100.0, "b": 100.0}, {"a": 0.5, "b": 0.5})
    st.changes["a"] = [0.001, 0.001]
    st.sigmas["a"] = 0.1
    # Tie (5 vs 5): both deltas are 0, so the history becomes [0.001, 0.001, 0.0] -> pstdev 0.00047
    apply_duel(st, "a", "b", 5.0, 5.0, P)
    assert st.sigmas["a"] == 0.1
    small = EloParams(window=2, sigma_min=1e-6)
    apply_duel(st, "a", "b", 5.0, 5.0, small)
    assert st.changes["a"] == [0.0, 0.0] and st.sigmas["a"] == 1e-6


def test_b_update_uses_a_pre_duel_rating():
    """The ordering bug of the authors' script: b's delta computed after R_a has moved.

    Case (close ratings) above: R_a = 100.5, R_b = 100, sigma 0.5 each, scores 7.5 vs 5.0.
    Correct: both use gap = erf(0.5) = 0.5204998778, so dR_b = -dR_a = -0.3006649049.
    Buggy:   R_a' = 100.8006649049, z = 0.8006649049 / sqrt(0.5) = 1.1323,
             gap = erf(0.8006649049) = 0.7424963632, dR_b = -10 * 2.5 * 0.4621 * 0.7425 / 20
             = -0.4289003858.
    """
    st = state_with({"a": 100.5, "b": 100.0}, {"a": 0.5, "b": 0.5})
    up = apply_duel(st, "a", "b", 7.5, 5.0, P)
    delta_b = up.rating_b_after - up.rating_b_before
    assert delta_b == pytest.approx(-0.3006649049)
    assert delta_b != pytest.approx(-0.4289003858)
    # Equal sigmas and pre-duel inputs make the update antisymmetric.
    assert delta_b == pytest.approx(-(up.rating_a_after - up.rating_a_before))
    # And the order of the arguments does not matter.
    st2 = state_with({"a": 100.5, "b": 100.0}, {"a": 0.5, "b": 0.5})
    apply_duel(st2, "b", "a", 5.0, 7.5, P)
    assert st2.ratings == pytest.approx(st.ratings)
    assert st2.sigmas == pytest.approx(st.sigmas)


def test_state_round_trips_through_json():
    st = initial_state(["a", "b", "c"], P)
    for x, y, sx, sy in [("a", "b", 8, 3), ("b", "c", 2, 9), ("c", "a", 6.5, 6.0)]:
        apply_duel(st, x, y, sx, sy, P)
    back = ReputationState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back == st
    cp = st.copy()
    assert cp == st
    apply_duel(cp, "a", "b", 9, 1, P)
    assert cp != st  # a copy shares no mutable state
    assert st.changes["a"] != cp.changes["a"]


def test_initial_state_fair_and_from_accuracies():
    fair = initial_state(["a", "b"], P)
    assert fair.ratings == {"a": 100.0, "b": 100.0}
    assert fair.sigmas == {"a": 0.5, "b": 0.5}
    assert fair.changes == {"a": [], "b": []} and fair.n_updates == 0

    acc = {"a": 0.31, "b": 0.52, "c": 0.47, "d": 0.66, "e": 0.20}
    st = initial_state(list(acc), P, accuracies=acc)
    assert statistics.fmean(st.ratings.values()) == pytest.approx(100.0)
    assert statistics.pstdev(st.ratings.values()) == pytest.approx(20.0)
    assert max(st.ratings, key=st.ratings.get) == "d" and min(st.ratings, key=st.ratings.get) == "e"

    # Two members, accuracies 0.2 and 0.4: mean 0.3, pstdev 0.1 -> z = -1, +1 -> 80, 120.
    two = initial_state(["x", "y"], P, accuracies={"x": 0.2, "y": 0.4})
    assert two.ratings == pytest.approx({"x": 80.0, "y": 120.0})

    same = initial_state(["a", "b", "c"], P, accuracies={"a": 0.5, "b": 0.5, "c": 0.5})
    assert same.ratings == {"a": 100.0, "b": 100.0, "c": 100.0}


def test_bad_inputs_raise():
    st = initial_state(["a", "b"], P)
    with pytest.raises(ValueError, match="itself"):
        apply_duel(st, "a", "a", 5, 6, P)
    with pytest.raises(ValueError, match="'zz'"):
        apply_duel(st, "a", "zz", 5, 6, P)
    with pytest.raises(ValueError, match="score_b"):
        apply_duel(st, "a", "b", 5, math.nan, P)
    with pytest.raises(ValueError, match=r"\['c'\]"):
        initial_state(["a", "b", "c"], P, accuracies={"a": 0.1, "b": 0.2})
    with pytest.raises(ValueError, match="duplicate"):
        initial_state(["a", "a"], P)
    with pytest.raises(ValueError, match="sigma_min"):
        EloParams(sigma_min=0.0)
    # Failed calls change nothing.
    assert st.n_updates == 0 and st.ratings == {"a": 100.0, "b": 100.0}


def test_accuracy_initialised_ratings_respect_the_floor():
    """initial_rating 30, floor 10, accuracies 0, 1, 1, 1 (mean 0.75, pstdev 0.4330127): the low member's z-score
    rating is 30 + 20 * (0 - 0.75) / 0.4330127 = 30 - 34.64 = -4.64, held at the floor, 10."""
    params = EloParams(initial_rating=30.0, floor=10.0)
    state = initial_state(list("abcd"), params, {"a": 0.0, "b": 1.0, "c": 1.0, "d": 1.0})
    assert state.ratings["a"] == 10.0
    assert state.ratings["b"] == pytest.approx(30 + 20 * 0.25 / 0.4330127, abs=1e-5)
