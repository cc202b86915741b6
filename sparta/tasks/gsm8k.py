"""GSM8K (task `gsm8k`): combat prompts are the 7473 GSM8K train questions the paper uses (the SPARTA authors'
data/gsm8k/questions.json, shipped as sparta/_data/gsm8k/train_questions.json, questions only); dev/test are
the official 1319-question test set (openai/grade-school-math, sparta/_data/gsm8k/test.jsonl) split by hash
order. MIT."""

from __future__ import annotations

from pathlib import Path

from .common import DATA, CombatRows, Example, Task, _hash_split, _list, _norm, _read_json, _read_jsonl, _text
from .graders import gsm8k_gold

GSM8K_DEV = 300  # of the 1319 official test questions; the other 1019 are test


def _gsm8k_gold(answer: str, where: str) -> str:
    try:
        return gsm8k_gold(answer)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _gsm8k_test() -> list[tuple[str, str, str]]:
    path = DATA / "gsm8k/test.jsonl"
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        where = f"{path} row {i}"
        out.append((str(i), _text(row, "question", where), _gsm8k_gold(_text(row, "answer", where), where)))
    return out


def _gsm8k_combat(user_data: Path | None) -> CombatRows:
    path = DATA / "gsm8k/train_questions.json"
    test_questions = {_norm(q) for _, q, _ in _gsm8k_test()}
    out = []
    for i, row in enumerate(_list(_read_json(path), str(path))):
        where = f"{path} row {i}"
        question = _text(row, "input", where)
        if _norm(question) not in test_questions:
            out.append((str(i), f"{_text(row, 'instruction', where)}\n\n{question}", None))
    return out


def _gsm8k_examples(split: str, user_data: Path | None) -> list[Example]:
    rows = _gsm8k_test()
    dev, test = _hash_split([key for key, _, _ in rows], "gsm8k", (GSM8K_DEV,))
    chosen = set(dev if split == "dev" else test)
    return [
        Example(f"gsm8k:{split}:{key}", question, answer, meta={"source": "gsm8k/test.jsonl", "row": int(key)})
        for key, question, answer in rows
        if key in chosen
    ]


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, Task] = {
    "gsm8k": Task(
        "gsm8k", "gsm8k", "accuracy",
        "GSM8K train questions (7473; the paper's pool, sparta/_data/gsm8k/train_questions.json)",
        "dev/test: the official 1319-question test set split by a fixed sha256 order of row numbers, 300 dev / "
        "1019 test (the paper evaluates on the test set; dev is for member selection). Gold: the number after "
        "'####', commas and '$' removed. Train and test are disjoint (train questions equal to a test question "
        "would be dropped; there are none). Combat prompts have no gold answers (only questions ship).",
        _gsm8k_combat, _gsm8k_examples,
    ),
}
