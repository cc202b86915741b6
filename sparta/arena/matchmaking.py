"""Match-making (SPARTA.md, "The loop", step 1a).

The leader of each duel comes from the pool shuffled in blocks of m, so every member leads equally
often. Its opponent is, with probability alpha, uniform among all other members; otherwise uniform
among the k others whose rating is closest to the leader's. With k >= m - 1 the second branch is
the whole pool and match-making is uniform random; `uniform_warning` says so.

All randomness comes from the `random.Random` passed in, so a seed fixes the schedule.
"""

from __future__ import annotations

import random


def leader_order(members: list[str], n: int, rng: random.Random) -> list[str]:
    """n leaders: independent shuffles of the pool, concatenated, truncated to n."""
    _check_pool(members)
    if n < 0:
        raise ValueError(f"leader_order: n must be >= 0, got {n}")
    order: list[str] = []
    while len(order) < n:
        block = list(members)
        rng.shuffle(block)
        order.extend(block)
    return order[:n]


def pick_opponent(
    leader: str, ratings: dict[str, float], alpha: float, k: int, rng: random.Random
) -> str:
    """Leader's opponent: uniform w.p. alpha, else uniform among its k nearest by rating."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"pick_opponent: alpha must be in [0, 1], got {alpha}")
    if k < 1:
        raise ValueError(f"pick_opponent: k must be >= 1, got {k}")
    _check_pool(list(ratings))
    if leader not in ratings:
        raise ValueError(f"pick_opponent: leader {leader!r} not in ratings {sorted(ratings)}")

    # Sorted first so the draw depends on the seed, not on the dict's insertion order.
    others = sorted(name for name in ratings if name != leader)
    if rng.random() < alpha:
        return rng.choice(others)
    # Shuffle before the (stable) sort so members at equal distance are tied at random,
    # not by name; otherwise the same member would always win the last of the k slots.
    rng.shuffle(others)
    own = ratings[leader]
    others.sort(key=lambda name: abs(ratings[name] - own))
    return rng.choice(others[:k])


def uniform_warning(m: int, k: int) -> str | None:
    """A message when k >= m - 1 (all others are 'nearest': matching is uniform), else None."""
    if m < 2:
        raise ValueError(f"uniform_warning: need at least 2 members, got m={m}")
    if k < 1:
        raise ValueError(f"uniform_warning: k must be >= 1, got {k}")
    if k >= m - 1:
        return (
            f"matchmaking k={k} >= m-1={m - 1}: every other member is among the k nearest, "
            f"so opponents are drawn uniformly at random and reputation plays no part"
        )
    return None


def _check_pool(members: list[str]) -> None:
    if len(members) < 2:
        raise ValueError(f"matchmaking needs at least 2 members, got {members}")
    if len(set(members)) != len(members):
        raise ValueError(f"matchmaking: duplicate member names in {members}")
