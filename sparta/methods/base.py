"""What a method is (`Method`), what it may ask of the engine (`Engine`) and what it hands back (`Played`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..arena.reputation import ReputationState
from ..config import RunConfig
from ..records import Prompt
from ..rundir import RunDir


class Engine(Protocol):
    """What a method may ask of the run it is part of (sparta.pipeline.Pipeline)."""

    c: RunConfig
    members: list[str]
    run: RunDir
    references: dict[str, str]  # prompt id -> reference answer, when the method needs_references (else empty)

    def progress(self, stage: str, total: int) -> Callable[[int], None] | None: ...

    def backend_at(self, t: int):
        """The inference backend serving the pool as it stands at the start of iteration t."""

    def start_state(self, t: int) -> ReputationState:
        """The reputations at the start of iteration t."""


@dataclass(frozen=True)
class Played:
    """What a method's iteration made: its training rows (written once as pairs.jsonl: DPO pairs in trl's
    conversational format, or sppo's samples with their win rates) and its counts for metrics.json, given the
    rows as written."""

    rows: list[dict]
    counts: Callable[[list[dict]], dict]


class Method(Protocol):
    name: str
    loss: str  # the training job each member runs: "dpo" or "sppo"
    has_reputations: bool  # whether reputations move (the report, compare and the summary read them)
    needs_references: bool  # reference answers of the prompts (engine.references)

    def play(self, engine: Engine, t: int, prompts: list[Prompt], timings: dict) -> Played:
        """Iteration t's training rows, from its prompts. Whatever it writes under engine.run is whole or absent
        after a kill, so that a resumed run redoes at most the stage it cut short, with the same seeds; it adds the
        seconds of its stages to `timings`."""

    def rows_for(self, member: str, rows: list[dict]) -> list[dict]:
        """The rows `member` trains on."""

