"""MATH (tasks `math_easy`, `math_medium`, `math_hard`): combat prompts are MATH train problems of the task's
levels (the SPARTA authors' data/MATH/train_by_difficulty pools, shipped as sparta/_data/math/train_easy.jsonl
and train_medium.jsonl; levels 4-5 from the user's copy, else the MATH test items of levels 4-5 outside
MATH-500, sparta/_data/math/test5000.jsonl); dev/test are the MATH-500 items of those levels
(sparta/_data/math/math500_test.jsonl). MIT. Named math_tasks so that it never stands in for the stdlib math."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from .common import (
    DATA,
    CombatRows,
    Example,
    Task,
    UserFile,
    _hash_split,
    _norm,
    _read_jsonl,
    _text,
    _user_file,
)
from .graders import math_gold

MATH_DEV_FRACTION = 0.4  # of the MATH-500 items of a task's levels
MATH_LEVELS = {"math_easy": (1, 2), "math_medium": (3,), "math_hard": (4, 5)}
MATH_HARD_FILE = UserFile(
    "MATH/train_by_difficulty/hard.jsonl",
    'JSON lines, one MATH train problem of level 4 or 5 each: {"problem": str, "level": "Level 4", "type": str, '
    '"solution": str with a final \\boxed{...}, "answer": str (optional)} (the format of the shipped '
    "sparta/_data/math/train_easy.jsonl; the SPARTA authors' data/ layout)",
    "MATH train split (Hendrycks et al. 2021, MIT): github.com/hendrycks/math; keep levels 4-5. Optional: "
    "without it, math_hard combat prompts are the MATH test items of levels 4-5 that are not in MATH-500",
)


def _last_boxed(solution: str) -> str | None:
    try:
        return math_gold(solution)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def _math500() -> tuple[dict, ...]:
    path = DATA / "math/math500_test.jsonl"
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        where = f"{path} row {i}"
        level = row.get("level") if isinstance(row, dict) else None
        if level not in (1, 2, 3, 4, 5):
            raise ValueError(f"{where}: field 'level' must be 1-5, got {level!r}")
        out.append({
            "problem": _text(row, "problem", where), "answer": _text(row, "answer", where),
            "subject": _text(row, "subject", where), "unique_id": _text(row, "unique_id", where), "level": level,
        })
    return tuple(out)


def _math500_problems() -> set[str]:
    return {_norm(r["problem"]) for r in _math500()}


def _math_rows(path: Path, key_prefix: str, levels: tuple[int, ...] | None, worked: bool = False) -> CombatRows:
    """MATH problems of `levels` (None: all) from a JSONL file, minus any problem that is in MATH-500; the
    reference is the final answer, or with `worked` the whole solution."""
    held_out = _math500_problems()
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        where = f"{path} row {i}"
        problem = _text(row, "problem", where)
        if levels is not None:
            level = _text(row, "level", where)
            if level not in {f"Level {n}" for n in range(1, 6)} | {"Level ?"}:
                raise ValueError(f"{where}: field 'level' must be 'Level 1'..'Level 5', got {level!r}")
            if level not in {f"Level {n}" for n in levels}:
                continue
        if _norm(problem) in held_out:
            continue
        answer = row.get("answer") if isinstance(row.get("answer"), str) else ""
        solution = _text(row, "solution", where)
        reference = solution if worked else answer.strip() or _last_boxed(solution)
        out.append((f"{key_prefix}{i}", problem, reference))
    return out


def _math_combat(task: str, worked: bool = False) -> Callable[[Path | None], CombatRows]:
    def load(user_data: Path | None) -> CombatRows:
        if task == "math_hard":
            user = _user_file(task, MATH_HARD_FILE, user_data, required=False)
            if user is not None:
                return _math_rows(user, "user:", None, worked)
            return _math_rows(DATA / "math/test5000.jsonl", "", (4, 5), worked)
        return _math_rows(DATA / f"math/train_{task.removeprefix('math_')}.jsonl", "", None, worked)

    return load


def _math_examples(task: str) -> Callable[[str, Path | None], list[Example]]:
    def load(split: str, user_data: Path | None) -> list[Example]:
        rows = [r for r in _math500() if r["level"] in MATH_LEVELS[task]]
        keys = [r["unique_id"] for r in rows]
        dev, test = _hash_split(keys, task, (round(MATH_DEV_FRACTION * len(rows)),))
        chosen = set(dev if split == "dev" else test)
        return [
            Example(f"{task}:{split}:{r['unique_id']}", r["problem"], r["answer"],
                    meta={"level": r["level"], "subject": r["subject"], "unique_id": r["unique_id"],
                          "source": "math/math500_test.jsonl"})
            for r in rows
            if r["unique_id"] in chosen
        ]

    return load


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, Task] = {
    name: Task(
        name, "math", "accuracy",
        {"math_easy": "MATH train levels 1-2 (1912; the paper's pool, sparta/_data/math/train_easy.jsonl)",
         "math_medium": "MATH train level 3 (1592; the paper's pool, sparta/_data/math/train_medium.jsonl)",
         "math_hard": "user MATH/train_by_difficulty/hard.jsonl if present (the paper's pool), else the "
                      "2276 MATH test items of levels 4-5 not in MATH-500 (sparta/_data/math/test5000.jsonl)",
         }[name],
        f"dev/test: the MATH-500 items of level(s) {'-'.join(map(str, MATH_LEVELS[name]))}, split 40/60 by a "
        "fixed sha256 order of unique_id; gold = MATH-500 'answer'. Combat problems equal to a MATH-500 "
        "problem are dropped (none in the shipped pools). "
        + ("The paper's MATH-hard pool (MATH train L4-5) is not shipped; the default stand-in, the rest of "
           "the MATH test set (PRM800K's practice split), is disjoint from MATH-500 but is test-set material. "
           if name == "math_hard" else "")
        + "Combat references: 'answer', else the last \\boxed{} of the solution; SPIN's: the solution.",
        _math_combat(name), _math_examples(name),
        user_files=(MATH_HARD_FILE,) if name == "math_hard" else (), worked_loader=_math_combat(name, True),
    )
    for name in MATH_LEVELS
}
