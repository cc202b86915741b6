"""SPARTA: the pool duels on each prompt; reputation-weighted peer judgments move reputations and make the
preference pairs every member trains on.

An iteration's duels are fought in rounds of `arena.round_size`, each on one match-making snapshot, and
journaled a round at a time (RUN/iter_t/combat.jsonl). A resumed run replays the journal's updates, which must
give the logged reputations bit for bit, and fights only the rounds that are missing.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

from ..arena.combat import round_matches, run_round
from ..arena.judges import position_bias_counts
from ..arena.matchmaking import leader_order
from ..arena.reputation import ReputationState, apply_duel
from ..backends import check_generations
from ..config import RunConfig
from ..pairs import pairs_for, preference_pairs
from ..records import (
    Duel,
    Prompt,
    append_jsonl,
    judgment_counts,
    read_jsonl,
    response_counts,
    to_json,
    write_json_atomic,
    write_jsonl_atomic,
)
from ..rundir import RunDirError
from ..seeding import derive_seed, rng
from .base import Engine, Played


class Sparta:
    name = "sparta"
    loss = "dpo"
    has_reputations = True
    needs_references = False

    def __init__(self, config: RunConfig):
        self.c = config

    def play(self, engine: Engine, t: int, prompts: list[Prompt], timings: dict) -> Played:
        duels = self.combat(engine, t, prompts, timings)[1]
        return Played(preference_pairs(duels),
                      functools.partial(combat_counts, duels, pairwise=self.c.judge.mode == "pairwise"))

    def rows_for(self, member: str, rows: list[dict]) -> list[dict]:
        return pairs_for(member, rows, self.c.training.pairs)

    def combat(self, engine: Engine, t: int, prompts: list[Prompt], timings: dict) -> tuple[ReputationState,
                                                                                             list[Duel]]:
        run, elo = engine.run, self.c.reputation
        journal = run.journal(t)
        duels = self._read_journal(journal, len(prompts))
        state = engine.start_state(t)
        for d in duels:  # replay the journal: the same updates give the same state, bit for bit
            if d.update is not None:
                again = asdict(apply_duel(state, d.a, d.b, d.score_a, d.score_b, elo))
                if again != d.update:
                    raise RunDirError(f"{journal}: duel {d.index} does not replay to its logged update; "
                                      "the run directory is corrupt or was made by other code")
        if not run.is_done(t, "combat"):
            self._fight(engine, t, prompts, state, duels, journal, timings)
            check_generations([r for d in duels for r in (d.response_a, d.response_b)])
            write_json_atomic(run.reputations(t), state.to_dict())
            run.mark_done(t, "combat")
        return state, duels

    def _read_journal(self, journal: Path, n_prompts: int) -> list[Duel]:
        """The journaled duels of complete rounds; a round cut short by a kill is dropped from the file."""
        duels = [Duel.from_dict(row) for row in read_jsonl(journal, journal=True)]
        size = self.c.arena.round_size
        expected = {r: min(size, n_prompts - r * size) for r in range(-(-n_prompts // size))}
        counts: dict[int, int] = {}
        for d in duels:
            counts[d.round] = counts.get(d.round, 0) + 1
        complete = [d for d in duels if counts[d.round] == expected.get(d.round)]
        if len(complete) != len(duels):
            write_jsonl_atomic(journal, [to_json(d) for d in complete])
        return complete

    def _fight(self, engine: Engine, t, prompts, state, duels, journal, timings) -> None:
        c = self.c
        leaders = leader_order(engine.members, len(prompts), rng(c.seed, t, "leaders"))
        tick = engine.progress("combat", len(prompts))
        if tick and duels:
            tick(len(duels))
        done_rounds = {d.round for d in duels}
        size = c.arena.round_size
        for r, start in enumerate(range(0, len(prompts), size)):
            if r in done_rounds:
                continue
            matches = round_matches(prompts, leaders, range(start, min(start + size, len(prompts))), state.ratings,
                                    c.arena, rng(c.seed, t, "opponents", r))
            new = run_round(engine.backend_at(t), matches, engine.members, state, c.reputation, c.generation,
                            c.judge, c.arena.min_margin, derive_seed(c.seed, t, "round", r), r, t, engine.progress,
                            timings)
            append_jsonl(journal, [to_json(d) for d in new])
            duels += new
            if tick:
                tick(len(new))


def combat_counts(duels: list[Duel], pairs: list[dict], pairwise: bool = False) -> dict:
    """metrics.json's counts of an iteration; pairwise judging adds each judge's position bias."""
    responses = [r for d in duels for r in (d.response_a, d.response_b)]
    judgments = [j for d in duels for j in d.judgments]
    outcomes: dict[str, int] = {}
    for d in duels:
        outcomes[d.outcome] = outcomes.get(d.outcome, 0) + 1
    counts = {
        "duels": len(duels), "outcomes": outcomes, "pairs": len(pairs),
        "tie_rate": outcomes.get("tie", 0) / len(duels) if duels else 0.0,
        "responses": response_counts(responses), "judgments": judgment_counts(judgments),
    }
    if pairwise:
        counts["position_bias"] = position_bias_counts(judgments)
    return counts
