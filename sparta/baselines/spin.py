"""SPIN (Chen et al. 2024): the prompt's reference answer is chosen over the member's own answer; DPO's loss with
the previous iteration's model as reference is SPIN's logistic loss (docs/baselines.md)."""

from __future__ import annotations

from ..records import Prompt
from .samples import Sample, pair_row


def check_references(pool: list[Prompt], references: dict[str, str], source: str) -> None:
    """SPIN needs a reference answer for every prompt it may draw: fail before anything is loaded."""
    missing = [p.id for p in pool if p.id not in references]
    if missing:
        raise ValueError(f"method=spin needs a reference answer for every prompt, and {len(missing)} of the "
                         f"{len(pool)} prompts of data.prompts={source!r} have none (first: {missing[0]}); use a "
                         "pool with references (docs/baselines.md)")


def reference_vs_own(samples: list[Sample], references: dict[str, str], iteration: int
                     ) -> tuple[list[dict], dict[str, int]]:
    """One pair per generated sample: chosen = the reference answer, rejected = the member's answer."""
    pairs, skipped = [], {"generation_failed": 0}
    for s in samples:
        if s.response.text is None:
            skipped["generation_failed"] += 1
            continue
        pairs.append(pair_row("spin", iteration, s, references[s.prompt_id], s.response.text,
                              chosen_model=None, rejected_model=s.member, rejected_sample=s.sample))
    return pairs, skipped
