"""One round of duels: both contestants answer, every other member judges both answers, reputations move.

Generation and judging are batched across all duels of the round; the verdicts and reputation updates
are then applied in duel order, so the weights of a duel are the judges' reputations at that point (or 1
each with reputation.weighting=uniform).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from itertools import groupby

from ..backends import Failure
from ..chat import PromptTooLong, encode_chat
from ..records import Duel, Judgment, Prompt, Response
from .judging import ANSWER_PREFIX, ScoreTokens, aggregate, expected_score, judge_messages, parse_judgment
from .reputation import EloParams, ReputationState, apply_duel


@dataclass(frozen=True)
class Match:
    index: int
    prompt: Prompt
    a: str
    b: str


@dataclass(frozen=True)
class ArenaSettings:
    """Plain numbers for one round (built from the config by the pipeline)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    gen_batch_size: int
    max_prompt_tokens: int
    judge_mode: str
    judge_max_new_tokens: int
    judge_temperature: float
    judge_batch_size: int
    judge_max_prompt_tokens: int
    min_margin: float


def run_round(backend, matches: list[Match], members: list[str], state: ReputationState, elo: EloParams,
              settings: ArenaSettings, seed: int, round_no: int, iteration: int, progress=None,
              timings: dict | None = None) -> list[Duel]:
    """Fight `matches`, mutating `state` in duel order. Returns one combat-log row per match.
    Seconds spent generating, judging and updating reputations are added to `timings`."""
    timings = {} if timings is None else timings
    clock = time.perf_counter()
    responses = _combat(backend, matches, settings, seed, progress)
    timings["generate"] = timings.get("generate", 0.0) + time.perf_counter() - clock
    clock = time.perf_counter()
    judgments = _judge(backend, matches, responses, members, settings, seed, progress)
    timings["judge"] = timings.get("judge", 0.0) + time.perf_counter() - clock
    clock = time.perf_counter()
    duels = []
    for m in matches:
        ra, rb = responses[(m.index, "a")], responses[(m.index, "b")]
        duel = Duel(iteration, round_no, m.index, m.prompt.id, m.prompt.text, m.a, m.b, ra, rb,
                    judgments.get(m.index, []))
        _decide(duel, state, elo, settings.min_margin)
        duels.append(duel)
    timings["reputation"] = timings.get("reputation", 0.0) + time.perf_counter() - clock
    return duels


def _combat(backend, matches, s: ArenaSettings, seed: int, progress) -> dict[tuple[int, str], Response]:
    keys = [(m.index, side) for m in matches for side in ("a", "b")]
    asks = [(member, m.prompt.text) for m in matches for member in (m.a, m.b)]
    return dict(zip(keys, generate_responses(backend, asks, s, seed, progress)))


def generate_responses(backend, asks: list[tuple[str, str]], s: ArenaSettings, seed: int, progress
                       ) -> list[Response]:
    """One sampled answer per (member, prompt text), in order, all in one batched call. A prompt that cannot be
    encoded is a failed Response (never generated, never judged)."""
    requests, positions = [], []
    responses: list[Response | None] = [None] * len(asks)
    for i, (member, text) in enumerate(asks):
        try:
            enc = encode_chat(backend.tokenizer(member), [("user", "{0}")], [text], max_tokens=s.max_prompt_tokens)
        except PromptTooLong as e:
            responses[i] = Response(member, None, error=str(e))
            continue
        requests.append((member, enc))
        positions.append(i)
    generated = backend.generate([r[0] for r in requests], [r[1].ids for r in requests],
                                 max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                 batch_size=s.gen_batch_size, seed=seed,
                                 progress=progress and progress("generate", len(requests)))
    for i, (member, enc), g in zip(positions, requests, generated):
        responses[i] = Response(member, g.text, g.error, g.finish_reason, g.n_tokens, enc.shortened)
    return responses  # type: ignore[return-value]


def _judge(backend, matches, responses, members, s: ArenaSettings, seed: int, progress
           ) -> dict[int, list[Judgment]]:
    """Every member that did not fight scores each response of every duel whose responses both exist."""
    asks, keys = [], []
    for m in matches:
        ra, rb = responses[(m.index, "a")], responses[(m.index, "b")]
        if ra.text is None or rb.text is None:
            continue  # a failed generation voids the duel: nothing is judged
        for judge in members:
            if judge in (m.a, m.b):
                continue
            for target, r in (("a", ra), ("b", rb)):
                asks.append(JudgeAsk(judge, m.prompt.text, r.text, m.index))
                keys.append((m.index, judge, target))
    out: dict[int, list[Judgment]] = {}
    for (index, judge, target), (score, status, raw, shortened) in zip(keys, judge_responses(backend, asks, s, seed,
                                                                                             progress)):
        out.setdefault(index, []).append(Judgment(judge, target, score, status, raw, shortened))
    return out


