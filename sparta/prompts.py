"""Prompt pools for combat: the ones shipped in the repo, or a user's JSON/JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

from .records import Prompt
from .seeding import rng

DATA = Path(__file__).parent / "_data"


def _gsm8k() -> list[str]:
    rows = json.loads((DATA / "gsm8k/train_questions.json").read_text())
    return [f"{r['instruction']}\n\n{r['input']}" for r in rows]


def _self_instruct() -> list[str]:
    rows = [json.loads(line) for line in (DATA / "instructions/self_instruct_seed_tasks.jsonl").open()]
    return [_with_input(r["instruction"], r["instances"][0]["input"]) for r in rows]


def _math(level: str) -> list[str]:
    return [json.loads(line)["problem"] for line in (DATA / f"math/train_{level}.jsonl").open()]


def _com2() -> list[str]:
    return [r["prompt"].strip() for r in json.loads((DATA / "com2/train.json").read_text())]


BUILTIN = {
    "gsm8k": _gsm8k,  # the paper's GSM8K combat pool (train questions, no answers)
    "self_instruct": _self_instruct,  # license-clean stand-in for Alpaca instructions
    "math_easy": lambda: _math("easy"),
    "math_medium": lambda: _math("medium"),
    "com2": _com2,
}

_TEXT_FIELDS = ("text", "prompt", "instruction", "question")


def _with_input(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction


def load_prompts(source: str) -> list[Prompt]:
    """A built-in pool by name, or a .json (list) / .jsonl file whose rows hold one of `_TEXT_FIELDS`
    (an `input` field is appended to `instruction`). Ids are `<source>:<row>`."""
    if source in BUILTIN:
        texts, name = BUILTIN[source](), source
    else:
        texts, name = _read_file(Path(source)), Path(source).stem
    prompts = [Prompt(f"{name}:{i}", t, source) for i, t in enumerate(texts) if t.strip()]
    if not prompts:
        raise ValueError(f"prompt pool {source!r} is empty")
    return prompts


def _read_file(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"data.prompts: {path} is neither a built-in pool ({', '.join(BUILTIN)}) nor a file")
    text = path.read_text()
    try:
        rows = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"data.prompts: {path} is not valid JSON/JSONL: {e}") from None
    if not isinstance(rows, list):
        raise ValueError(f"data.prompts: {path} must hold a list of prompts")
    return [_row_text(row, path, i) for i, row in enumerate(rows)]


def _row_text(row: object, path: Path, i: int) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for field in _TEXT_FIELDS:
            if isinstance(row.get(field), str):
                extra = row.get("input") or ""
                if not isinstance(extra, str):
                    raise ValueError(f"data.prompts: {path} row {i}: field 'input' must be text, got {extra!r}")
                return _with_input(row[field], extra) if field == "instruction" else row[field]
    raise ValueError(f"data.prompts: {path} row {i} has none of the fields {_TEXT_FIELDS}")


def sample_prompts(pool: list[Prompt], n: int, seed: int, iteration: int) -> list[Prompt]:
    """Fresh prompts every iteration, deterministic from (seed, iteration): iteration t takes the t-th
    slice of a seeded shuffle of the pool (reshuffled each time the pool is exhausted)."""
    orders: dict[int, list[int]] = {}
    out = []
    for position in range((iteration - 1) * n, iteration * n):
        epoch, offset = divmod(position, len(pool))
        if epoch not in orders:
            orders[epoch] = list(range(len(pool)))
            rng(seed, "prompts", epoch).shuffle(orders[epoch])
        out.append(pool[orders[epoch][offset]])
    return out
