"""Evaluation files (RUN/eval/iter_NN/TASK-SPLIT.json) as typed, read-only objects for the code that reads them.

`sparta.evaluation.evaluate` and `RunEvaluation.score` write the files as plain dicts. `EvalFile.read` checks that a
file has what every writer has put in it, and fails naming the file and what is missing. Keys that nothing reads
(`judge_prompt`, or a key a later writer adds) ride along in `extras`, so `to_dict` gives back the dict that was
read, keys in the same order: the same JSON text. Light (json only, no torch): report and cli import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .records import read_json


class EvalFileError(ValueError):
    """An evaluation file (or result) without a key that every writer puts in it."""


def _need(data: object, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(data, dict):
        raise EvalFileError(f"{where}: expected an object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise EvalFileError(f"{where}: missing {', '.join(map(repr, missing))}")
    return data


def _extras(data: dict, known: tuple[str, ...]) -> dict:
    return {k: v for k, v in data.items() if k not in known}


def _ordered(data: dict, order: tuple[str, ...]) -> dict:
    """`data` with the keys in `order` first, in that order."""
    return {k: data[k] for k in dict.fromkeys([*order, *data]) if k in data}


@dataclass(frozen=True)
class Metric:
    value: float  # NaN when no example was scored (n == 0)
    n: int  # scored examples
    failed: int  # examples without a score (a failed generation or judgment): counted, never scored
    ci95: tuple[float, float]  # percentile bootstrap interval of the mean
    excluded: int | None = None  # COM2's judged_score: items without a usable reference, left out
    # MC: how often each letter was the pick (a letter read from the generated answer, or the option the
    # log-likelihood chose; the generated answers that name no letter or two: "none", "ambiguous"). Circular
    # metrics count every rotation's pick. None: not an MC metric, or a file written before picks were kept
    picks: dict[str, int] | None = None
    extras: dict = field(default_factory=dict)

    KEYS = ("value", "n", "failed", "ci95")

    @classmethod
    def from_dict(cls, data: dict, where: str) -> Metric:
        d = _need(data, cls.KEYS, where)
        return cls(d["value"], d["n"], d["failed"], tuple(d["ci95"]), d.get("excluded"), d.get("picks"),
                   _extras(d, (*cls.KEYS, "excluded", "picks")))

    def to_dict(self) -> dict:
        excluded = {} if self.excluded is None else {"excluded": self.excluded}
        picks = {} if self.picks is None else {"picks": self.picks}
        return {"value": self.value, "n": self.n, "failed": self.failed, "ci95": list(self.ci95), **excluded,
                **picks, **self.extras}


@dataclass(frozen=True)
class MajorityBaseline:
    """MC: the accuracy of always answering the letter that is most often gold among the evaluated items (ties:
    the first letter), the score a model with a pure letter bias can reach on them."""

    letter: str
    value: float
    gold: dict[str, int]  # how often each letter is the gold answer

    KEYS = ("letter", "value", "gold")

    @classmethod
    def from_dict(cls, data: dict, where: str) -> MajorityBaseline:
        d = _need(data, cls.KEYS, where)
        return cls(d["letter"], d["value"], d["gold"])

    def to_dict(self) -> dict:
        return {"letter": self.letter, "value": self.value, "gold": self.gold}


@dataclass(frozen=True)
class ModelResult:
    """One model's scores on a task split: every metric, the primary one's name, and the per-example rows."""

    metrics: dict[str, Metric]
    primary: str
    examples: list[dict]
    wall_s: float
    evaluator: dict | None = None  # judged tasks and COM2: the record of the model that scored the answers
    majority_baseline: MajorityBaseline | None = None  # MC; None in files written before it was kept
    extras: dict = field(default_factory=dict)
    # the keys as read, for to_dict: writers differ (COM2's results have `evaluator` after `examples`, alpaca's before)
    order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    KEYS = ("metrics", "primary", "examples", "wall_s")

    @classmethod
    def from_dict(cls, data: dict, where: str) -> ModelResult:
        d = _need(data, cls.KEYS, where)
        metrics = {name: Metric.from_dict(m, f"{where}, metric {name!r}") for name, m in
                   _need(d["metrics"], (), f"{where}, metrics").items()}
        if d["primary"] not in metrics:
            raise EvalFileError(f"{where}: primary metric {d['primary']!r} is not among its metrics {list(metrics)}")
        baseline = d.get("majority_baseline")
        if baseline is not None:
            baseline = MajorityBaseline.from_dict(baseline, f"{where}, majority_baseline")
        return cls(metrics, d["primary"], d["examples"], d["wall_s"], d.get("evaluator"), baseline,
                   _extras(d, (*cls.KEYS, "evaluator", "majority_baseline")), tuple(d))

    @property
    def primary_metric(self) -> Metric:
        return self.metrics[self.primary]

    def to_dict(self) -> dict:
        evaluator = {} if self.evaluator is None else {"evaluator": self.evaluator}
        baseline = {} if self.majority_baseline is None else {"majority_baseline": self.majority_baseline.to_dict()}
        return _ordered({"metrics": {name: m.to_dict() for name, m in self.metrics.items()}, "primary": self.primary,
                         "examples": self.examples, "wall_s": self.wall_s, **evaluator, **baseline, **self.extras},
                        self.order)


@dataclass(frozen=True)
class EvalFile:
    """A task split scored after an iteration (0: the initial pool): each model's result, in the file's order."""

    task: str
    kind: str  # the task's kind: gsm8k, math, mc or judged
    split: str
    iteration: int
    n_examples: int
    results: dict[str, ModelResult]
    models: dict[str, dict] | None = None  # what each scored model is; None in files written before it was kept
    extras: dict = field(default_factory=dict)  # evaluator, judge_prompt (absent in those older files too)
    order: tuple[str, ...] = field(default=(), repr=False, compare=False)  # the keys as read

    KEYS = ("task", "kind", "split", "iteration", "n_examples", "results")

    @classmethod
    def from_dict(cls, data: dict, source: str) -> EvalFile:
        d = _need(data, cls.KEYS, source)
        results = {m: ModelResult.from_dict(r, f"{source}: results[{m!r}]")
                   for m, r in _need(d["results"], (), f"{source}: results").items()}
        return cls(d["task"], d["kind"], d["split"], d["iteration"], d["n_examples"], results, d.get("models"),
                   _extras(d, (*cls.KEYS, "models")), tuple(d))

    @classmethod
    def read(cls, path: Path) -> EvalFile:
        return cls.from_dict(read_json(path), str(path))

    @property
    def evaluator(self) -> dict | None:
        """The record of the model that scored free-text answers; None without one. It stays in `extras`: an
        older file has no key at all, a newer one null, and to_dict must give back which."""
        return self.extras.get("evaluator")

    @property
    def subset(self) -> dict | None:
        """Which items of the split were scored: {"seed", "of" (the split's size), "indices"} when eval.limit drew
        some; None when every item was (a file without the key: written before the draw, the first n_examples
        items). In `extras`, as `evaluator`."""
        return self.extras.get("subset")

    def outside(self) -> set[str]:
        """The scored models from outside the pool (`sparta eval --members SPEC`)."""
        return {m for m, record in (self.models or {}).items() if not record.get("member", True)}

    def to_dict(self) -> dict:
        models = {} if self.models is None else {"models": self.models}
        return _ordered({"task": self.task, "kind": self.kind, "split": self.split, "iteration": self.iteration,
                         "n_examples": self.n_examples, **models, **self.extras,
                         "results": {m: r.to_dict() for m, r in self.results.items()}}, self.order)
