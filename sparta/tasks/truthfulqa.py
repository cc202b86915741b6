"""TruthfulQA (task `truthfulqa`): combat prompts are the paper's 7200 TruthfulQA prompts (the SPARTA authors'
data/truthfulqa/data_train.jsonl, shipped as sparta/_data/truthfulqa/sparta_train_prompts.jsonl) minus those
about a test question; dev/test are TruthfulQA MC1 in Model Swarms' split (sparta/_data/truthfulqa/
mc1_dev_test.json). Apache-2.0."""

from __future__ import annotations

import re
from pathlib import Path

from .common import _MC_NOTE, DATA, CombatRows, Example, Task, _mc_dev_test, _norm, _read_jsonl, _text

_TRUTHFULQA_PROMPT = re.compile(r"Q: (?P<q>.*?)\nA: (?P<a>.*)\nTrue:\nJustify whether the answer is true\?", re.S)


def _truthfulqa_examples(split: str, user_data: Path | None) -> list[Example]:
    return _mc_dev_test(DATA / "truthfulqa/mc1_dev_test.json", "truthfulqa", split)


def _truthfulqa_combat(user_data: Path | None) -> CombatRows:
    path = DATA / "truthfulqa/sparta_train_prompts.jsonl"
    test_questions = {_norm(e.question) for e in _truthfulqa_examples("test", None)}
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        text = _text(row, "question", f"{path} row {i}")
        match = _TRUTHFULQA_PROMPT.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{path} row {i}: not of the form 'Q: ...\\nA: ...\\nTrue:\\nJustify ...': {text[:80]!r}")
        if _norm(match.group("q")) not in test_questions:
            out.append((str(i), text, None))
    return out


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, Task] = {
    "truthfulqa": Task(
        "truthfulqa", "mc", "accuracy",
        "the paper's TruthfulQA prompts ('Q: ..\\nA: ..\\nTrue:\\nJustify whether the answer is true?', "
        "sparta_train_prompts.jsonl) minus every prompt about a test question",
        "eval: TruthfulQA MC1 (Model Swarms' split), dev 200 / test 617. The paper's 7200 combat prompts cover "
        "all 817 questions, so training on all of them makes any TruthfulQA evaluation transductive; by default "
        "we keep only the 1747 prompts whose question is not a test question (1739 about dev questions, 8 about "
        "'Are all plants plants?', which is not in TruthfulQA): test is held out, dev is NOT (dev and test "
        "together are all 817 questions) -- report test. Combat prompts have no gold truth labels. " + _MC_NOTE,
        _truthfulqa_combat, _truthfulqa_examples,
    ),
}
