"""The judge, chosen once per call from judge.mode: each ask (a judge, a question, a response) becomes a
records.Judgment, read (`ok`), unreadable (`unparsed`, generate mode) or failed, never a default score.

- `LogprobJudge`: the judge prompt ends in the start of the answer (`{"score": `); the expected score under the
  judge's next-token distribution over 1..10. Asks of one judge with the same `group` (a duel's two responses, a
  member's samples of one prompt) share the instructions and the question: the backend runs that prefix once.
- `GenerateJudge`: the judge writes its answer; the score is parsed from it (judging.parse_judgment).
- `judge_pairs` (judge.mode=pairwise, SPARTA duels only): a judge reads both responses of a duel in both orders
  and says which is better (judging.PairVerdict); its verdict is recorded as two Judgments, "a" and "b", with the
  mapped 1-10 scores, so everything that reads pointwise judgments reads these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import groupby

from ..backends import Failure
from ..chat import PromptTooLong, encode_chat
from ..config import JudgeConfig
from ..records import Judgment
from .judging import (
    ANSWER_PREFIX,
    PAIRWISE_PREFIX,
    PairVerdict,
    ScoreTokens,
    expected_score,
    first_better,
    judge_messages,
    label_tokens,
    pairwise_messages,
    parse_judgment,
)


@dataclass(frozen=True)
class JudgeAsk:
    """One judgment to make: `judge` scores `response` to `question` on its own; the Judgment names `target`.
    Adjacent asks of one judge with the same `group` share the question."""

    judge: str
    question: str
    response: str
    group: object
    target: str


class LogprobJudge:
    answer_prefix = ANSWER_PREFIX

    def __init__(self, config: JudgeConfig):
        self.c = config

    def appended(self, tokenizer) -> list[int]:
        """Tokens after the answer prefix that the score is read after (ScoreTokens)."""
        return ScoreTokens(tokenizer).appended

    def scores(self, backend, asks: list[JudgeAsk], prompts: list[list[int]], seed: int, tick) -> list[tuple]:
        """(score, status, raw) per prompt: the expected score and the distribution it came from."""
        judges = [a.judge for a in asks]
        tokens = {j: ScoreTokens(backend.tokenizer(j)) for j in set(judges)}
        # request indices; adjacent requests of one judge and group share their prefix
        groups = [list(g) for _, g in groupby(range(len(asks)), key=lambda i: (asks[i].group, asks[i].judge))]
        results: list = [None] * len(asks)
        lps = grouped_by_tokenizer(backend, [judges[g[0]] for g in groups], [[prompts[i] for i in g] for g in groups],
                                   lambda j: (tuple(tokens[j].candidates), tokens[j].positions),
                                   self.c.batch_size, tick)
        for g, group_lps in zip(groups, lps):
            for i, lp in zip(g, group_lps):
                if isinstance(lp, Failure):  # a remote backend could not score it: a failed judgment
                    results[i] = (None, "failed", lp.error)
                    continue
                dist = tokens[judges[i]].distribution(lp)
                results[i] = (expected_score(dist), "ok", " ".join(f"{p:.4f}" for p in dist))
        return results


class GenerateJudge:
    answer_prefix = ""

    def __init__(self, config: JudgeConfig):
        self.c = config

    def appended(self, tokenizer) -> list[int]:
        return []

    def scores(self, backend, asks: list[JudgeAsk], prompts: list[list[int]], seed: int, tick) -> list[tuple]:
        """(score, status, raw) per prompt: the parsed score (unparsed: None) and the text it was read from."""
        c = self.c
        generated = backend.generate([a.judge for a in asks], prompts, max_new_tokens=c.max_new_tokens,
                                     temperature=c.temperature, top_p=1.0, batch_size=c.batch_size,
                                     seed=seed + 1, progress=tick)
        results = []
        for g in generated:
            if g.text is None and g.error != "empty response":
                results.append((None, "failed", g.error))
                continue
            score = parse_judgment(g.text or "")
            results.append((score, "ok" if score is not None else "unparsed", g.text))
        return results


JUDGES = {"logprob": LogprobJudge, "generate": GenerateJudge}


def judge_asks(backend, asks: list[JudgeAsk], config: JudgeConfig, seed: int, progress=None) -> list[Judgment]:
    """A Judgment per ask, in order, by the judge of config.mode. A judge prompt that cannot be encoded (too
    long for judge.max_prompt_tokens even shortened) is a failed judgment."""
    if config.mode not in JUDGES:
        raise ValueError(f"judge.mode={config.mode} does not score one response on its own (pairwise judges duels)")
    judge_kind = JUDGES[config.mode](config)
    appended = {j: judge_kind.appended(backend.tokenizer(j)) for j in {a.judge for a in asks}}
    out: list = [None] * len(asks)
    todo, prompts, shortened = [], [], []
    for i, a in enumerate(asks):
        try:
            enc = encode_chat(backend.tokenizer(a.judge), judge_messages(), [a.question, a.response],
                              max_tokens=config.max_prompt_tokens - len(appended[a.judge]),
                              assistant_prefix=judge_kind.answer_prefix)
        except PromptTooLong as e:
            out[i] = Judgment(a.judge, a.target, None, "failed", str(e), False)
            continue
        todo.append(i)
        prompts.append(enc.ids + appended[a.judge])
        shortened.append(enc.shortened)
    tick = progress and progress("judge", len(todo))
    scored = judge_kind.scores(backend, [asks[i] for i in todo], prompts, seed, tick)
    for i, was_shortened, (score, status, raw) in zip(todo, shortened, scored):
        out[i] = Judgment(asks[i].judge, asks[i].target, score, status, raw, was_shortened)
    return out


@dataclass(frozen=True)
class PairAsk:
    """One pairwise verdict to make: `judge` compares `response_a` and `response_b` to `question`."""

    judge: str
    question: str
    response_a: str
    response_b: str


def judge_pairs(backend, asks: list[PairAsk], config: JudgeConfig, progress=None) -> list[tuple[Judgment, Judgment]]:
    """(Judgment of "a", Judgment of "b") per ask, in order: one forward pass per order (a first, then b first),
    the two sharing the instructions and question. Both Judgments carry the verdict (PairVerdict.raw); a prompt that
    cannot be encoded or a row the backend could not score fails both."""
    labels = {j: label_tokens(backend.tokenizer(j)) for j in {a.judge for a in asks}}
    out: list = [None] * len(asks)
    todo, groups, shortened = [], [], []
    for i, a in enumerate(asks):
        try:
            encoded = [encode_chat(backend.tokenizer(a.judge), pairwise_messages(), [a.question, first, second],
                                   max_tokens=config.max_prompt_tokens, assistant_prefix=PAIRWISE_PREFIX)
                       for first, second in ((a.response_a, a.response_b), (a.response_b, a.response_a))]
        except PromptTooLong as e:
            out[i] = _both(a.judge, None, "failed", str(e), False)
            continue
        todo.append(i)
        groups.append([e.ids for e in encoded])
        shortened.append(any(e.shortened for e in encoded))
    tick = progress and progress("judge", len(todo))
    lps = grouped_by_tokenizer(backend, [asks[i].judge for i in todo], groups, lambda j: (tuple(labels[j]), 1),
                               config.batch_size, tick)
    for i, was_shortened, (ab, ba) in zip(todo, shortened, lps):
        failure = next((lp for lp in (ab, ba) if isinstance(lp, Failure)), None)
        if failure is not None:  # a remote backend could not score one order: no verdict
            out[i] = _both(asks[i].judge, None, "failed", failure.error, was_shortened)
            continue
        verdict = PairVerdict(first_better(ab[0]), first_better(ba[0]))
        out[i] = _both(asks[i].judge, verdict.scores(), "ok", verdict.raw(), was_shortened)
    return out


def _both(judge: str, scores: tuple[float, float] | None, status: str, raw: str, shortened: bool
          ) -> tuple[Judgment, Judgment]:
    a, b = scores if scores is not None else (None, None)
    return Judgment(judge, "a", a, status, raw, shortened), Judgment(judge, "b", b, status, raw, shortened)


def position_bias_counts(judgments: list[Judgment]) -> dict[str, dict]:
    """Per judge, over its read pairwise verdicts (one per duel: its "a" Judgment), the mean position bias
    (PairVerdict.position_bias: + prefers the response shown first) and the mean of its absolute value."""
    biases: dict[str, list[float]] = {}
    for j in judgments:
        if j.target == "a" and j.status == "ok":
            biases.setdefault(j.judge, []).append(json.loads(j.raw)["position_bias"])
    return {judge: {"verdicts": len(b), "mean": sum(b) / len(b), "mean_abs": sum(map(abs, b)) / len(b)}
            for judge, b in sorted(biases.items())}


def grouped_by_tokenizer(backend, members: list[str], groups: list[list[list[int]]], kind, batch_size: int,
                         progress=None) -> list:
    """`grouped_next_token_logprobs` for groups read by members of different tokenizers: `kind(member)` gives
    the candidate ids and the number of positions, which are per tokenizer, so there is one call per kind (the
    backend groups rows by base). out[g] in the order of `groups`."""
    kinds = [kind(m) for m in members]
    out: list = [None] * len(groups)
    for candidates, last in dict.fromkeys(kinds):
        mine = [g for g, k in enumerate(kinds) if k == (candidates, last)]
        lps = backend.grouped_next_token_logprobs([members[g] for g in mine], [groups[g] for g in mine],
                                                  list(candidates), last=last, batch_size=batch_size,
                                                  progress=progress)
        for g, group_lps in zip(mine, lps):
            out[g] = group_lps
    return out
