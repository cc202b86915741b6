"""Meta-rewarding (Wu et al. 2024, arXiv 2407.19594): self-rewarding where the member is also the meta-judge of
its own judgments. Each member samples K answers per prompt (actor), writes N judgments of each (judge), and
compares pairs of its judgments of one answer (meta-judge). It trains on actor pairs (the best-scored answer over
the worst, with the paper's length control) and judge pairs (its best judgment over its worst) (docs/baselines.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from itertools import groupby

from ..arena.judges import JudgeAsk, grouped_by_tokenizer, judge_asks
from ..arena.judging import JUDGE_PROMPT, token_ids
from ..backends import Failure
from ..chat import PromptTooLong, encode_chat
from ..config import META_OVERHEAD, JudgeConfig
from .samples import Sample, pair_row
from .self_rewarding import STATUS

META_JUDGE_PROMPT = """Here are a question, a response to it, and two judgments of that response. Each judgment \
rates the response from 1 to 10. Decide which judgment rates the response more accurately and gives better reasons.
Question: {0}
Response: {1}
Judgment A: {2}
Judgment B: {3}

Operation: Output ONLY a JSON object naming the better judgment, in this exact format:
{"better": "A"} or {"better": "B"}"""

META_PREFIX = '{"better": "'


def meta_window(judge: JudgeConfig) -> int:
    """The meta-judge's prompt budget: the judge's window plus two judgments and the instructions."""
    return judge.max_prompt_tokens + 2 * judge.max_new_tokens + META_OVERHEAD


# ---- the judge: N judgments of each answer ------------------------------------------------------------------

def judge_own_n(backend, samples: list[Sample], judge: JudgeConfig, n: int, seed: int, progress=None
                ) -> list[Sample]:
    """N sampled judgments of every generated sample by the member that wrote it (judge.mode=generate, so each
    judgment is text the meta-judge can read and DPO can train on). A sample is `scored` when at least one of its
    judgments could be read (its score is their mean); failed generations are never judged."""
    todo = [i for i, s in enumerate(samples) if s.status == "generated"]
    asks = [JudgeAsk(samples[i].member, samples[i].prompt, samples[i].response.text, samples[i].prompt_id, "self")
            for i in todo for _ in range(n)]
    judgments = judge_asks(backend, asks, judge, seed, progress)
    out = list(samples)
    for k, i in enumerate(todo):
        mine = judgments[k * n:(k + 1) * n]
        read = {j.status for j in mine}
        status = "scored" if "ok" in read else STATUS["unparsed" if "unparsed" in read else "failed"]
        out[i] = replace(samples[i], judgments=mine, status=status)
    return out


# ---- the meta-judge: a round robin of one answer's judgments ------------------------------------------------

class LetterTokens:
    """The token ids of "A" and "B" right after META_PREFIX for one tokenizer (each must be one token)."""

    def __init__(self, tokenizer):
        prefix = token_ids(tokenizer, META_PREFIX)
        self.ids = []
        for letter in "AB":
            full = token_ids(tokenizer, META_PREFIX + letter)
            if full[:len(prefix)] != prefix or len(full) != len(prefix) + 1:
                raise ValueError(f"meta-judging: the tokenizer does not spell {META_PREFIX + letter!r} as "
                                 f"{META_PREFIX!r} then one token for {letter!r}")
            self.ids.append(full[-1])


def disputed(samples: list[Sample]) -> tuple[int | None, str]:
    """Of one member's samples of one prompt (indices into the list), the one its readable judgments disagree on
    most: the highest variance of their scores (the first of equals). None, with the reason, when no sample has
    two readable judgments or every sample's judgments agree."""
    readable = [(k, [j.score for j in s.judgments if j.status == "ok"]) for k, s in enumerate(samples)]
    readable = [(k, scores) for k, scores in readable if len(scores) >= 2]
    if not readable:
        return None, "fewer_than_2_readable_judgments"
    k, scores = max(readable, key=lambda ks: _variance(ks[1]))
    return (k, "") if _variance(scores) > 0 else (None, "judgments_agree")


def meta_judge(backend, samples: list[Sample], judge: JudgeConfig, progress=None) -> list[Sample]:
    """For each member's answers to a prompt, its most disputed answer (`disputed`) gets a round robin of its
    readable judgments, every pair in both orders, each read from the member's next-token distribution over
    "A" / "B" after META_PREFIX (one forward pass, never unparsed). Kept in that sample's `meta`."""
    chosen = []
    for _, group in groupby(range(len(samples)), key=lambda i: (samples[i].member, samples[i].prompt_id)):
        group = list(group)
        k, _ = disputed([samples[i] for i in group])
        if k is not None:
            chosen.append(group[k])
    out = list(samples)
    asks = []  # (sample index, battles, encoded prompts)
    for i in chosen:
        s = samples[i]
        ok = [k for k, j in enumerate(s.judgments) if j.status == "ok"]
        battles = [(x, y) for x in ok for y in ok if x != y]
        try:
            encoded = [encode_chat(backend.tokenizer(s.member), [("user", META_JUDGE_PROMPT)],
                                   [s.prompt, s.response.text, s.judgments[x].raw, s.judgments[y].raw],
                                   max_tokens=meta_window(judge), assistant_prefix=META_PREFIX)
                       for x, y in battles]
        except PromptTooLong as e:
            out[i] = replace(s, meta={"status": "failed", "error": str(e), "battles": [], "strength": None})
            continue
        asks.append((i, battles, encoded))
    tick = progress and progress("meta-judge", sum(len(b) for _, b, _ in asks))
    letters = {m: LetterTokens(backend.tokenizer(m)) for m in {samples[i].member for i, _, _ in asks}}
    # one group per answer: its battles share the instructions, the question and the answer
    lps = grouped_by_tokenizer(backend, [samples[i].member for i, _, _ in asks],
                               [[e.ids for e in encoded] for _, _, encoded in asks],
                               lambda m: (tuple(letters[m].ids), 1), judge.batch_size, tick)
    for (i, battles, encoded), rows in zip(asks, lps):
        out[i] = replace(samples[i], meta=round_robin(battles, rows, len(samples[i].judgments),
                                                       any(e.shortened for e in encoded)))
    return out


