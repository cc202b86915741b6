"""The paper's self-alignment baselines (docs/baselines.md): each member samples its own answers, and makes its own
training rows from them, which it alone trains on. The pure parts (judging one's own samples, pair rules) live in
sparta.baselines; here each method wires them into an iteration.

RUN/iter_t/samples.jsonl is written after sampling (stage "generate"), then rewritten whole after each of the
method's `stages` (self_rewarding's own judgments; meta_rewarding's, then its meta-judge's; sppo's peers', with
the win rates they give). Each stage's output is whole or absent, so a kill redoes at most the stage it cut
short, with the same seeds. Baselines have no reputations: iter_t/reputations.json is the iteration's start
state, unchanged, so everything that reads reputations still finds them.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from ..backends import check_generations
from ..baselines.meta_rewarding import judge_own_n, meta_judge, meta_rewarding_pairs
from ..baselines.samples import Sample, draw_samples, own_pairs, to_row
from ..baselines.self_rewarding import best_vs_worst, judge_own
from ..baselines.spin import reference_vs_own
from ..baselines.sppo import judge_by_peers, sppo_rows
from ..config import RunConfig
from ..records import Prompt, judgment_counts, read_jsonl, response_counts, write_json_atomic, write_jsonl_atomic
from ..seeding import derive_seed
from .base import Engine, Played


@dataclass(frozen=True)
class Stage:
    """A stage after sampling: its done-marker, which is also the name of the method that runs it
    (`(backend, samples, seed, engine) -> samples`), and the label of its seed."""

    name: str
    seed_label: str


class SelfAlignment:
    """What the baselines share: sampling, the stages, the pair rule, the counts. A subclass names itself and
    gives `rows` (and `stages`, `samples_per_prompt`, `loss`, `needs_references` where it differs)."""

    name = ""
    loss = "dpo"
    has_reputations = False
    needs_references = False
    stages: tuple[Stage, ...] = ()

    def __init__(self, config: RunConfig):
        self.c = config

    def samples_per_prompt(self) -> int:
        return self.c.baseline.samples

    def rows(self, samples: list[Sample], t: int, engine: Engine) -> tuple[list[dict], dict[str, int]]:
        """The training rows and the skip counts by reason: a pure function of the samples (a resumed run recounts
        the same skips; it trains on pairs.jsonl)."""
        raise NotImplementedError

    def rows_for(self, member: str, rows: list[dict]) -> list[dict]:
        return own_pairs(member, rows)  # self-alignment, whatever training.pairs says

    def play(self, engine: Engine, t: int, prompts: list[Prompt], timings: dict) -> Played:
        samples = self.samples(engine, t, prompts, timings)
        rows, skipped = self.rows(samples, t, engine)
        return Played(rows, functools.partial(baseline_counts, self.name, samples, skipped))

    def samples(self, engine: Engine, t: int, prompts: list[Prompt], timings: dict) -> list[Sample]:
        c, run = self.c, engine.run
        path = run.samples(t)
        if not run.is_done(t, "generate"):
            clock = time.perf_counter()
            samples = draw_samples(engine.backend_at(t), engine.members, prompts, self.samples_per_prompt(),
                                   c.generation, derive_seed(c.seed, t, "samples"), engine.progress)
            check_generations([s.response for s in samples])
            write_jsonl_atomic(path, [to_row(s) for s in samples])
            run.mark_done(t, "generate")
            timings["generate"] = time.perf_counter() - clock
        samples = [Sample.from_dict(row) for row in read_jsonl(path)]
        for stage in self.stages:
            if not run.is_done(t, stage.name):
                clock = time.perf_counter()
                samples = getattr(self, stage.name)(engine.backend_at(t), samples,
                                                    derive_seed(c.seed, t, stage.seed_label), engine)
                write_jsonl_atomic(path, [to_row(s) for s in samples])
                run.mark_done(t, stage.name)
                timings[stage.name] = time.perf_counter() - clock
        if not run.is_done(t, "reputations"):
            write_json_atomic(run.reputations(t), engine.start_state(t).to_dict())
            run.mark_done(t, "reputations")
        return samples


class SelfRewarding(SelfAlignment):
    """Each member judges its own samples; its best vs its worst (docs/baselines.md)."""

    name = "self_rewarding"
    stages = (Stage("judge", "self-judge"),)

    def judge(self, backend, samples: list[Sample], seed: int, engine: Engine) -> list[Sample]:
        return judge_own(backend, samples, self.c.judge, seed, engine.progress)

    def rows(self, samples, t, engine):
        return best_vs_worst(samples, t, self.c.arena.min_margin)


class MetaRewarding(SelfAlignment):
    """Self-rewarding whose judgments are judged too: judge pairs beside the answer pairs."""

    name = "meta_rewarding"
    stages = (Stage("judge", "self-judge"), Stage("meta_judge", "meta-judge"))

    def judge(self, backend, samples: list[Sample], seed: int, engine: Engine) -> list[Sample]:
        return judge_own_n(backend, samples, self.c.judge, self.c.baseline.judgments, seed, engine.progress)

    def meta_judge(self, backend, samples: list[Sample], seed: int, engine: Engine) -> list[Sample]:
        return meta_judge(backend, samples, self.c.judge, engine.progress)

    def rows(self, samples, t, engine):
        return meta_rewarding_pairs(samples, t, self.c.arena.min_margin, self.c.baseline.length_tolerance,
                                    self.c.judge.max_prompt_tokens)


class Spin(SelfAlignment):
    """The prompt's reference answer vs the member's own answer (one sample per prompt)."""

    name = "spin"
    needs_references = True

    def samples_per_prompt(self) -> int:
        return 1

    def rows(self, samples, t, engine):
        return reference_vs_own(samples, engine.references, t)


class SPPO(SelfAlignment):
    """The other members judge each sample; SPPO's loss on the win rates they give (docs/sppo.md)."""

    name = "sppo"
    loss = "sppo"
    stages = (Stage("judge", "peer-judge"),)

    def judge(self, backend, samples: list[Sample], seed: int, engine: Engine) -> list[Sample]:
        return judge_by_peers(backend, samples, engine.members, self.c.judge, seed, engine.progress)

    def rows(self, samples, t, engine):
        return sppo_rows(samples, t)


def baseline_counts(method: str, samples: list[Sample], skipped: dict[str, int], pairs: list[dict]) -> dict:
    """A baseline iteration's counts: samples (failed ones among them), pairs, prompts skipped and why."""
    responses = [s.response for s in samples]
    battles = [b for s in samples if s.meta for b in s.meta["battles"]]
    roles = {r: sum(p.get("role") == r for p in pairs) for r in ("actor", "judge")}  # meta_rewarding's two kinds
    return {
        "method": method, "samples": len(samples), "failed": sum(r.text is None for r in responses),
        "pairs": len(pairs), "skipped": skipped,
        **({"pairs_by_role": roles} if any(roles.values()) else {}),
        "responses": response_counts(responses),
        "judgments": judgment_counts([j for s in samples for j in s.verdicts]),
        **({"meta_judgments": {"samples": sum(s.meta is not None for s in samples), "battles": len(battles),
                               "failed": sum(b["p_a"] is None for b in battles)}}
           if method == "meta_rewarding" else {}),
    }
