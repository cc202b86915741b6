"""Verdicts → preference pairs in trl's conversational format, with the duel's full metadata; and judges' scores
→ win probabilities, the pool as SPPO's preference model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

from .records import Duel


def preference_pairs(duels: list[Duel]) -> list[dict]:
    """One pair per decided duel: chosen = the response with the higher aggregated score.
    Ties, duels below the margin and void duels produce none."""
    pairs = []
    for d in duels:
        if d.outcome not in ("a", "b"):
            continue
        win, lose = (d.response_a, d.response_b) if d.outcome == "a" else (d.response_b, d.response_a)
        s_win, s_lose = (d.score_a, d.score_b) if d.outcome == "a" else (d.score_b, d.score_a)
        side_win, side_lose = ("a", "b") if d.outcome == "a" else ("b", "a")
        judge_scores = {}
        for j in d.judgments:
            if j.judge in d.weights:
                judge_scores.setdefault(j.judge, {})["chosen" if j.target == side_win else "rejected"] = j.score
        u = d.update or {}
        pairs.append({
            "prompt": [{"role": "user", "content": d.prompt}],
            "chosen": [{"role": "assistant", "content": win.text}],
            "rejected": [{"role": "assistant", "content": lose.text}],
            "prompt_id": d.prompt_id,
            "iteration": d.iteration,
            "duel_index": d.index,
            "chosen_model": win.member,
            "rejected_model": lose.member,
            "score_chosen": s_win,
            "score_rejected": s_lose,
            "margin": s_win - s_lose,
            "judge_scores": judge_scores,
            "weights": d.weights,
            "ratings_before": {d.a: u.get("rating_a_before"), d.b: u.get("rating_b_before")},
            "ratings_after": {d.a: u.get("rating_a_after"), d.b: u.get("rating_b_after")},
        })
    return pairs


def pairs_for(member: str, pairs: list[dict], mode: str) -> list[dict]:
    """The pairs a member trains on: all of them (the paper), or only those from duels it fought."""
    if mode == "all":
        return pairs
    return [p for p in pairs if member in (p["chosen_model"], p["rejected_model"])]


def judge_disagreement(pairs: list[dict]) -> tuple[float, int]:
    """rDPO's flip rate, estimated from the judges of the pairs' duels: (ε̂, the number of pairs it rests on).

    A pair's verdict is the reputation-weighted mean of its judges' scores (chosen: the higher). Judge j, of weight
    w_j, disagrees with it when its own score difference d_j = s_j(chosen) − s_j(rejected) is negative, and half
    disagrees when d_j = 0 (as a tie counts ½ in `win_probabilities`). A pair's disagreement is
    Σ_j w_j [d_j < 0 ; ½ if d_j = 0] / Σ_j w_j over its judges valid for both responses (those in `weights`); ε̂ is
    its mean over the pairs with at least two such judges — one judge is the verdict, so it can not disagree.

    ε̂ is the rate at which one (weighted) judge's label differs from the verdict. Judges erring independently flip a
    verdict of several of them less often than that, so ε̂ overstates the verdict's flip rate there; judges sharing
    a bias flip it without disagreeing, which no estimate from the judges alone can see. Raises ValueError when no
    pair has two judges (nothing to estimate from)."""
    shares = []
    for p in pairs:
        judges = [j for j, s in p["judge_scores"].items() if j in p["weights"] and {"chosen", "rejected"} <= set(s)]
        if len(judges) < 2:
            continue
        total = Fraction(0)
        for j in judges:
            d = p["judge_scores"][j]["chosen"] - p["judge_scores"][j]["rejected"]
            total += Fraction(p["weights"][j]) * (1 if d < 0 else Fraction(1, 2) if d == 0 else 0)
        shares.append(total / sum(Fraction(p["weights"][j]) for j in judges))
    if not shares:
        raise ValueError(f"training.flip_rate=auto: none of the {len(pairs)} pairs has two judges valid for both "
                         "responses, so no disagreement can be seen; give training.flip_rate a number")
    return float(sum(shares, Fraction(0)) / len(shares)), len(shares)


def margin_weights(pairs: list[dict]) -> list[float]:
    """Margin-weighted DPO's weight of each pair: its aggregated score gap s̄_chosen − s̄_rejected (1-10 scale) over
    the mean gap of `pairs` (the pairs the member trains on), so that the weights average 1 and the loss keeps
    DPO's scale (and its learning rate). Computed in fractions: equal gaps give weights of exactly 1. Raises
    ValueError for a pair without both scores or with a gap that is not positive."""
    gaps = []
    for i, p in enumerate(pairs):
        chosen, rejected = p.get("score_chosen"), p.get("score_rejected")
        if chosen is None or rejected is None or not chosen > rejected:
            raise ValueError(f"training.loss=margin: pair {i} (prompt {p.get('prompt_id')!r}) needs score_chosen > "
                             f"score_rejected, got {chosen!r} and {rejected!r}")
        gaps.append(Fraction(chosen) - Fraction(rejected))
    mean = sum(gaps, Fraction(0)) / len(gaps)
    return [float(g / mean) for g in gaps]


def win_probabilities(scores_per_judge: Sequence[Mapping[str, float | None]]) -> list[float | None]:
    """The pool as SPPO's preference model, for one prompt's K samples: element k maps each judge to its 1–10
    score of sample k (None or absent: no readable score). Returns P̂(y_k ≻ π_t) per sample.

    P(y_k ≻ y_j) is the fraction of the judges that scored both samples and rated k above j, a tie counting ½;
    a pair no judge scored both of has no preference and is left out. P̂(y_k ≻ π_t) is the mean of P(y_k ≻ y_j)
    over the other samples j ≠ k that have one; a sample with none is None, never a default ½.

    The paper (and its code) averages over all K samples, j = k included with P(y ≻ y) = ½. That term only
    pulls every estimate toward ½ by a factor (K−1)/K — the same as shrinking η — and with unreadable judgments
    the number of comparable j varies per sample, so the pull would too; we leave it out."""
    out = []
    for k in range(len(scores_per_judge)):
        prefs = [p for j in range(len(scores_per_judge)) if j != k
                 if (p := _preference(scores_per_judge[k], scores_per_judge[j])) is not None]
        out.append(float(sum(prefs, Fraction(0)) / len(prefs)) if prefs else None)
    return out


def _preference(a: Mapping[str, float | None], b: Mapping[str, float | None]) -> Fraction | None:
    """The share of judges scoring both that rate a above b (ties ½); None if no judge scored both.
    Fractions, so that equal shares give bit-identical win rates."""
    votes = [Fraction(1) if a[j] > b[j] else Fraction(1, 2) if a[j] == b[j] else Fraction(0)
             for j in a if a[j] is not None and b.get(j) is not None]
    return sum(votes, Fraction(0)) / len(votes) if votes else None
