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
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..records import Prompt
from .graders import gsm8k_gold, math_gold

# Same directory as `sparta.prompts.DATA`; defined here because `tasks` sits below `prompts` in the import
# layering (tests/test_layout.py).
DATA = Path(__file__).resolve().parents[1] / "_data"

SPLITS = ("dev", "test")
MC_INSTRUCTION = "Answer with the letter of the correct option."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

GSM8K_DEV = 300  # of the 1319 official test questions; the other 1019 are test
MATH_DEV_FRACTION = 0.4  # of the MATH-500 items of a task's levels
ALPACA_SEED_SPLIT = (100, 25, 50)  # Self-Instruct seeds: combat / dev / test (175 in all)
NORMAD_CHOICES = {"A": "yes", "B": "no", "C": "neutral"}
NORMAD_SUFFIX = "\n Choose from:'Yes', 'No', 'Neutral'"  # ends every instruction of the authors' NormAd files
COM2_INSTRUCTION = (  # the preamble of every COM2 combat prompt (com2/train.json); reused for the free-text form
    "As an expert in commonsense reasoning, your task is to provide a concise response to a question based on "
    "the given context. The question focuses on studying the causes, effects, or attributes of personas related "
    "to the given context. "
)


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


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are: {', '.join(TASKS)}")
    return TASKS[name]


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


# ------------------------------------------------------------------------------------------------ GSM8K


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


# ------------------------------------------------------------------------------------------------- MATH

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


# ------------------------------------------------------------------------------------------- TruthfulQA

_TRUTHFULQA_PROMPT = re.compile(r"Q: (?P<q>.*?)\nA: (?P<a>.*)\nTrue:\nJustify whether the answer is true\?", re.S)


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


def _truthfulqa_examples(split: str, user_data: Path | None) -> list[Example]:
    return _mc_dev_test(DATA / "truthfulqa/mc1_dev_test.json", "truthfulqa", split)


def _truthfulqa_combat(user_data: Path | None) -> CombatRows:
    path = DATA / "truthfulqa/sparta_train_prompts.jsonl"
    test_questions = {_norm(e.question) for e in _truthfulqa_examples("test", None)}
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        text = _text(row, "question", f"{path} row {i}")
        match = _TRUTHFULQA_PROMPT.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{path} row {i}: not of the form 'Q: ...\\nA: ...\\nTrue:\\nJustify ...': {text[:80]!r}")
        if _norm(match.group("q")) not in test_questions:
            out.append((str(i), text, None))
    return out


# ------------------------------------------------------------------------------------------------ MedQA

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


# ----------------------------------------------------------------------------------------------- NormAd

NORMAD_ROT_FILE = UserFile(
    "culture/rule_of_thumb_dataset.json",
    'JSON {"train": {id: {"instruction": str, "label": "yes"|"no"|"neutral"}}, "test": {...}, "valid": {...}} '
    "with valid a subset of test (the format of the shipped sparta/_data/normad/country_sparta_splits.json; "
    "the path the SPARTA authors' competition.py reads, data/culture/rule_of_thumb_dataset.json)",
    "not in the SPARTA authors' public repo (github.com/yurujiang2003/sparta): ask the authors, or build it "
    "from NormAd (huggingface.co/datasets/akhilayerukola/NormAd, CC-BY-4.0) with each story's rule-of-thumb as "
    "the background, in the format above",
)
_NORMAD_LABELS = {text: letter for letter, text in NORMAD_CHOICES.items()}