def round_robin(battles: list[tuple[int, int]], rows: list, n: int, shortened: bool = False) -> dict:
    """Each battle's P(A better) from its logprob row; then P(x ≻ y) = ½ [P_A(x, y) + P_B(y, x)], both orders
    averaged so a constant preference for a position cancels, and each judgment's strength, its mean P(win) over
    the others. In a complete round robin, ranking by total wins is the ranking of Bradley-Terry's (and the
    paper's Elo's) maximum-likelihood strengths. A battle the backend could not score fails the round robin."""
    records, p_a = [], {}
    for (x, y), row in zip(battles, rows):
        if isinstance(row, Failure):
            records.append({"a": x, "b": y, "p_a": None, "error": row.error})
            continue
        la, lb = row[0]
        p_a[(x, y)] = 1 / (1 + math.exp(lb - la))
        records.append({"a": x, "b": y, "p_a": p_a[(x, y)]})
    meta = {"battles": records, "prompt_shortened": shortened}
    if len(p_a) < len(battles):
        return {**meta, "status": "failed", "error": "a meta-judgment failed", "strength": None}
    players = sorted({x for x, _ in battles})
    wins = {x: [(p_a[(x, y)] + 1 - p_a[(y, x)]) / 2 for y in players if y != x] for x in players}
    strength = [sum(wins[k]) / len(wins[k]) if k in wins else None for k in range(n)]
    return {**meta, "status": "ok", "strength": strength}


# ---- the pairs: actor pairs and judge pairs -------------------------------------------------------------------

def meta_rewarding_pairs(samples: list[Sample], iteration: int, min_margin: float, tolerance: float,
                         judge_window: int) -> tuple[list[dict], dict[str, int]]:
    """Per (member, prompt), an actor pair and a judge pair; what makes no pair is counted by reason."""
    pairs, skipped = [], dict.fromkeys(("fewer_than_2_scored", "tie", "below_margin", "fewer_than_2_readable_"
                                        "judgments", "judgments_agree", "meta_failed", "meta_tie", "same_score"), 0)
    for _, group in groupby(samples, key=lambda s: (s.member, s.prompt_id)):
        group = list(group)
        for pair, reason in (actor_pair(group, iteration, min_margin, tolerance),
                             judge_pair(group, iteration, judge_window)):
            if pair is None:
                skipped[reason] += 1
            else:
                pairs.append(pair)
    return pairs, skipped


def actor_pair(group: list[Sample], iteration: int, min_margin: float, tolerance: float) -> tuple[dict | None, str]:
    """The paper's length control: chosen = the shortest answer scored within `tolerance` x (max - min) of the
    best score (0: the shortest of the best), rejected = the lowest-scored answer (the first of equals)."""
    scored = [s for s in group if s.score is not None]
    if len(scored) < 2:
        return None, "fewer_than_2_scored"
    high, low = max(s.score for s in scored), min(s.score for s in scored)
    if high == low or high - low < min_margin:
        return None, "tie" if high == low else "below_margin"
    best = min((s for s in scored if s.score >= high - tolerance * (high - low)), key=lambda s: s.response.n_tokens)
    worst = next(s for s in scored if s.score == low)
    return pair_row("meta_rewarding", iteration, best, best.response.text, worst.response.text, role="actor",
                    chosen_model=best.member, rejected_model=worst.member, chosen_sample=best.sample,
                    rejected_sample=worst.sample, score_chosen=best.score, score_rejected=worst.score,
                    margin=best.score - worst.score), ""


def judge_pair(group: list[Sample], iteration: int, judge_window: int) -> tuple[dict | None, str]:
    """On the judge prompt of the most disputed answer: its strongest judgment over its weakest (the first of
    equals), when the meta-judge tells them apart and they give different scores (two judgments that reach the
    same score differ only in wording)."""
    k, reason = disputed(group)
    if k is None:
        return None, reason
    s = group[k]
    if (s.meta or {}).get("status") != "ok":
        return None, "meta_failed"
    strength = s.meta["strength"]
    scored = [x for x, v in enumerate(strength) if v is not None]
    best, worst = max(scored, key=strength.__getitem__), min(scored, key=strength.__getitem__)
    if strength[best] == strength[worst]:
        return None, "meta_tie"
    chosen, rejected = s.judgments[best], s.judgments[worst]
    if chosen.score == rejected.score:
        return None, "same_score"
    return pair_row("meta_rewarding", iteration, s, chosen.raw, rejected.raw, role="judge",
                    prompt=judge_prompt(s.prompt, s.response.text), max_prompt_tokens=judge_window,
                    chosen_model=s.member, rejected_model=s.member, judged_sample=s.sample, chosen_judgment=best,
                    rejected_judgment=worst, score_chosen=chosen.score, score_rejected=rejected.score,
                    strength_chosen=strength[best], strength_rejected=strength[worst]), ""


def judge_prompt(question: str, response: str) -> str:
    """The judge's user turn as the judge read it (one pass: a question holding "{1}" stays as written)."""
    return re.sub(r"\{([01])\}", lambda m: (question, response)[int(m.group(1))], JUDGE_PROMPT)


def _variance(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / len(xs)

