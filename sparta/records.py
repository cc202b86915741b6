"""The typed records passed between stages, and their JSONL read/write. No logic beyond (de)serialising."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Prompt:
    id: str  # stable across runs: "<source>:<index>"; responses and pairs are keyed by it, never by text
    text: str
    source: str


@dataclass(frozen=True)
class Response:
    member: str
    text: str | None  # None when generation failed
    error: str | None = None  # set when generation failed: the duel is void, the text is never judged
    finish_reason: str = ""  # "stop" | "length"
    n_tokens: int = 0
    prompt_shortened: bool = False  # the instruction was cut in the middle to fit max_prompt_tokens


@dataclass(frozen=True)
class Judgment:
    judge: str
    target: str  # "a" or "b" (combat); "self" (self_rewarding: its own sample); "peer" (sppo: another's sample)
    score: float | None  # None unless status == "ok"
    status: str  # "ok" | "unparsed" (generate mode) | "failed"
    raw: str | None = None  # the judge's output text (generate) or its score distribution (logprob)
    prompt_shortened: bool = False


@dataclass
class Duel:
    """One row of the combat log: everything needed to audit a verdict and its reputation update."""

    iteration: int
    round: int
    index: int  # position of the duel in the iteration; reputation updates apply in this order
    prompt_id: str
    prompt: str
    a: str
    b: str
    response_a: Response
    response_b: Response
    judgments: list[Judgment] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)  # the judges counted: reputations, or 1 (uniform)
    score_a: float | None = None
    score_b: float | None = None
    outcome: str = ""  # "a" | "b" | "tie" | "void:generation_failed" | "void:no_valid_judges"
    update: dict | None = None  # the reputation update (ratings and sigmas before/after, K, gap)

    @staticmethod
    def from_dict(d: dict) -> Duel:
        d = dict(d)
        d["response_a"] = Response(**d["response_a"])
        d["response_b"] = Response(**d["response_b"])
        d["judgments"] = [Judgment(**j) for j in d["judgments"]]
        return Duel(**d)


def to_json(record: object) -> dict:
    return asdict(record)  # type: ignore[arg-type]


def write_json_atomic(path: Path, data: object) -> None:
    _write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Journal append: whole lines, flushed to disk, so a kill loses at most the batch being appended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path, journal: bool = False) -> list[dict]:
    """Read JSONL. A journal may end in one partial line (a kill mid-write): it is dropped and truncated."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
    if data[end:].strip():
        if not journal:
            raise ValueError(f"{path}: last line is incomplete; the file is corrupt")
        with open(path, "r+b") as f:  # drop the torn line so the next append starts clean
            f.truncate(end)
    complete = data[:end].decode().split("\n")
    rows = []
    for number, line in enumerate(complete, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e}); the file is corrupt") from None
    return rows


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is corrupt") from None


def response_counts(responses: list[Response]) -> dict:
    return {"total": len(responses), "failed": sum(r.text is None for r in responses),
            "hit_max_new_tokens": sum(r.finish_reason == "length" for r in responses),
            "prompt_shortened": sum(r.prompt_shortened for r in responses),
            "mean_tokens": sum(r.n_tokens for r in responses) / max(1, len(responses))}


def judgment_counts(judgments: list[Judgment]) -> dict:
    status = {s: sum(j.status == s for j in judgments) for s in ("ok", "unparsed", "failed")}
    readable = status["ok"] + status["unparsed"]
    return {"total": len(judgments), **status,
            "parse_failure_rate": status["unparsed"] / readable if readable else 0.0,
            "prompt_shortened": sum(j.prompt_shortened for j in judgments)}
