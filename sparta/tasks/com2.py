"""COM2 (task `com2`): combat prompts are the 7200 COM2 generative prompts with `gold` references (the SPARTA
authors' data/com2/train.json, shipped as sparta/_data/com2/train.json); dev/test are COM2 as 5-way multiple
choice (Heterogeneous Swarms' com2.json, sparta/_data/com2/mc_dev_test.json) with a free-text form of each
item for the judged score. MIT (COM2; built on ATOMIC, CC-BY-4.0)."""

from __future__ import annotations

from pathlib import Path

from .common import _MC_NOTE, DATA, CombatRows, Example, Task, _list, _mc_dev_test, _read_json, _text

COM2_INSTRUCTION = (  # the preamble of every COM2 combat prompt (com2/train.json); reused for the free-text form
    "As an expert in commonsense reasoning, your task is to provide a concise response to a question based on "
    "the given context. The question focuses on studying the causes, effects, or attributes of personas related "
    "to the given context. "
)


def _com2_combat(user_data: Path | None) -> CombatRows:
    path = DATA / "com2/train.json"
    out = []
    for i, row in enumerate(_list(_read_json(path), str(path))):
        where = f"{path} row {i}"
        out.append((str(i), _text(row, "prompt", where).strip(), _text(row, "gold", where).strip()))
    return out


def _com2_meta(row: dict) -> dict:
    question, choices, answer = row["question"], row["choices"], row["answer"]
    return {
        "free_text_question": f"{COM2_INSTRUCTION}\n{question.strip()}\nThe answer is:",
        "reference": choices[answer],
        "none_of_the_above": choices[answer].startswith("None of the answers"),
    }


def _com2_examples(split: str, user_data: Path | None) -> list[Example]:
    return _mc_dev_test(DATA / "com2/mc_dev_test.json", "com2", split, id_key="id", meta=_com2_meta)


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, Task] = {
    "com2": Task(
        "com2", "mc", "judged score 1-10 (free text) + accuracy (MC)",
        "COM2 generative prompts (7200; the paper's pool, sparta/_data/com2/train.json), with 'gold' references",
        "eval: COM2 as 5-way MC (com2/mc_dev_test.json), dev 317 / test 1000; contexts disjoint from the combat "
        "prompts. The paper reports COM2 as a 1-10 judged score: meta['free_text_question'] is the question in "
        "the combat prompt format and meta['reference'] the right option's text, for a judged free-text "
        "evaluation (meta['none_of_the_above'] marks the 178 items whose right option is 'None of the answers "
        "are correct': no usable free-text reference). 157 combat prompts are exact duplicates of another (kept, "
        "own ids). " + _MC_NOTE + " With an evaluator, sparta eval also scores the free-text answers 1-10 "
        "(judged_score, primary; the 'None of the answers' items are excluded).",
        _com2_combat, _com2_examples, free_text=True,
    ),
}
