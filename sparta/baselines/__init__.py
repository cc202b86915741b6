"""The paper's self-alignment baselines (docs/baselines.md), run in place of combat when `method` is not sparta.

Each member makes its own training rows from its own samples and is trained on those alone: `self_rewarding`
(the member judges its own samples, best vs worst), `meta_rewarding` (adds its judgments' own judge: judge
pairs beside the answer pairs), `spin` (the prompt's reference answer vs the member's own answer) and `sppo`
(the other members judge each sample; SPPO's loss on the win rates). `samples` holds what they share: sampling,
the samples file and the pair rows. `BASELINES` says, per method, what the pipeline runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..arena.combat import ArenaSettings
from ..config import RunConfig
from .meta_rewarding import judge_own_n, meta_judge, meta_rewarding_pairs
from .self_rewarding import best_vs_worst, judge_own
from .spin import reference_vs_own
from .sppo import judge_by_peers, sppo_rows


@dataclass(frozen=True)
class Context:
    """What a method's stages and pair rule read besides the samples."""

    config: RunConfig
    members: list[str]
    settings: ArenaSettings
    references: dict[str, str]  # spin: prompt id -> reference answer (empty for the others)
    progress: object = None


@dataclass(frozen=True)
class Stage:
    """A stage after sampling: its done-marker, the label of its seed, and what it does to the samples
    `run(backend, samples, context, seed) -> samples` (the samples file is rewritten whole after it)."""

    name: str
    seed_label: str
    run: Callable


@dataclass(frozen=True)
class Baseline:
    samples: Callable[[RunConfig], int]  # answers per prompt and member
    stages: tuple[Stage, ...]
    rows: Callable  # (samples, iteration, context) -> (training rows, skip counts by reason)
    loss: str = "dpo"  # or "sppo": the training job
    needs_references: bool = False


BASELINES = {
    "self_rewarding": Baseline(
        lambda c: c.baseline.samples,
        (Stage("judge", "self-judge", lambda b, s, x, seed: judge_own(b, s, x.settings, seed, x.progress)),),
        lambda s, t, x: best_vs_worst(s, t, x.config.arena.min_margin)),
    "meta_rewarding": Baseline(
        lambda c: c.baseline.samples,
        (Stage("judge", "self-judge", lambda b, s, x, seed: judge_own_n(b, s, x.settings, x.config.baseline.judgments,
                                                                        seed, x.progress)),
         Stage("meta_judge", "meta-judge", lambda b, s, x, seed: meta_judge(b, s, x.settings, x.progress))),
        lambda s, t, x: meta_rewarding_pairs(s, t, x.config.arena.min_margin, x.config.baseline.length_tolerance,
                                             x.settings.judge_max_prompt_tokens)),
    "spin": Baseline(lambda c: 1, (), lambda s, t, x: reference_vs_own(s, x.references, t), needs_references=True),
    "sppo": Baseline(
        lambda c: c.baseline.samples,
        (Stage("judge", "peer-judge", lambda b, s, x, seed: judge_by_peers(b, s, x.members, x.settings, seed,
                                                                           x.progress)),),
        lambda s, t, x: sppo_rows(s, t), loss="sppo"),
}
