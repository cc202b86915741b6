"""What every task module shares: `Example`, `Task`, `UserFile` / `MissingUserData`, the data directory,
the JSON readers (cached per path, size and mtime), the row checks that name a malformed file and row, the
salted sha256 split order, the one multiple-choice prompt format (`format_mc`) and the reader of Model Swarms'
{"dev", "test"} multiple-choice files. The rules that hold for every task are in `sparta.tasks.catalog`."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..records import Prompt

# Same directory as `sparta.prompts.DATA`; defined here because `tasks` sits below `prompts` in the import
# layering (tests/test_layout.py).
DATA = Path(__file__).resolve().parents[1] / "_data"

SPLITS = ("dev", "test")
MC_INSTRUCTION = "Answer with the letter of the correct option."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Example:
    id: str  # stable, "<task>:<split>:<source id or row>"
    question: str  # the question as shown to a model (MC: the stem WITHOUT options; see format_mc)
    answer: str  # gold: final number (gsm8k), LaTeX answer (math), option letter (mc), reference text or "" (judged)
    choices: dict[str, str] | None = None  # MC only, letters A.. -> option text
    meta: dict = field(default_factory=dict)  # level, subject, domain, source file...


@dataclass(frozen=True)
class UserFile:
    """A file a task reads from `user_data` (relative path), its format and where to get it."""

    path: str
    format: str
    source: str


class MissingUserData(FileNotFoundError):
    """A task needs a file that does not ship with sparta; the message says which, in what format, and where
    to get it."""

    def __init__(self, task: str, files: list[UserFile], user_data: Path | None):
        self.task = task
        self.paths = [f.path for f in files]
        if user_data is None:
            head = f"task {task!r} needs data that does not ship with sparta, and no user_data directory was given"
        else:
            head = f"task {task!r} needs data that does not ship with sparta; not found under {user_data}"
        lines = [head + ":"]
        for f in files:
            where = user_data / f.path if user_data is not None else f"<user_data>/{f.path}"
            lines += [f"  expected: {where}", f"    format: {f.format}", f"    get it: {f.source}"]
        lines.append("Put the file(s) there and pass that directory as user_data.")
        super().__init__("\n".join(lines))


# A combat loader returns (key, prompt text, reference answer or None); a key becomes the id "<task>:<key>".
CombatRows = list[tuple[str, str, str | None]]


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "gsm8k" | "math" | "mc" | "judged"
    metric: str  # "accuracy" | "judged score 1-10" | (COM2) both
    combat_source: str  # one line: where the combat prompts come from
    notes: str  # overlaps/transductivity, split choices
    combat_loader: Callable[[Path | None], CombatRows] = field(repr=False, compare=False)
    examples_loader: Callable[[str, Path | None], list[Example]] = field(repr=False, compare=False)
    user_files: tuple[UserFile, ...] = ()  # files read from user_data (required or optional, see requires_user_data)
    requires_user_data: bool = False  # True: nothing ships for this task
    # an mc task whose examples also have a free-text form, meta["free_text_question"] / meta["reference"],
    # scored 1-10 by an evaluator (COM2: the paper's number is that judged score)
    free_text: bool = False
    # the combat prompts with worked solutions as references (MATH), for SPIN's chosen answers; None: the gold
    worked_loader: Callable[[Path | None], CombatRows] | None = field(default=None, repr=False, compare=False)

    def combat_prompts(self, user_data: Path | str | None = None) -> list[Prompt]:
        """The combat prompt pool, ids `<task>:<key>` (stable across runs)."""
        rows = self.combat_loader(_dir(user_data))
        prompts = [Prompt(f"{self.name}:{key}", text, self.name) for key, text, _ in rows]
        _check_ids([p.id for p in prompts], f"{self.name} combat prompts")
        if not prompts:
            raise ValueError(f"task {self.name!r}: the combat prompt pool is empty")
        return prompts

    def combat_references(self, user_data: Path | str | None = None) -> dict[str, str]:
        """Gold answers of the combat prompts that have one (prompt id -> answer: a number or LaTeX answer, an
        option letter, a NormAd label, a COM2 / Alpaca reference text), for judge-agreement checks."""
        return {f"{self.name}:{key}": ref for key, _, ref in self.combat_loader(_dir(user_data)) if ref}

    def worked_references(self, user_data: Path | str | None = None) -> dict[str, str]:
        """A demonstration per combat prompt where the data has one (MATH: the worked solution, its final answer
        boxed), else `combat_references`: what SPIN trains toward."""
        if self.worked_loader is None:
            return self.combat_references(user_data)
        return {f"{self.name}:{key}": ref for key, _, ref in self.worked_loader(_dir(user_data)) if ref}

    def examples(self, split: str, user_data: Path | str | None = None) -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"task {self.name!r}: split must be one of {SPLITS}, got {split!r}")
        examples = self.examples_loader(split, _dir(user_data))
        _check_ids([e.id for e in examples], f"{self.name} {split} examples")
        if not examples:
            raise ValueError(f"task {self.name!r}: the {split} split is empty")
        return examples

def format_mc(question: str, choices: dict[str, str]) -> str:
    """The one multiple-choice prompt format: the stem, a blank line, one "A. text" line per option, a blank
    line, then the instruction. `format_mc("2+2?", {"A": "3", "B": "4"})` is
    "2+2?\\n\\nA. 3\\nB. 4\\n\\nAnswer with the letter of the correct option."."""
    _check_choices(choices, "format_mc")
    options = "\n".join(f"{key}. {text.strip()}" for key, text in choices.items())
    return f"{question.strip()}\n\n{options}\n\n{MC_INSTRUCTION}"


def rotate_choices(choices: dict[str, str], answer: str, rotation: int) -> tuple[dict[str, str], str]:
    """Rotation r of the options (circular evaluation): letter i shows the text of option (i + r) mod n; returns
    the rotated choices and the letter the gold answer is shown at. Over the n rotations every letter holds the
    gold once, so a picker that always says one letter is right in one rotation only.
    `rotate_choices({"A": "3", "B": "4"}, "B", 1)` is ({"A": "4", "B": "3"}, "A")."""
    _check_choices(choices, "rotate_choices")
    keys, texts = list(choices), list(choices.values())
    n = len(keys)
    return {keys[i]: texts[(i + rotation) % n] for i in range(n)}, keys[(keys.index(answer) - rotation) % n]


# ------------------------------------------------------------------------------------------- file reading


def _dir(user_data: Path | str | None) -> Path | None:
    return None if user_data is None else Path(user_data)


def _read_json(path: Path) -> object:
    stat = path.stat()  # the cache key includes size and mtime, so an edited user file is re-read
    return _cached_json(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _cached_json(path: str, _size: int, _mtime: int) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_jsonl(path: Path) -> tuple:
    stat = path.stat()
    return _cached_jsonl(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _cached_jsonl(path: str, _size: int, _mtime: int) -> tuple:
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} row {number} (line {number + 1}): not valid JSON ({e})") from None
    return tuple(rows)


def _user_file(task: str, spec: UserFile, user_data: Path | None, required: bool = True) -> Path | None:
    """The user's copy of `spec`: its path if present; None if optional and absent; else MissingUserData."""
    path = None if user_data is None else user_data / spec.path
    if path is not None and path.is_file():
        return path
    if required:
        raise MissingUserData(task, [spec], user_data)
    return None


