"""Judging: every non-contestant scores each response 1-10 on its own; scores are reputation-weighted
(or equally weighted, reputation.weighting=uniform: the paper's ablation).

Two modes:
- `generate`: the judge writes an answer to the authors' prompt; we parse JSON, then fallbacks. An
  answer we cannot read is recorded as `unparsed` and that judge is left out of the duel (the authors
  silently counted it as a 5-5 tie).
- `logprob`: after the same prompt we append the start of the answer, `{"score": `, and read the judge's
  next-token distribution over "1".."10": the expected score. One forward pass, never unparsed.
  Neither mode can be steered by a response that contains `{"score": 10}`: the response sits in a slot
  of the user turn (special tokens split), and only the judge's own tokens are read.
"""

from __future__ import annotations

import json
import math
import re

JUDGE_PROMPT = """Please judge the following response based on the question and the response to be evaluated.
Question: {0}
Response to be evaluated: {1}

Operation: Output ONLY a JSON object with one score in this exact format. Score must be in the range of 1 to 10.
Your output should be like this:
{"score": score}"""

ANSWER_PREFIX = '{"score": '
SCORES = tuple(range(1, 11))


def judge_messages() -> list[tuple[str, str]]:
    return [("user", JUDGE_PROMPT)]


# ---- generate mode -------------------------------------------------------------------------------

_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_SCORE_FIELD = re.compile(r"[\"']?score[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.IGNORECASE)
_OUT_OF_TEN = re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.IGNORECASE)


def parse_judgment(text: str) -> float | None:
    """The score a judge wrote, or None. Tries, in order: a JSON object with "score"; a `score: N`
    field; `N/10` or `N out of 10`. The score must lie in [1, 10]; anything else is unparsed."""
    for candidate in _JSON_OBJECT.findall(text):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "score" in obj:
            return _in_range(obj["score"])
    for pattern in (_SCORE_FIELD, _OUT_OF_TEN):
        match = pattern.search(text)
        if match:
            return _in_range(match.group(1))
    return None


def _in_range(value: object) -> float | None:
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return score if 1 <= score <= 10 and math.isfinite(score) else None


# ---- logprob mode --------------------------------------------------------------------------------

class ScoreTokens:
    """Token ids that spell "1".."10" right after ANSWER_PREFIX, for one tokenizer.

    Most tokenizers split digits, so "10" is "1" then "0": we append "1" to the prompt and read two
    positions in one forward pass — P(first digit) and P("0" | "1") — and split P("1") into 1 and 10."""

    def __init__(self, tokenizer):
        prefix = token_ids(tokenizer, ANSWER_PREFIX)
        conts = {}
        for s in SCORES:
            full = token_ids(tokenizer, ANSWER_PREFIX + str(s))
            if full[:len(prefix)] != prefix:
                raise ValueError(f"logprob judging: the tokenizer merges {ANSWER_PREFIX!r} with the digit {s}; "
                                 "use judge.mode=generate for this model")
            conts[s] = full[len(prefix):]
        if any(len(conts[s]) != 1 for s in SCORES[:9]):
            raise ValueError("logprob judging needs the digits 1-9 to be single tokens; use judge.mode=generate")
        self.digits = [conts[s][0] for s in SCORES[:9]]
        ten = conts[10]
        self.ten_single = len(ten) == 1
        if not self.ten_single and ten != [self.digits[0], token_ids(tokenizer, ANSWER_PREFIX + "0")[len(prefix)]]:
            raise ValueError("logprob judging: cannot spell '10' as one token or as '1' then '0'")
        self.candidates = self.digits + [ten[0] if self.ten_single else ten[1]]
        self.appended = [] if self.ten_single else [self.digits[0]]  # tokens to append to the prompt
        self.positions = 1 if self.ten_single else 2

    def distribution(self, logprobs: list[list[float]]) -> list[float]:
        """P(score = 1..10), renormalised over the ten scores, from next_token_logprobs rows."""
        first = [math.exp(x) for x in logprobs[0]]
        if self.ten_single:
            p = first[:9] + [first[9]]
        else:
            p_zero_after_one = math.exp(logprobs[1][9])
            p = [first[0] * (1 - p_zero_after_one)] + first[1:9] + [first[0] * p_zero_after_one]
        total = sum(p)
        return [x / total for x in p]


def expected_score(distribution: list[float]) -> float:
    return sum(s * p for s, p in zip(SCORES, distribution))


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- aggregation ---------------------------------------------------------------------------------

def judge_weights(judges, reputations: dict[str, float], weighting: str = "reputation") -> dict[str, float]:
    """What each judge's score counts for: its reputation (SPARTA.md 1d), or 1 for every judge with
    weighting "uniform" (the paper's ablation without reputation weighting)."""
    if weighting == "reputation":
        return {j: reputations[j] for j in judges}
    if weighting == "uniform":
        return dict.fromkeys(judges, 1.0)
    raise ValueError(f"judge_weights: weighting must be 'reputation' or 'uniform', got {weighting!r}")


def aggregate(scores_a: dict[str, float], scores_b: dict[str, float], reputations: dict[str, float],
              weighting: str = "reputation") -> tuple[float, float, dict[str, float]] | None:
    """Weighted mean score of each response over the judges valid for both (SPARTA.md 1d):
    s̄ = Σ_j w_j s_j / Σ_j w_j, w_j = R_j (or 1: `judge_weights`). Returns (s̄_a, s̄_b, weights used), or None
    when no judge is valid for both."""
    judges = sorted(set(scores_a) & set(scores_b))
    if not judges:
        return None
    weights = judge_weights(judges, reputations, weighting)
    total = sum(weights.values())
    mean_a = sum(weights[j] * scores_a[j] for j in judges) / total
    mean_b = sum(weights[j] * scores_b[j] for j in judges) / total
    return mean_a, mean_b, weights
