"""One round of duels: both contestants answer, every other member judges both answers, reputations move.

Generation and judging are batched across all duels of the round; the verdicts and reputation updates
are then applied in duel order, so the weights of a duel are the judges' reputations at that point (or 1
each with reputation.weighting=uniform).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..chat import PromptTooLong, encode_chat
from ..config import ArenaConfig, GenerationConfig, JudgeConfig
from ..records import Duel, Judgment, Prompt, Response
from .judges import JudgeAsk, PairAsk, judge_asks, judge_pairs
from .judging import aggregate
from .matchmaking import pick_opponent
from .reputation import EloParams, ReputationState, apply_duel


@dataclass(frozen=True)
class Match:
    index: int
    prompt: Prompt
    a: str
    b: str


def round_matches(prompts: list[Prompt], leaders: list[str], indices: range, ratings: dict[str, float],
                  arena: ArenaConfig, draw) -> list[Match]:
    """The matches of one round, duels `indices`: each leader's opponent is picked (alpha, k) on the reputations as
    they are at the start of the round, drawn from the `random.Random` `draw`."""
    snapshot = dict(ratings)  # the round's updates must not move the k-nearest sets of its later picks
    return [Match(i, prompts[i], leaders[i], pick_opponent(leaders[i], snapshot, arena.alpha, arena.k, draw))
            for i in indices]


def run_round(backend, matches: list[Match], members: list[str], state: ReputationState, elo: EloParams,
              gen: GenerationConfig, judge: JudgeConfig, min_margin: float, seed: int, round_no: int,
              iteration: int, progress=None, timings: dict | None = None) -> list[Duel]:
    """Fight `matches`, mutating `state` in duel order. Returns one combat-log row per match.
    Seconds spent generating, judging and updating reputations are added to `timings`."""
    timings = {} if timings is None else timings
    clock = time.perf_counter()
    responses = _combat(backend, matches, gen, seed, progress)
    timings["generate"] = timings.get("generate", 0.0) + time.perf_counter() - clock
    clock = time.perf_counter()
    judgments = _judge(backend, matches, responses, members, judge, seed, progress)
    timings["judge"] = timings.get("judge", 0.0) + time.perf_counter() - clock
    clock = time.perf_counter()
    duels = []
    for m in matches:
        ra, rb = responses[(m.index, "a")], responses[(m.index, "b")]
        duel = Duel(iteration, round_no, m.index, m.prompt.id, m.prompt.text, m.a, m.b, ra, rb,
                    judgments.get(m.index, []))
        decide(duel, state, elo, min_margin)
        duels.append(duel)
    timings["reputation"] = timings.get("reputation", 0.0) + time.perf_counter() - clock
    return duels


def _combat(backend, matches, gen: GenerationConfig, seed: int, progress) -> dict[tuple[int, str], Response]:
    keys = [(m.index, side) for m in matches for side in ("a", "b")]
    asks = [(member, m.prompt.text) for m in matches for member in (m.a, m.b)]
    return dict(zip(keys, generate_responses(backend, asks, gen, seed, progress)))


def generate_responses(backend, asks: list[tuple[str, str]], gen: GenerationConfig, seed: int, progress
                       ) -> list[Response]:
    """One sampled answer per (member, prompt text), in order, all in one batched call. A prompt that cannot be
    encoded is a failed Response (never generated, never judged)."""
    requests, positions = [], []
    responses: list[Response | None] = [None] * len(asks)
    for i, (member, text) in enumerate(asks):
        try:
            enc = encode_chat(backend.tokenizer(member), [("user", "{0}")], [text], max_tokens=gen.max_prompt_tokens)
        except PromptTooLong as e:
            responses[i] = Response(member, None, error=str(e))
            continue
        requests.append((member, enc))
        positions.append(i)
    generated = backend.generate([r[0] for r in requests], [r[1].ids for r in requests],
                                 max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                                 batch_size=gen.batch_size, seed=seed,
                                 progress=progress and progress("generate", len(requests)))
    for i, (member, enc), g in zip(positions, requests, generated):
        responses[i] = Response(member, g.text, g.error, g.finish_reason, g.n_tokens, enc.shortened)
    return responses  # type: ignore[return-value]


def _judge(backend, matches, responses, members, judge: JudgeConfig, seed: int, progress
           ) -> dict[int, list[Judgment]]:
    """Every member that did not fight scores each response of every duel whose responses both exist (pairwise:
    compares the two, giving a Judgment of each)."""
    judged = [m for m in matches if responses[(m.index, "a")].text is not None
              and responses[(m.index, "b")].text is not None]  # a failed generation voids the duel: nothing is judged
    out: dict[int, list[Judgment]] = {}
    if judge.mode == "pairwise":
        pair_asks = [(m.index, PairAsk(j, m.prompt.text, responses[(m.index, "a")].text,
                                       responses[(m.index, "b")].text))
                     for m in judged for j in members if j not in (m.a, m.b)]
        verdicts = judge_pairs(backend, [ask for _, ask in pair_asks], judge, progress)
        for (index, _), both in zip(pair_asks, verdicts):
            out.setdefault(index, []).extend(both)
        return out
    asks = [JudgeAsk(j, m.prompt.text, responses[(m.index, side)].text, m.index, side) for m in judged
            for j in members if j not in (m.a, m.b) for side in ("a", "b")]
    for ask, judgment in zip(asks, judge_asks(backend, asks, judge, seed, progress)):
        out.setdefault(ask.group, []).append(judgment)
    return out


def decide(duel: Duel, state: ReputationState, elo: EloParams, min_margin: float) -> None:
    """Aggregate, pick the outcome and update reputations (both sides from pre-duel ratings). Shared by combat and
    `sparta simulate`, so that the simulation decides duels exactly as a run does."""
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
