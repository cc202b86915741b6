"""MedQA (task `medqa`): dev/test are the 1273 official MedQA-US 4-option test questions
(sparta/_data/medqa/us_4opt_dev_test.json, via Model Collaboration); combat prompts are the user's MedQA-US
train file if present, else 1200 other MedQA questions (Model Swarms' medqa.json, sparta/_data/medqa/
pool_dev_test.json) as multiple-choice prompts. MIT / Apache-2.0."""

from __future__ import annotations

from pathlib import Path

from .common import (
    _MC_NOTE,
    DATA,
    SPLITS,
    CombatRows,
    Example,
    Task,
    UserFile,
    _mc_dev_test,
    _mc_fields,
    _norm,
    _read_json,
    _read_jsonl,
    _splits,
    _user_file,
    format_mc,
)

MEDQA_TRAIN_FILE = UserFile(
    "medqa/US/4_options/phrases_no_exclude_train.jsonl",
    'JSON lines: {"question": str, "options": {"A".."D": str}, "answer_idx": "A".."D", "answer": str, '
    '"meta_info": str} (the official MedQA release format)',
    "MedQA (Jin et al. 2021): github.com/jind11/MedQA, data_clean/questions/US/4_options/"
    "phrases_no_exclude_train.jsonl. Optional: without it, medqa combat prompts are the shipped "
    "medqa/pool_dev_test.json questions",
)


def _medqa_examples(split: str, user_data: Path | None) -> list[Example]:
    return _mc_dev_test(DATA / "medqa/us_4opt_dev_test.json", "medqa", split, id_key="id")


def _medqa_combat(user_data: Path | None) -> CombatRows:
    held_out = {_norm(e.question) for split in SPLITS for e in _medqa_examples(split, None)}
    user = _user_file("medqa", MEDQA_TRAIN_FILE, user_data, required=False)
    rows: list[tuple[str, str, dict, str]] = []
    if user is not None:
        for i, row in enumerate(_read_jsonl(user)):
            question, choices, answer = _mc_fields(row, f"{user} row {i}", "answer_idx", "options")
            rows.append((f"user:{i}", question, choices, answer))
    else:
        path = DATA / "medqa/pool_dev_test.json"
        data = _splits(_read_json(path), path, SPLITS)
        for split in SPLITS:
            for i, row in enumerate(data[split]):
                where = f"{path} [{split!r}] row {i}"
                question, choices, answer = _mc_fields(row, where)
                if not isinstance(row.get("id"), int):
                    raise ValueError(f"{where}: field 'id' must be an integer, got {row.get('id')!r}")
                rows.append((str(row["id"]), question, choices, answer))
    return [(key, format_mc(q, c), a) for key, q, c, a in rows if _norm(q) not in held_out]


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, Task] = {
    "medqa": Task(
        "medqa", "mc", "accuracy",
        "user MedQA-US train (medqa/US/4_options/phrases_no_exclude_train.jsonl) if present, else the 1200 "
        "shipped MedQA questions of medqa/pool_dev_test.json (both its splits), as format_mc prompts",
        "eval: MedQA-US 4-option, the 1273 official test questions, dev 636 / test 637 (the file's split). The "
        "default combat pool is other MedQA questions (Model Swarms' medqa.json), disjoint from the eval set; "
        "combat questions equal to an eval question are dropped. Combat references: the answer letter. "
        + _MC_NOTE,
        _medqa_combat, _medqa_examples, user_files=(MEDQA_TRAIN_FILE,),
    ),
}
