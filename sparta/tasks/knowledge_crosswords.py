"""Knowledge Crosswords (task `knowledge_crosswords`): nothing ships (no license stated). Combat prompts are
read from the user's knowledge_crosswords/train.json (the SPARTA authors' data/ layout), dev/test from the
user's eval/knowledge_crosswords.json (Model Swarms' data/eval format, its own split)."""

from __future__ import annotations

from pathlib import Path

from .common import _MC_NOTE, LETTERS, CombatRows, Example, Task, UserFile, _mc_dev_test, _read_json, _text, _user_file

KC_TRAIN_FILE = UserFile(
    "knowledge_crosswords/train.json",
    'JSON {"train": [{"prompt": str (constraints, options and instruction), "completion": "A".."D"}]} '
    "(the SPARTA authors' data/ layout)",
    "github.com/yurujiang2003/sparta, data/knowledge_crosswords/train.json (Knowledge Crosswords, Ding et al. "
    "2024; no license stated, so sparta cannot ship it)",
)
KC_EVAL_FILE = UserFile(
    "eval/knowledge_crosswords.json",
    'JSON {"dev": [{"question": str, "choices": {"A".."D": str}, "answer": "A".."D"}], "test": [...]} '
    "(Model Swarms' data/eval format)",
    "github.com/BunsenFeng/model_swarm, data/eval/knowledge_crosswords.json (Knowledge Crosswords, no license "
    "stated)",
)


def _kc_combat(user_data: Path | None) -> CombatRows:
    path = _user_file("knowledge_crosswords", KC_TRAIN_FILE, user_data)
    assert path is not None
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("train"), list):
        raise ValueError(f"{path}: expected a JSON object with a list 'train'")
    out = []
    for i, row in enumerate(data["train"]):
        where = f"{path} ['train'] row {i}"
        completion = _text(row, "completion", where).strip()
        if completion not in LETTERS:
            raise ValueError(f"{where}: field 'completion' must be an option letter, got {completion!r}")
        out.append((str(i), _text(row, "prompt", where), completion))
    return out


def _kc_examples(split: str, user_data: Path | None) -> list[Example]:
    path = _user_file("knowledge_crosswords", KC_EVAL_FILE, user_data)
    assert path is not None
    return _mc_dev_test(path, "knowledge_crosswords", split)


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, Task] = {
    "knowledge_crosswords": Task(
        "knowledge_crosswords", "mc", "accuracy",
        "user knowledge_crosswords/train.json 'train' prompts (the SPARTA authors' layout), verbatim",
        "Not shipped (no license). eval: the user's eval/knowledge_crosswords.json (Model Swarms' format), its "
        "own dev/test split. Overlap between the authors' train prompts and Model Swarms' eval items cannot be "
        "checked offline; check it on your copy. Combat references: the completion letter. " + _MC_NOTE,
        _kc_combat, _kc_examples, user_files=(KC_TRAIN_FILE, KC_EVAL_FILE), requires_user_data=True,
    ),
}
