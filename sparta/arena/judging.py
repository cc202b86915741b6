"""Judging: every non-contestant scores each response 1-10 on its own; scores are reputation-weighted
(or equally weighted, reputation.weighting=uniform: the paper's ablation).

Three modes:
- `generate`: the judge writes an answer to the authors' prompt; we parse JSON, then fallbacks. An
  answer we cannot read is recorded as `unparsed` and that judge is left out of the duel (the authors
  silently counted it as a 5-5 tie).
- `logprob`: after the same prompt we append the start of the answer, `{"score": `, and read the judge's
  next-token distribution over "1".."10": the expected score. One forward pass, never unparsed.
- `pairwise`: the judge sees the question and both responses, each in its own slot, and after the forced answer
  start `{"better": "` we read P("A") and P("B") of its next token: P(first better) = p_A / (p_A + p_B). Both
  orders are read, so a constant preference for one position cancels (`PairVerdict`), and the verdict becomes two
  scores on the 1-10 scale that the pointwise aggregation and update take unchanged.
  No mode can be steered by a response that contains `{"score": 10}` or "Response A is better": the response sits
  in a slot of the user turn (special tokens split), and only the judge's own tokens are read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

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


# ---- pairwise mode -------------------------------------------------------------------------------

PAIRWISE_PROMPT = """Please compare the two responses to the question below and decide which one is better.
Question: {0}
Response A: {1}
Response B: {2}

Operation: Output ONLY a JSON object naming the better response, "A" or "B", in this exact format.
Your output should be like this:
{"better": "A"}"""

PAIRWISE_PREFIX = '{"better": "'
LABELS = ("A", "B")  # the first and the second response shown


def pairwise_messages() -> list[tuple[str, str]]:
    return [("user", PAIRWISE_PROMPT)]


def label_tokens(tokenizer) -> list[int]:
    """The token ids of "A" and "B" right after PAIRWISE_PREFIX: each label must be one token of its own."""
    prefix = token_ids(tokenizer, PAIRWISE_PREFIX)
    ids = []
    for label in LABELS:
        full = token_ids(tokenizer, PAIRWISE_PREFIX + label)
        if full[:len(prefix)] != prefix or len(full) != len(prefix) + 1:
            raise ValueError(f"pairwise judging needs the label {label!r} to be one token after {PAIRWISE_PREFIX!r}; "
                             f"this tokenizer encodes it as {full} and the prefix alone as {prefix}; "
                             "use judge.mode=logprob or judge.mode=generate for this model")
        ids.append(full[-1])
    if ids[0] == ids[1]:
        raise ValueError(f"pairwise judging: the labels {LABELS} are the same token {ids[0]}; use another judge.mode")
    return ids


def first_better(logprobs: list[float]) -> float:
    """P(first response better) = p_A / (p_A + p_B) from the next-token log-probs of the two labels."""
    log_a, log_b = logprobs
    top = max(log_a, log_b)  # shifted so that exp cannot overflow however far apart the two are
    p_a, p_b = math.exp(log_a - top), math.exp(log_b - top)
    return p_a / (p_a + p_b)


@dataclass(frozen=True)
class PairVerdict:
    """One judge's verdict on a duel from both orders: `ab` = P(first better) with a shown first, `ba` with b first.

    P(a better) = ½[ab + (1 − ba)]: a judge that adds a constant δ to P(first better) in both orders is left with
    P(a better) unmoved, and δ = ½(ab + ba) − ½ is its position bias (0 for a judge blind to the order; +½ for one
    that always says "first")."""

    ab: float
    ba: float

    @property
    def p_a_better(self) -> float:
        return 0.5 * (self.ab + 1.0 - self.ba)

    @property
    def position_bias(self) -> float:
        return 0.5 * (self.ab + self.ba) - 0.5

    def scores(self) -> tuple[float, float]:
        """(s_a, s_b) on the 1-10 scale, symmetric about 5.5, with s_a − s_b = 9(2p − 1), p = P(a better): a sure
        verdict is the full 9-point gap of the pointwise scale, an even one no gap. These go through `aggregate`
        and reputation.apply_duel unchanged (SPARTA.md 1d-1e)."""
        half_gap = 4.5 * (2.0 * self.p_a_better - 1.0)
        return 5.5 + half_gap, 5.5 - half_gap

    def raw(self) -> str:
        """What a Judgment records (both of the duel's Judgments of this judge carry it)."""
        return json.dumps({"p_first_ab": self.ab, "p_first_ba": self.ba, "p_a_better": self.p_a_better,
                           "position_bias": self.position_bias})


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