def _list(data: object, where: str) -> list:
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a JSON list, got {type(data).__name__}")
    return data


def _splits(data: object, path: Path, names: tuple[str, ...]) -> dict[str, list]:
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in names):
        raise ValueError(f"{path}: expected a JSON object with lists {', '.join(repr(s) for s in names)}")
    return {s: data[s] for s in names}


def _text(row: object, key: str, where: str, allow_empty: bool = False) -> str:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    value = row.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ValueError(f"{where}: field {key!r} must be {'' if allow_empty else 'non-empty '}text, got {value!r:.80}")
    return value


def _check_choices(choices: object, where: str) -> dict[str, str]:
    if not isinstance(choices, dict) or not choices:
        raise ValueError(f"{where}: choices must be a non-empty object of letter -> text, got {choices!r:.80}")
    if list(choices) != list(LETTERS[: len(choices)]):
        raise ValueError(f"{where}: choice letters must be A, B, ... in order, got {list(choices)}")
    for key, text in choices.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: choice {key} must be non-empty text, got {text!r:.80}")
    return choices


def _mc_fields(row: object, where: str, answer_key: str = "answer", choices_key: str = "choices"):
    question = _text(row, "question", where)
    choices = _check_choices(row.get(choices_key), where)  # type: ignore[union-attr]
    answer = row.get(answer_key)  # type: ignore[union-attr]
    if answer not in choices:
        raise ValueError(f"{where}: {answer_key!r} must be one of {list(choices)}, got {answer!r:.80}")
    return question, dict(choices), answer


def _check_ids(ids: list[str], what: str) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"{what}: duplicate id {duplicate!r}")


def _hash_order(keys: list[str], salt: str) -> list[str]:
    """A fixed pseudo-random order of `keys`: sorted by sha256("sparta.tasks/<salt>/<key>")."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"sparta.tasks/{salt}/{k}".encode()).hexdigest())


def _hash_split(keys: list[str], salt: str, sizes: tuple[int, ...]) -> list[list[str]]:
    """Consecutive slices of the hash order of `keys` (sizes; the last slice takes the rest), each slice
    returned in the original order of `keys`."""
    order = _hash_order(keys, salt)
    position = {k: i for i, k in enumerate(keys)}
    out, start = [], 0
    for n in sizes:
        out.append(sorted(order[start : start + n], key=position.__getitem__))
        start += n
    out.append(sorted(order[start:], key=position.__getitem__))
    return out


def _norm(text: str) -> str:
    return " ".join(text.split())


def with_input(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction


# ------------------------------------------------------------------------------------------ multiple choice


def _mc_dev_test(path: Path, task: str, split: str, id_key: str | None = None, meta=None) -> list[Example]:
    """Examples from a {"dev": [...], "test": [...]} file of {question, choices, answer} (Model Swarms' format)."""
    items = _splits(_read_json(path), path, SPLITS)[split]
    out = []
    for i, row in enumerate(items):
        where = f"{path} [{split!r}] row {i}"
        question, choices, answer = _mc_fields(row, where)
        key = str(row[id_key]) if id_key is not None else str(i)
        extra = meta(row) if meta else {}
        out.append(Example(f"{task}:{split}:{key}", question, answer, choices, {"source": path.name, **extra}))
    return out


_MC_NOTE = ("MC prompt: format_mc(question, choices); graded by the generated letter (primary) and by option "
            "log-likelihood (summed and per character).")
