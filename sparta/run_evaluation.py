"""A run's evaluation: which models are scored (members as they stood after iteration t, or models from outside
the pool), by which evaluator, and the file it writes (RUN/eval/iter_t/TASK-SPLIT.json). The scoring itself is
sparta/evaluation.py; the models are served by the engine's backend, which the models from outside join."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .arena.judging import JUDGE_PROMPT
from .backends import MemberModel
from .eval_results import EvalFile, ModelResult
from .evaluation import Evaluator, draw_items, evaluate, needs_evaluator
from .methods.base import Engine
from .models import ModelSpecError, resolve_model
from .records import write_json_atomic
from .tasks.catalog import get_task


class EvaluationEngine(Engine, Protocol):
    """What evaluation asks of the run beyond what a method may (sparta.pipeline.Pipeline)."""

    cache: Path
    initial_adapters: dict[str, Path | None]  # each member's adapter before iteration 1 (None: a fresh one)

    def outside_model(self, spec: str) -> MemberModel:
        """A model from outside the pool; it joins the pool that backend_at serves."""


class RunEvaluation:
    def __init__(self, engine: EvaluationEngine):
        self.engine = engine

    def check_model(self, name: str, where: str) -> None:
        """A pool member's name, or a model spec that resolves (nothing is built or loaded)."""
        engine = self.engine
        if name in engine.members:
            return
        try:
            resolve_model(name, engine.cache, build=False)
        except ModelSpecError as e:
            raise ValueError(f"{where}: {name!r} is neither a pool member ({', '.join(engine.members)}) nor a "
                             f"model spec: {e}") from None

    def due(self, t: int) -> None:
        """The run's own evaluation (eval.tasks) after iteration t; each task-split file is done once."""
        c = self.engine.c
        e = c.eval
        if not e.tasks or not (t == 0 or t % e.every == 0 or t == c.iterations):
            return
        for task_name in e.tasks:
            for split in e.splits:
                if not self.engine.run.evaluation(t, task_name, split).exists():
                    self.score(t, task_name, split, self.engine.members, e.limit, None)

    def dev_results(self, task: str) -> dict[str, ModelResult]:
        """The initial pool's dev results on `task`: the run's own file if it covers every member, else fresh."""
        engine = self.engine
        path = engine.run.evaluation(0, task, "dev")
        if not path.exists() or not set(engine.members) <= set(EvalFile.read(path).results):
            path = self.score(0, task, "dev", engine.members, engine.c.eval.limit, None)
        return EvalFile.read(path).results  # read from the file, whichever way it came

    def score(self, t: int, task_name: str, split: str, members: list[str], limit: int | None,
              evaluator: str | None) -> Path:
        """Score `members` (members or specs) as they stand after iteration t on a task split, `limit` items of it
        drawn with the run seed (draw_items; None or 0: all); the file written.
        The evaluator, where the task needs one: `evaluator`, else eval.evaluator, else the member with the
        highest reputation."""
        engine = self.engine
        task = get_task(task_name)
        examples = task.examples(split, engine.c.data.user_data or None)
        drawn = draw_items(len(examples), limit, engine.c.seed, task_name, split)
        subset = None if drawn is None else {"seed": engine.c.seed, "of": len(examples), "indices": drawn}
        examples = examples if drawn is None else [examples[i] for i in drawn]
        requested = (evaluator or engine.c.eval.evaluator) if needs_evaluator(task) else None
        if requested:
            self._backend_name(requested)  # an outside evaluator joins the pool first (its backend name: @0)
        names = {m: self._backend_name(m) for m in members}
        backend = engine.backend_at(t + 1)
        judge = self._evaluator(backend, t, requested) if needs_evaluator(task) else None
        scored = evaluate(backend, list(names.values()), task, examples, engine.c.eval, judge, engine.progress,
                          engine.c.seed)
        path = engine.run.evaluation(t, task_name, split)
        write_json_atomic(path, {"task": task_name, "kind": task.kind, "split": split, "iteration": t,
                                 "n_examples": len(examples), "subset": subset,
                                 "models": {m: self._record(m, t) for m in members},
                                 "evaluator": judge.record if judge else None,
                                 "judge_prompt": JUDGE_PROMPT if judge else None,
                                 "results": {m: scored[names[m]] for m in members}})
        return path

    def _evaluator(self, backend, t: int, requested: str | None) -> Evaluator:
        """`requested`, or by default the member with the highest reputation."""
        if requested is None:
            state = self.engine.start_state(t + 1)
            requested = max(self.engine.members, key=lambda m: state.ratings[m])
        return Evaluator(backend, self._backend_name(requested), self._record(requested, t))

    def _backend_name(self, name: str) -> str:
        """A member's own name; a model spec's name as it joined the backend (engine.outside_model)."""
        return name if name in self.engine.members else self.engine.outside_model(name).name

    def _record(self, name: str, t: int) -> dict:
        """What a scored or scoring model is: a member (its base spec and adapter after iteration t) or a spec."""
        engine = self.engine
        if name in engine.members:
            m = next(m for m in engine.c.pool.members if m.name == name)
            adapter = engine.run.adapter_dir(t, name) if t else engine.initial_adapters[name]
            return {"name": name, "member": True, "spec": m.model or engine.c.pool.base, "iteration": t,
                    "adapter": str(adapter) if adapter else None}
        resolved = engine.outside_model(name).base
        return {"name": name, "member": False, "spec": name, "kind": resolved.kind,
                "fingerprint": resolved.fingerprint, "adapter": None}
