"""Prompt pools for combat: the ones shipped in the repo, or a user's JSON/JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

from .records import Prompt
from .seeding import rng
from .tasks.catalog import TASKS, get_task, self_instruct_seeds, with_input


def _self_instruct() -> list[Prompt]:
    return [Prompt(f"self_instruct:{i}", text, "self_instruct")
            for i, (text, _) in enumerate(self_instruct_seeds().values())]


# Every task's combat pool (sparta.tasks.catalog), plus all 175 Self-Instruct seeds as a general pool.
BUILTIN = [*TASKS, "self_instruct"]
_TEXT_FIELDS = ("text", "prompt", "instruction", "question")


def load_prompts(source: str, user_data: str | Path | None = None) -> list[Prompt]:
    """A task's combat pool or "self_instruct" by name, or a .json (list) / .jsonl file whose rows hold one of
    `_TEXT_FIELDS` (an `input` field is appended to `instruction`; ids are `<file stem>:<row>`).
    `user_data` is the folder of user-supplied task files (see docs/tasks.md)."""
    if source == "self_instruct":
        prompts = _self_instruct()
    elif source in TASKS:
        prompts = get_task(source).combat_prompts(Path(user_data) if user_data else None)
    else:
        name = Path(source).stem
        prompts = [Prompt(f"{name}:{i}", t, source) for i, t in enumerate(_read_file(Path(source))) if t.strip()]
    if not prompts:
        raise ValueError(f"prompt pool {source!r} is empty")
    return prompts


def load_references(source: str, user_data: str | Path | None = None) -> dict[str, str]:
    """Reference answers of a prompt pool, by prompt id (those that have one), as SPIN's chosen answers: a task's
    demonstrations (`Task.worked_references`: MATH's worked solutions, else its gold answers), the Self-Instruct
    seeds' outputs, or a file row's `output` text (Alpaca's field)."""
    if source == "self_instruct":
        return {f"self_instruct:{i}": output for i, (_, output) in enumerate(self_instruct_seeds().values())}
    if source in TASKS:
        return get_task(source).worked_references(Path(user_data) if user_data else None)
    name = Path(source).stem
    return {f"{name}:{i}": row["output"] for i, row in enumerate(_read_rows(Path(source)))
            if isinstance(row, dict) and isinstance(row.get("output"), str) and row["output"].strip()}


def _read_file(path: Path) -> list[str]:
    return [_row_text(row, path, i) for i, row in enumerate(_read_rows(path))]


def _read_rows(path: Path) -> list:
    if not path.is_file():
        raise ValueError(f"data.prompts: {path} is neither a built-in pool ({', '.join(BUILTIN)}) nor a file")
    text = path.read_text()
    try:
        rows = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"data.prompts: {path} is not valid JSON/JSONL: {e}") from None
    if not isinstance(rows, list):
        raise ValueError(f"data.prompts: {path} must hold a list of prompts")
    return rows


def _row_text(row: object, path: Path, i: int) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for field in _TEXT_FIELDS:
            if isinstance(row.get(field), str):
                extra = row.get("input") or ""
                if not isinstance(extra, str):
                    raise ValueError(f"data.prompts: {path} row {i}: field 'input' must be text, got {extra!r}")
                return with_input(row[field], extra) if field == "instruction" else row[field]
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
