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