def _normad_file(path: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """The authors' NormAd splits file: {split: {id: (instruction, label)}}, checked; valid must be within test."""
    data = _read_json(path)
    if not isinstance(data, dict) or any(not isinstance(data.get(s), dict) for s in ("train", "test", "valid")):
        raise ValueError(f"{path}: expected a JSON object with objects 'train', 'test', 'valid' (id -> item)")
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for split in ("train", "test", "valid"):
        out[split] = {}
        for key, row in data[split].items():
            where = f"{path} [{split!r}] id {key}"
            label = _text(row, "label", where).strip().lower()
            if label not in _NORMAD_LABELS:
                raise ValueError(f"{where}: field 'label' must be yes/no/neutral, got {row['label']!r}")
            out[split][key] = (_text(row, "instruction", where), label)
    outside = [k for k in out["valid"] if out["test"].get(k) != out["valid"][k]]
    if outside:
        raise ValueError(f"{path}: 'valid' must be a subset of 'test'; id {outside[0]} is not (or differs)")
    leaked = sorted(out["train"].keys() & out["test"].keys())
    if leaked:
        raise ValueError(f"{path}: id {leaked[0]} is in both 'train' and 'test'")
    return out


def _normad_combat(task: str, path_of: Callable[[Path | None], Path]) -> Callable[[Path | None], CombatRows]:
    def load(user_data: Path | None) -> CombatRows:
        data = _normad_file(path_of(user_data))
        return [(key, instruction, label) for key, (instruction, label) in data["train"].items()]

    return load


def _normad_examples(task: str, path_of: Callable[[Path | None], Path]):
    def load(split: str, user_data: Path | None) -> list[Example]:
        path = path_of(user_data)
        data = _normad_file(path)
        items = data["valid"] if split == "dev" else {k: v for k, v in data["test"].items() if k not in data["valid"]}
        out = []
        for key, (instruction, label) in items.items():
            country = re.search(r"\nCountry: (.+?)\.?\n", instruction)
            meta = {"normad_id": key, "source": path.name, "country": country.group(1) if country else None}
            stem = instruction.removesuffix(NORMAD_SUFFIX).rstrip()
            out.append(Example(f"{task}:{split}:{key}", stem, _NORMAD_LABELS[label], dict(NORMAD_CHOICES), meta))
        return out

    return load


def _country_path(user_data: Path | None) -> Path:
    return DATA / "normad/country_sparta_splits.json"


def _rot_path(user_data: Path | None) -> Path:
    return _user_file("normad_rot", NORMAD_ROT_FILE, user_data)  # type: ignore[return-value]


def _normad_partition() -> dict[str, str]:
    """NormAd id -> "combat" | "dev" | "test", from the SPARTA country splits (train / valid / test - valid).
    NormAd ids name the same story in every NormAd file (checked for the shipped value file)."""
    data = _normad_file(DATA / "normad/country_sparta_splits.json")
    part = {key: "combat" for key in data["train"]}
    part.update({key: "test" for key in data["test"]})
    part.update({key: "dev" for key in data["valid"]})
    return part


def _normad_value_items() -> list[tuple[str, str, str, dict, str, dict]]:
    """(part, id, question, choices, answer, meta) for every item of the value file, dev and test together."""
    path = DATA / "normad/value_dev_test.json"
    data = _splits(_read_json(path), path, SPLITS)
    partition = _normad_partition()
    out = []
    for split in SPLITS:
        for i, row in enumerate(data[split]):
            where = f"{path} [{split!r}] row {i}"
            question, choices, answer = _mc_fields(row, where)
            key = str(row.get("id"))
            if key not in partition:
                raise ValueError(f"{where}: NormAd id {key!r} is in none of the SPARTA country splits")
            question = question.replace("\\nValue: ", "\nValue: ")  # a literal backslash-n in every item
            meta = {"normad_id": key, "domain": row.get("domain"), "value_file_split": split, "source": path.name}
            out.append((partition[key], key, question, choices, answer, meta))
    return out


def _normad_value_combat(user_data: Path | None) -> CombatRows:
    return [(key, format_mc(q, c), a) for part, key, q, c, a, _ in _normad_value_items() if part == "combat"]


def _normad_value_examples(split: str, user_data: Path | None) -> list[Example]:
    return [
        Example(f"normad_value:{split}:{key}", q, a, c, meta)
        for part, key, q, c, a, meta in _normad_value_items()
        if part == split
    ]


# ---------------------------------------------------------------------------------- Knowledge Crosswords

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


# ------------------------------------------------------------------------------------------------- COM2


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


# ----------------------------------------------------------------------------------------------- Alpaca

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

_MC_NOTE = ("MC prompt: format_mc(question, choices); graded by the generated letter (primary) and by option "
            "log-likelihood (summed and per character).")

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
    **{
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
    },
    "truthfulqa": Task(
        "truthfulqa", "mc", "accuracy",
        "the paper's TruthfulQA prompts ('Q: ..\\nA: ..\\nTrue:\\nJustify whether the answer is true?', "
        "sparta_train_prompts.jsonl) minus every prompt about a test question",
        "eval: TruthfulQA MC1 (Model Swarms' split), dev 200 / test 617. The paper's 7200 combat prompts cover "
        "all 817 questions, so training on all of them makes any TruthfulQA evaluation transductive; by default "
        "we keep only the 1747 prompts whose question is not a test question (1739 about dev questions, 8 about "
        "'Are all plants plants?', which is not in TruthfulQA): test is held out, dev is NOT (dev and test "
        "together are all 817 questions) -- report test. Combat prompts have no gold truth labels. " + _MC_NOTE,
        _truthfulqa_combat, _truthfulqa_examples,
    ),
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
    "normad_country": Task(
        "normad_country", "mc", "accuracy",
        "NormAd-country SPARTA 'train' split (2370 instructions with country background, "
        "normad/country_sparta_splits.json), verbatim",
        "eval: the SPARTA splits of the same file -- dev = 'valid' (53), test = 'test' minus 'valid' (210) -- "
        "as 3-way MC (A yes / B no / C neutral; the instruction's own 'Choose from' line is removed from the "
        "stem). Train and test share no id and no story. normad/country_dev_test.json is NOT used: 1797 of its "
        "2000 test items are SPARTA train stories. Combat references: the label. " + _MC_NOTE,
        _normad_combat("normad_country", _country_path), _normad_examples("normad_country", _country_path),
    ),
    "normad_value": Task(
        "normad_value", "mc", "accuracy",
        "the NormAd-value items (normad/value_dev_test.json, both its splits) whose story is in the SPARTA "
        "country 'train' split (2249), as format_mc prompts",
        "One story partition for every NormAd task: NormAd ids name the same story in all files, so value items "
        "are assigned by id to the SPARTA country splits -- train -> combat, 'valid' -> dev (51), 'test' minus "
        "'valid' -> test (200). The value file's own dev/test labels are kept in meta['value_file_split']; its "
        "split is not used because its stories overlap the country train split. The authors' value file was a "
        "copy of the country file (their packaging bug), so these value-framed prompts are ours. A literal "
        "'\\n' before 'Value:' in every item is turned into a newline. Combat references: the answer letter. "
        + _MC_NOTE,
        _normad_value_combat, _normad_value_examples,
    ),
    "normad_rot": Task(
        "normad_rot", "mc", "accuracy",
        "user culture/rule_of_thumb_dataset.json 'train' split (the SPARTA authors' layout), verbatim",
        "Not shipped (not in the authors' public repo). The same rules as normad_country on the user's file: "
        "dev = 'valid', test = 'test' minus 'valid', 3-way MC (A yes / B no / C neutral). " + _MC_NOTE,
        _normad_combat("normad_rot", _rot_path), _normad_examples("normad_rot", _rot_path),
        user_files=(NORMAD_ROT_FILE,), requires_user_data=True,
    ),
    "knowledge_crosswords": Task(
        "knowledge_crosswords", "mc", "accuracy",
        "user knowledge_crosswords/train.json 'train' prompts (the SPARTA authors' layout), verbatim",
        "Not shipped (no license). eval: the user's eval/knowledge_crosswords.json (Model Swarms' format), its "
        "own dev/test split. Overlap between the authors' train prompts and Model Swarms' eval items cannot be "
        "checked offline; check it on your copy. Combat references: the completion letter. " + _MC_NOTE,
        _kc_combat, _kc_examples, user_files=(KC_TRAIN_FILE, KC_EVAL_FILE), requires_user_data=True,
    ),
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
