"""SPPO (Wu et al. 2024) on a pool: each member samples K answers per prompt, every other member judges each of
them (the pool as SPPO's preference model), their scores give each sample its win rate P̂ among the member's own
samples of that prompt, and the member regresses its log-ratios on η (P̂ − ½) (docs/sppo.md)."""

from __future__ import annotations

from dataclasses import replace
from itertools import groupby

from ..arena.judges import JudgeAsk, judge_asks
from ..config import JudgeConfig
from ..pairs import win_probabilities
from .samples import Sample


def judge_by_peers(backend, samples: list[Sample], members: list[str], judge: JudgeConfig, seed: int,
                   progress=None) -> list[Sample]:
    """Every generated sample scored by every member but its author (failed generations are never judged), and
    the win rates those scores give."""
    todo = [i for i, s in enumerate(samples) if s.status == "generated"]
    by_prompt = [list(g) for _, g in groupby(todo, key=lambda i: samples[i].prompt_id)]  # samples are prompt-major
    # prompt, then judge, then sample: a judge's asks of one prompt are adjacent and share a group, so logprob
    # mode runs the judge prompt's common prefix (instructions and question) once per judge and prompt
    keys = [(i, judge) for group in by_prompt for judge in members for i in group if samples[i].member != judge]
    asks = [JudgeAsk(judge, samples[i].prompt, samples[i].response.text, samples[i].prompt_id, "peer")
            for i, judge in keys]
    verdicts: dict[int, list] = {i: [] for i in todo}
    for (i, _), judgment in zip(keys, judge_asks(backend, asks, judge, seed, progress)):
        verdicts[i].append(judgment)  # in the members' order
    out = list(samples)
    for i in todo:
        out[i] = replace(samples[i], judgments=verdicts[i], status="judged")
    return with_win_probabilities(out)


def with_win_probabilities(samples: list[Sample]) -> list[Sample]:
    """P̂ for each judged sample, among its member's judged samples of the prompt; only ok judgments count."""
    out = list(samples)
    judged = [i for i, s in enumerate(samples) if s.status == "judged"]
    for _, group in groupby(judged, key=lambda i: (samples[i].member, samples[i].prompt_id)):
        group = list(group)
        table = [{j.judge: j.score if j.status == "ok" else None for j in samples[i].judgments} for i in group]
        for i, p in zip(group, win_probabilities(table)):
            out[i] = replace(out[i], win_prob=p)
    return out


def sppo_rows(samples: list[Sample], iteration: int) -> tuple[list[dict], dict[str, int]]:
    """What each member trains on: every generated sample of its own, as a trl prompt-completion dict with its
    win rate (None kept: train_sppo leaves it out and counts it). Counted: samples without text or win rate."""
    rows, skipped = [], {"generation_failed": 0, "no_win_prob": 0}
    for s in samples:
        if s.response.text is None:
            skipped["generation_failed"] += 1
            continue
        skipped["no_win_prob"] += s.win_prob is None
        rows.append({"prompt": [{"role": "user", "content": s.prompt}],
                     "completion": [{"role": "assistant", "content": s.response.text}], "win_prob": s.win_prob,
                     "prompt_id": s.prompt_id, "iteration": iteration, "method": "sppo", "member": s.member,
                     "sample": s.sample})
    return rows, skipped
