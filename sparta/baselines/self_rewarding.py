"""Self-rewarding (Yuan et al. 2024): each member samples several answers per prompt, judges each of them itself
with the arena's judge, and trains on its best-scored answer over its worst (docs/baselines.md)."""

from __future__ import annotations

from dataclasses import replace
from itertools import groupby

from ..arena.judges import JudgeAsk, judge_asks
from ..config import JudgeConfig
from .samples import Sample, pair_row

STATUS = {"ok": "scored", "unparsed": "judgment_unparsed", "failed": "judgment_failed"}


def judge_own(backend, samples: list[Sample], judge: JudgeConfig, seed: int, progress=None) -> list[Sample]:
    """Every generated sample judged by the member that wrote it; failed generations are never judged."""
    todo = [i for i, s in enumerate(samples) if s.status == "generated"]
    # group: one member's samples of one prompt share the judge prompt's question (logprob mode runs it once)
    asks = [JudgeAsk(samples[i].member, samples[i].prompt, samples[i].response.text, samples[i].prompt_id, "self")
            for i in todo]
    out = list(samples)
    for i, judgment in zip(todo, judge_asks(backend, asks, judge, seed, progress)):
        out[i] = replace(samples[i], judgment=judgment, status=STATUS[judgment.status])
    return out


def best_vs_worst(samples: list[Sample], iteration: int, min_margin: float) -> tuple[list[dict], dict[str, int]]:
    """One pair per (member, prompt): its highest-scored sample over its lowest (the first of equals). Skipped,
    and counted by reason: fewer than two scored samples, all scores equal, or a gap below `min_margin`."""
    pairs, skipped = [], {"fewer_than_2_scored": 0, "tie": 0, "below_margin": 0}
    for _, group in groupby(samples, key=lambda s: (s.member, s.prompt_id)):
        scored = [s for s in group if s.score is not None]
        if len(scored) < 2:
            skipped["fewer_than_2_scored"] += 1
            continue
        best, worst = max(scored, key=lambda s: s.score), min(scored, key=lambda s: s.score)
        margin = best.score - worst.score
        if margin == 0 or margin < min_margin:
            skipped["tie" if margin == 0 else "below_margin"] += 1
            continue
        pairs.append(pair_row("self_rewarding", iteration, best, best.response.text, worst.response.text,
                              chosen_model=best.member, rejected_model=worst.member, chosen_sample=best.sample,
                              rejected_sample=worst.sample, score_chosen=best.score, score_rejected=worst.score,
                              margin=margin))
    return pairs, skipped
