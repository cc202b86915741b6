"""The paper's 12 evaluation tasks: where each task's combat prompts come from, its held-out dev/test sets,
its prompt format and its metric (docs/tasks.md has the table and the user-data layout).

Shipped data lives under `sparta/_data` (origins and licenses in its SOURCES.md). Data that cannot ship
(Knowledge Crosswords, NormAd rule-of-thumb; optionally Alpaca/AlpacaEval, MATH train levels 4-5, MedQA
train) is read from a user directory `user_data` in the original file formats; a missing file raises
`MissingUserData` naming the path, the format and where to get it.

Rules that hold for every task:
- ids are stable: combat prompts `<task>:<source id or row>`, examples `<task>:<split>:<source id or row>`;
  pools drawn from a user file carry `user:` before the row, so they never share an id with a shipped pool;
- dev/test splits are fixed by the data or by a salted sha256 order of source ids (no RNG, same on every
  machine and Python version);
- combat prompts are held out from the test set (per-task rule in `Task.notes`); exact-duplicate prompts in
  a source file are kept (each row has its own id), as in `sparta.prompts`;
- a malformed row is a ValueError naming the file and the row, never silently dropped.

Each dataset family has its module (gsm8k, math_tasks, truthfulqa, medqa, normad, knowledge_crosswords, com2,
alpaca; what they share is in common); this module is the registry, and every name that was importable from
it before the split still is.
"""

from __future__ import annotations

from . import alpaca, com2, gsm8k, knowledge_crosswords, math_tasks, medqa, normad, truthfulqa
from .alpaca import ALPACA_EVAL_FILE, ALPACA_SEED_SPLIT, ALPACA_TRAIN_FILE, self_instruct_seeds
from .com2 import COM2_INSTRUCTION
from .common import (
    DATA,
    LETTERS,
    MC_INSTRUCTION,
    SPLITS,
    CombatRows,
    Example,
    MissingUserData,
    Task,
    UserFile,
    format_mc,
    rotate_choices,
    with_input,
)
from .gsm8k import GSM8K_DEV
from .knowledge_crosswords import KC_EVAL_FILE, KC_TRAIN_FILE
from .math_tasks import MATH_DEV_FRACTION, MATH_HARD_FILE, MATH_LEVELS
from .medqa import MEDQA_TRAIN_FILE
from .normad import NORMAD_CHOICES, NORMAD_ROT_FILE, NORMAD_SUFFIX

__all__ = [
    "ALPACA_EVAL_FILE", "ALPACA_SEED_SPLIT", "ALPACA_TRAIN_FILE", "COM2_INSTRUCTION", "DATA", "GSM8K_DEV",
    "KC_EVAL_FILE", "KC_TRAIN_FILE", "LETTERS", "MATH_DEV_FRACTION", "MATH_HARD_FILE", "MATH_LEVELS",
    "MC_INSTRUCTION", "MEDQA_TRAIN_FILE", "NORMAD_CHOICES", "NORMAD_ROT_FILE", "NORMAD_SUFFIX", "SPLITS", "TASKS",
    "CombatRows", "Example", "MissingUserData", "Task", "UserFile", "format_mc", "get_task", "rotate_choices",
    "self_instruct_seeds", "with_input",
]

# The 12 tasks, in the paper's order; each family module's TASKS holds its own.
TASKS: dict[str, Task] = {
    **gsm8k.TASKS,
    **math_tasks.TASKS,
    **truthfulqa.TASKS,
    **medqa.TASKS,
    **normad.TASKS,
    **knowledge_crosswords.TASKS,
    **com2.TASKS,
    **alpaca.TASKS,
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are: {', '.join(TASKS)}")
    return TASKS[name]
