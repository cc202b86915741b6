"""NormAd (tasks `normad_country`, `normad_value`, `normad_rot`): one story partition for all three, from the
SPARTA authors' country splits (sparta/_data/normad/country_sparta_splits.json); the value items come from
Model Swarms' NormAd-value file (sparta/_data/normad/value_dev_test.json); rule-of-thumb is read from the
user's culture/rule_of_thumb_dataset.json (not shipped: not in the authors' public repo). NormAd is
CC-BY-4.0."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .common import (
    _MC_NOTE,
    DATA,
    SPLITS,
    CombatRows,
    Example,
    Task,
    UserFile,
    _mc_fields,
    _read_json,
    _splits,
    _text,
    _user_file,
    format_mc,
)

NORMAD_CHOICES = {"A": "yes", "B": "no", "C": "neutral"}
NORMAD_SUFFIX = "\n Choose from:'Yes', 'No', 'Neutral'"  # ends every instruction of the authors' NormAd files
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


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, Task] = {
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
}
