"""Verdicts → preference pairs in trl's conversational format, with the duel's full metadata."""

from __future__ import annotations

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
