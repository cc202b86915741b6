"""Match-making (SPARTA.md, step 1a): block-shuffled leaders; alpha-uniform/k-nearest opponents."""

import random
from collections import Counter

import pytest

from sparta.arena.matchmaking import leader_order, pick_opponent, uniform_warning

# m = 10 members rated 100..109: from m0 the distances are 1..9, so its 3 nearest are m1, m2, m3.
RATINGS = {f"m{i}": 100.0 + i for i in range(10)}
NEAREST = {"m1", "m2", "m3"}
DRAWS = 20_000


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.5, 1.0])
def test_opponent_frequencies_match_alpha(alpha):
    """P(opponent outside the k nearest) = alpha * (m-1-k)/(m-1) = alpha * 6/9.

    Each of the 3 nearest: (1-alpha)/3 + alpha/9; each far member: alpha/9.
    With 20,000 draws the standard error is <= 0.0035, so 0.015 is > 4 standard errors.
    """
    rng = random.Random(1234)
    picks = Counter(pick_opponent("m0", RATINGS, alpha, 3, rng) for _ in range(DRAWS))
    assert "m0" not in picks
    outside = sum(c for name, c in picks.items() if name not in NEAREST) / DRAWS
    assert outside == pytest.approx(alpha * 6 / 9, abs=0.015)
    for name in NEAREST:
        assert picks[name] / DRAWS == pytest.approx((1 - alpha) / 3 + alpha / 9, abs=0.015)


# Three ratings of the same 10 members that give m0 different nearest neighbours: m1-m3, m7-m9, all tied.
NEAR_LOW = RATINGS
NEAR_HIGH = {"m0": 100.0, **{f"m{i}": 100.0 + 10 * (10 - i) for i in range(1, 10)}}
LEVEL = dict.fromkeys(RATINGS, 100.0)


def draws(ratings: dict[str, float], alpha: float, seed: int = 42) -> list[str]:
    """DRAWS opponents for leaders cycling through the pool, from one seeded generator."""
    rng, leaders = random.Random(seed), sorted(ratings)
    return [pick_opponent(leaders[n % len(leaders)], ratings, alpha, 3, rng) for n in range(DRAWS)]


def test_alpha_one_is_uniform_random_matching_whatever_the_ratings():
    """arena.alpha = 1, the paper's ablation without reputation-based match-making: seed for seed the same
    opponents whatever the ratings, each of the 9 others drawn 1/9 of the time (standard error 0.007 over
    the 2,000 draws per leader: 0.03 is > 4 of them)."""
    uniform = draws(NEAR_LOW, 1.0)
    assert draws(NEAR_HIGH, 1.0) == uniform and draws(LEVEL, 1.0) == uniform
    assert draws(NEAR_LOW, 0.2) != draws(NEAR_HIGH, 0.2)  # these ratings do change what reputation picks
    leaders = sorted(RATINGS)
    for i, leader in enumerate(leaders):
        picks = Counter(uniform[i :: len(leaders)])
        assert set(picks) == set(leaders) - {leader}
        for count in picks.values():
            assert count / (DRAWS / len(leaders)) == pytest.approx(1 / 9, abs=0.03)


def test_alpha_zero_always_picks_among_the_k_nearest():
    rng = random.Random(7)
    ratings = {f"m{i}": rng.uniform(50, 150) for i in range(12)}
    for leader, own in ratings.items():
        nearest = sorted((n for n in ratings if n != leader), key=lambda n: abs(ratings[n] - own))
        for _ in range(200):
            opp = pick_opponent(leader, ratings, 0.0, 4, rng)
            assert opp != leader and opp in nearest[:4]


def test_equal_ratings_tie_break_is_random():
    """All 6 at 100, alpha = 0, k = 3: every one of the 5 others is 'nearest' and equally likely.

    A tie-break by member order would only ever pick 3 of them.
    """
    ratings = {f"m{i}": 100.0 for i in range(6)}
    rng = random.Random(99)
    picks = Counter(pick_opponent("m0", ratings, 0.0, 3, rng) for _ in range(DRAWS))
    assert set(picks) == {"m1", "m2", "m3", "m4", "m5"}
    for c in picks.values():
        assert c / DRAWS == pytest.approx(1 / 5, abs=0.015)


def test_pick_is_reproducible_and_independent_of_dict_order():
    shuffled = dict(sorted(RATINGS.items(), key=lambda kv: -kv[1]))
    a = [pick_opponent("m4", RATINGS, 0.2, 3, random.Random(5)) for _ in range(50)]
    b = [pick_opponent("m4", shuffled, 0.2, 3, random.Random(5)) for _ in range(50)]
    assert a == b
    rng1, rng2 = random.Random(11), random.Random(11)
    assert [pick_opponent("m4", RATINGS, 0.2, 3, rng1) for _ in range(100)] == [
        pick_opponent("m4", RATINGS, 0.2, 3, rng2) for _ in range(100)
    ]


def test_leader_order_blocks_are_permutations():
    members = [f"m{i}" for i in range(7)]
    order = leader_order(members, 3 * len(members), random.Random(3))
    assert len(order) == 21
    assert Counter(order) == {m: 3 for m in members}
    for start in range(0, 21, 7):
        assert sorted(order[start : start + 7]) == sorted(members)
    assert order[:7] != order[7:14] or order[7:14] != order[14:]  # blocks shuffled independently


def test_leader_order_truncates_and_is_seeded():
    members = ["a", "b", "c", "d"]
    order = leader_order(members, 10, random.Random(0))
    assert len(order) == 10
    assert sorted(order[:4]) == sorted(order[4:8]) == members
    assert len(set(order[8:])) == 2  # a partial block never repeats a member
    assert order == leader_order(members, 10, random.Random(0))
    assert leader_order(members, 0, random.Random(0)) == []
    many = [tuple(leader_order(members, 4, random.Random(s))) for s in range(50)]
    assert len(set(many)) > 1  # the seed matters


@pytest.mark.parametrize(
    "m, k, warns",
    [
        (10, 3, False),
        (10, 8, False),
        (10, 9, True),
        (4, 3, True),
        (4, 10, True),
        (2, 1, True),
        (5, 1, False),
    ],
)
def test_uniform_warning_iff_k_at_least_m_minus_one(m, k, warns):
    msg = uniform_warning(m, k)
    assert (msg is not None) == warns
    if warns:
        assert "uniform" in msg


def test_bad_inputs_raise():
    rng = random.Random(0)
    with pytest.raises(ValueError, match=r"alpha.*1\.5"):
        pick_opponent("m0", RATINGS, 1.5, 3, rng)
    with pytest.raises(ValueError, match=r"alpha.*-0\.1"):
        pick_opponent("m0", RATINGS, -0.1, 3, rng)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        pick_opponent("m0", RATINGS, 0.2, 0, rng)
    with pytest.raises(ValueError, match="'zz'"):
        pick_opponent("zz", RATINGS, 0.2, 3, rng)
    with pytest.raises(ValueError, match="at least 2"):
        pick_opponent("m0", {"m0": 100.0}, 0.2, 3, rng)
    with pytest.raises(ValueError, match="at least 2"):
        leader_order(["solo"], 3, rng)
    with pytest.raises(ValueError, match="duplicate"):
        leader_order(["a", "a"], 3, rng)
    with pytest.raises(ValueError, match="n must be >= 0"):
        leader_order(["a", "b"], -1, rng)
    with pytest.raises(ValueError, match="m=1"):
        uniform_warning(1, 1)
    with pytest.raises(ValueError, match="got 0"):
        uniform_warning(10, 0)