@dataclass(frozen=True)
class JudgeAsk:
    """One judgment to make: `judge` scores `response` to `question` on its own. Adjacent asks of one judge with
    the same `group` share the question, so logprob mode runs their common prefix once."""

    judge: str
    question: str
    response: str
    group: object


def judge_responses(backend, asks: list[JudgeAsk], s: ArenaSettings, seed: int, progress
                    ) -> list[tuple[float | None, str, str | None, bool]]:
    """(score, status, raw, prompt_shortened) per ask, in order: judge.mode logprob reads the expected score,
    generate parses the written one (unparsed: None). A judge prompt that cannot be encoded is failed."""
    prefix = ANSWER_PREFIX if s.judge_mode == "logprob" else ""
    judges = {a.judge for a in asks}
    appended = {j: ScoreTokens(backend.tokenizer(j)).appended if s.judge_mode == "logprob" else [] for j in judges}
    results: list = [None] * len(asks)
    requests, positions = [], []
    for i, a in enumerate(asks):
        try:
            enc = encode_chat(backend.tokenizer(a.judge), judge_messages(), [a.question, a.response],
                              max_tokens=s.judge_max_prompt_tokens - len(appended[a.judge]), assistant_prefix=prefix)
        except PromptTooLong as e:
            results[i] = (None, "failed", str(e), False)
            continue
        requests.append((a.judge, enc.ids + appended[a.judge], enc.shortened))
        positions.append(i)
    names, prompts = [r[0] for r in requests], [r[1] for r in requests]
    tick = progress and progress("judge", len(requests))
    if s.judge_mode == "logprob":
        scored = _logprob_scores(backend, names, prompts, [(asks[i].group, asks[i].judge) for i in positions], s, tick)
    else:
        scored = _generated_scores(backend, names, prompts, s, seed, tick)
    for i, (_, _, shortened), (score, status, raw) in zip(positions, requests, scored):
        results[i] = (score, status, raw, shortened)
    return results


def _logprob_scores(backend, judges, prompts, duel_judge, s: ArenaSettings, tick):
    """Expected scores. A judge's prompts for the responses of one group (a duel's two; a member's samples of a
    prompt) share the instructions and the question: the backend runs their common prefix once."""
    tokens = {j: ScoreTokens(backend.tokenizer(j)) for j in set(judges)}
    # request indices; a duel's two requests for one judge are adjacent
    groups = [list(g) for _, g in groupby(range(len(prompts)), key=duel_judge.__getitem__)]
    results: list = [None] * len(prompts)
    lps = grouped_by_tokenizer(backend, [judges[g[0]] for g in groups], [[prompts[i] for i in g] for g in groups],
                               lambda j: (tuple(tokens[j].candidates), tokens[j].positions), s.judge_batch_size, tick)
    for g, group_lps in zip(groups, lps):
        for i, lp in zip(g, group_lps):
            if isinstance(lp, Failure):  # a remote backend could not score it: a failed judgment
                results[i] = (None, "failed", lp.error)
                continue
            dist = tokens[judges[i]].distribution(lp)
            results[i] = (expected_score(dist), "ok", " ".join(f"{p:.4f}" for p in dist))
    return results


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


def _generated_scores(backend, judges, prompts, s: ArenaSettings, seed: int, tick):
    generated = backend.generate(judges, prompts, max_new_tokens=s.judge_max_new_tokens,
                                 temperature=s.judge_temperature, top_p=1.0, batch_size=s.judge_batch_size,
                                 seed=seed + 1, progress=tick)
    results = []
    for g in generated:
        if g.text is None and g.error != "empty response":
            results.append((None, "failed", g.error))
            continue
        score = parse_judgment(g.text or "")
        results.append((score, "ok" if score is not None else "unparsed", g.text))
    return results


def _decide(duel: Duel, state: ReputationState, elo: EloParams, min_margin: float) -> None:
    """Aggregate, pick the outcome and update reputations (both sides from pre-duel ratings)."""
    if duel.response_a.text is None or duel.response_b.text is None:
        duel.outcome = "void:generation_failed"
        return
    valid = [j for j in duel.judgments if j.status == "ok"]
    scores_a = {j.judge: j.score for j in valid if j.target == "a"}
    scores_b = {j.judge: j.score for j in valid if j.target == "b"}
    agg = aggregate(scores_a, scores_b, state.ratings, elo.weighting)
    if agg is None:
        duel.outcome = "void:no_valid_judges"
        return
    duel.score_a, duel.score_b, duel.weights = agg
    if duel.score_a == duel.score_b:
        duel.outcome = "tie"
    elif abs(duel.score_a - duel.score_b) < min_margin:
        duel.outcome = "below_margin"
    else:
        duel.outcome = "a" if duel.score_a > duel.score_b else "b"
    duel.update = asdict(apply_duel(state, duel.a, duel.b, duel.score_a, duel.score_b, elo))
