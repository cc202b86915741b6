"""Alpaca (task `alpaca`) and the Self-Instruct seeds: combat prompts are the user's Alpaca-52K if present,
else 100 of the 175 Self-Instruct seed tasks (sparta/_data/instructions/self_instruct_seed_tasks.jsonl,
Apache-2.0); dev/test are the user's AlpacaEval if present, else 25 / 50 other seeds. Alpaca-52K and
AlpacaEval are CC BY-NC and do not ship."""

from __future__ import annotations

from pathlib import Path

from .common import (
    DATA,
    SPLITS,
    CombatRows,
    Example,
    Task,
    UserFile,
    _check_ids,
    _hash_split,
    _list,
    _norm,
    _read_json,
    _read_jsonl,
    _text,
    _user_file,
    with_input,
)

ALPACA_SEED_SPLIT = (100, 25, 50)  # Self-Instruct seeds: combat / dev / test (175 in all)

ALPACA_TRAIN_FILE = UserFile(
    "alpaca/alpaca_data_processed.json",
    'JSON list of {"instruction": str, "input": str (optional), "output": str (optional)} (Stanford Alpaca\'s '
    "alpaca_data.json format, at the path the SPARTA authors' competition.py reads)",
    "Alpaca-52K (CC BY-NC 4.0): github.com/tatsu-lab/stanford_alpaca, alpaca_data.json. Optional: without it, "
    "alpaca combat prompts are 100 Self-Instruct seed tasks",
)
ALPACA_EVAL_FILE = UserFile(
    "eval/alpaca_eval.json",
    'JSON list of {"instruction": str, "output": str (reference answer), "generator": str, "dataset": str} '
    "(AlpacaEval's alpaca_eval.json)",
    "AlpacaEval: huggingface.co/datasets/tatsu-lab/alpaca_eval, alpaca_eval.json (805 items). Optional: "
    "without it, alpaca dev/test are 25/50 Self-Instruct seed tasks",
)


def self_instruct_seeds() -> dict[str, tuple[str, str]]:
    """All 175 Self-Instruct seed tasks in file order: seed id -> (instruction + input, reference output)."""
    path = DATA / "instructions/self_instruct_seed_tasks.jsonl"
    rows = {}
    for i, row in enumerate(_read_jsonl(path)):
        where = f"{path} row {i}"
        instances = row.get("instances")
        if not isinstance(instances, list) or not instances:
            raise ValueError(f"{where}: field 'instances' must be a non-empty list")
        extra = _text(instances[0], "input", f"{where} instance 0", allow_empty=True)
        output = _text(instances[0], "output", f"{where} instance 0")
        rows[_text(row, "id", where)] = (with_input(_text(row, "instruction", where), extra), output)
    _check_ids(list(rows), str(path))
    return rows


def _alpaca_seeds() -> dict[str, list[tuple[str, str, str]]]:
    """The Self-Instruct seeds split into combat / dev / test: (seed id, prompt, reference output)."""
    rows = self_instruct_seeds()
    parts = _hash_split(list(rows), "alpaca", ALPACA_SEED_SPLIT[:2])
    return {name: [(k, *rows[k]) for k in keys] for name, keys in zip(("combat", "dev", "test"), parts)}


def _alpaca_eval_rows(path: Path) -> dict[str, list[tuple[str, str, str, dict]]]:
    """AlpacaEval split a quarter dev / the rest test by hash order: (row, instruction, output, meta)."""
    rows = {}
    for i, row in enumerate(_list(_read_json(path), str(path))):
        where = f"{path} row {i}"
        meta = {"dataset": row.get("dataset"), "generator": row.get("generator"), "source": path.name}
        rows[str(i)] = (_text(row, "instruction", where), _text(row, "output", where, allow_empty=True), meta)
    dev, test = _hash_split(list(rows), "alpaca_eval", (len(rows) // 4,))
    return {"dev": [(k, *rows[k]) for k in dev], "test": [(k, *rows[k]) for k in test]}


def _alpaca_combat(user_data: Path | None) -> CombatRows:
    user = _user_file("alpaca", ALPACA_TRAIN_FILE, user_data, required=False)
    if user is None:
        return [(key, text, output) for key, text, output in _alpaca_seeds()["combat"]]
    held_out = {_norm(e.question) for split in SPLITS for e in _alpaca_examples(split, user_data)}
    out = []
    for i, row in enumerate(_list(_read_json(user), str(user))):
        where = f"{user} row {i}"
        extra = _text(row, "input", where, allow_empty=True) if "input" in row else ""
        text = with_input(_text(row, "instruction", where), extra)
        output = row.get("output") if isinstance(row.get("output"), str) else None
        if _norm(text) not in held_out:
            out.append((f"user:{i}", text, output))
    return out


def _alpaca_examples(split: str, user_data: Path | None) -> list[Example]:
    user = _user_file("alpaca", ALPACA_EVAL_FILE, user_data, required=False)
    if user is None:
        source = "instructions/self_instruct_seed_tasks.jsonl"
        return [Example(f"alpaca:{split}:{key}", text, output, meta={"seed_id": key, "source": source})
                for key, text, output in _alpaca_seeds()[split]]
    return [Example(f"alpaca:{split}:user:{key}", text, output, meta=meta)
            for key, text, output, meta in _alpaca_eval_rows(user)[split]]


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, Task] = {
    "alpaca": Task(
        "alpaca", "judged", "judged score 1-10",
        "user alpaca/alpaca_data_processed.json (Alpaca-52K, the paper's pool) if present, else 100 of the 175 "
        "Self-Instruct seed tasks",
        "Alpaca-52K and AlpacaEval are CC BY-NC and not shipped. Default: the Self-Instruct seeds split by a "
        "fixed sha256 order of seed ids into combat 100 / dev 25 / test 50 (disjoint); answer = the seed's "
        "output, a reference for the judge. With the user's eval/alpaca_eval.json: dev = a quarter of it "
        "(201 of 805), test = the rest, answer = AlpacaEval's reference output; user combat instructions equal "
        "to an eval instruction are dropped. Graded by an evaluator model's 1-10 score.",
        _alpaca_combat, _alpaca_examples, user_files=(ALPACA_TRAIN_FILE, ALPACA_EVAL_FILE),
    ),
}
