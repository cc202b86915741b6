"""Reputations: the adapted Elo update of SPARTA (SPARTA.md, "The reputation update (adapted Elo)").

State per member: rating R (initial 100) and deviation sigma (initial 0.5); one global counter n.
For a duel between a and b with aggregated scores s_a, s_b:

    z    = (R_a - R_b) / sqrt(sigma_a^2 + sigma_b^2)
    gap  = max(|Phi(z) - Phi(-z)|, eps)            Phi = standard normal CDF
    K    = max(k_min, k0 * decay^(n / steps))      real exponent, n = updates before this duel
    dR_a = K * (s_a - s_b) * tanh(sigma_a) * gap / scaling
    dR_b = K * (s_b - s_a) * tanh(sigma_b) * gap / scaling
    R    <- max(floor, R + dR)

Both deltas are computed from the pre-duel ratings and sigmas. (The authors' script updated a first
and let b read the new R_a; SPARTA.md calls that an ordering bug and so do we.) Afterwards each
member's applied change (R_after - R_before, so the floor is respected) is appended to its history,
only the last `window` changes are kept, sigma becomes their population standard deviation floored
at sigma_min, and n increases by 1.

Initial ratings are "fair" (all `initial_rating`) or z-scored dev-set accuracies with mean
`initial_rating` and population std 20 (SPARTA.md, "Initial reputations").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ..config import ReputationConfig

ACCURACY_STD = 20.0  # spread of accuracy-based initial ratings (SPARTA.md)


EloParams = ReputationConfig  # the parameters are defined once, with the rest of the configuration


@dataclass
class ReputationState:
    ratings: dict[str, float]
    sigmas: dict[str, float]
    changes: dict[str, list[float]]  # per member, the last `window` applied rating changes
    n_updates: int = 0

    def to_dict(self) -> dict:
        return {
            "ratings": dict(self.ratings),
            "sigmas": dict(self.sigmas),
            "changes": {name: list(hist) for name, hist in self.changes.items()},
            "n_updates": self.n_updates,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ReputationState:
        ratings = {str(k): float(v) for k, v in d["ratings"].items()}
        sigmas = {str(k): float(v) for k, v in d["sigmas"].items()}
        if ratings.keys() != sigmas.keys():
            raise ValueError(
                f"reputation state: ratings and sigmas name different members: "
                f"{sorted(ratings)} vs {sorted(sigmas)}"
            )
        changes = {str(k): [float(x) for x in v] for k, v in d.get("changes", {}).items()}
        return cls(ratings, sigmas, changes, int(d.get("n_updates", 0)))

    def copy(self) -> ReputationState:
        return ReputationState.from_dict(self.to_dict())


@dataclass(frozen=True)
class DuelUpdate:
    """Everything a combat-log row needs about one reputation update."""

    a: str
    b: str
    score_a: float
    score_b: float
    rating_a_before: float
    rating_b_before: float
    sigma_a_before: float
    sigma_b_before: float
    rating_a_after: float
    rating_b_after: float
    sigma_a_after: float
    sigma_b_after: float
    k: float
    gap: float
    n_before: int


def initial_state(
    members: list[str], params: EloParams, accuracies: dict[str, float] | None = None
) -> ReputationState:
    """Fair start (accuracies=None) or accuracies z-scored to mean initial_rating, std 20."""
    if len(set(members)) != len(members):
        raise ValueError(f"initial_state: duplicate member names in {members}")
    if accuracies is None:
        ratings = {name: params.initial_rating for name in members}
    else:
        missing = [name for name in members if name not in accuracies]
        if missing:
            raise ValueError(f"initial_state: accuracies missing for members {missing}")
        ratings = _zscored({name: float(accuracies[name]) for name in members}, params)
    return ReputationState(
        ratings=ratings,
        sigmas={name: params.initial_sigma for name in members},
        changes={name: [] for name in members},
    )


def _zscored(acc: dict[str, float], params: EloParams) -> dict[str, float]:
    mean = statistics.fmean(acc.values()) if acc else 0.0
    std = statistics.pstdev(acc.values()) if acc else 0.0
    if std == 0.0:  # all equal (or a single member): nothing to rank, start fair
        return {name: params.initial_rating for name in acc}
    scale = ACCURACY_STD / std
    # the floor binds from the start too (a low initial_rating with a wide spread would go under it)
    return {name: max(params.floor, params.initial_rating + scale * (x - mean)) for name, x in acc.items()}


def phi(z: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def k_factor(n: int, params: EloParams) -> float:
    return max(params.k_min, params.k0 * params.decay ** (n / params.steps))


def gap_factor(r_a: float, r_b: float, sig_a: float, sig_b: float, params: EloParams) -> float:
    z = (r_a - r_b) / math.sqrt(sig_a**2 + sig_b**2)
    return max(abs(phi(z) - phi(-z)), params.eps)


def apply_duel(
    state: ReputationState, a: str, b: str, score_a: float, score_b: float, params: EloParams
) -> DuelUpdate:
    """Update a's and b's reputation in place from one duel's aggregated scores."""
    if a == b:
        raise ValueError(f"apply_duel: a member cannot duel itself ({a!r})")
    for name in (a, b):
        if name not in state.ratings or name not in state.sigmas:
            raise ValueError(f"apply_duel: unknown member {name!r}; known: {sorted(state.ratings)}")
    for label, s in (("score_a", score_a), ("score_b", score_b)):
        if not math.isfinite(s):
            raise ValueError(f"apply_duel: {label} must be finite, got {s!r}")

    # Freeze every input before touching the state: b must not see a's new rating.
    r_a, r_b = state.ratings[a], state.ratings[b]
    sig_a, sig_b = state.sigmas[a], state.sigmas[b]
    n = state.n_updates
    k = k_factor(n, params)
    gap = gap_factor(r_a, r_b, sig_a, sig_b, params)
    delta_a = k * (score_a - score_b) * math.tanh(sig_a) * gap / params.scaling
    delta_b = k * (score_b - score_a) * math.tanh(sig_b) * gap / params.scaling

    new_r_a = _move(state, a, r_a + delta_a, params)
    new_r_b = _move(state, b, r_b + delta_b, params)
    state.n_updates = n + 1
    return DuelUpdate(
        a=a,
        b=b,
        score_a=score_a,
        score_b=score_b,
        rating_a_before=r_a,
        rating_b_before=r_b,
        sigma_a_before=sig_a,
        sigma_b_before=sig_b,
        rating_a_after=new_r_a,
        rating_b_after=new_r_b,
        sigma_a_after=state.sigmas[a],
        sigma_b_after=state.sigmas[b],
        k=k,
        gap=gap,
        n_before=n,
    )


def _move(state: ReputationState, name: str, proposed: float, params: EloParams) -> float:
    """Set the floored rating, record the applied change, refresh sigma from the window."""
    before = state.ratings[name]
    after = max(params.floor, proposed)
    history = [*state.changes.get(name, []), after - before][-params.window :]
    state.ratings[name] = after
    state.changes[name] = history
    state.sigmas[name] = max(params.sigma_min, statistics.pstdev(history))
    return after
