"""The engine of a run: one iteration is prompts → the method's training rows (sparta.methods: SPARTA's combat,
or a baseline's own samples) → pairs → every member trained; then evaluation and the report. It owns the pool as
it stands at each iteration (adapters, the inference backend, the trainer, local or Ray) and the run directory.

Every stage writes its output atomically and then a done-marker; combat is journaled a round at a time.
Rerunning on the same run directory skips what is done and replays the journal, so a resumed run gives
the same results as one that was never interrupted (same seed, CPU).
"""

from __future__ import annotations

import importlib.util
import logging
import resource
import time
from contextlib import contextmanager
from pathlib import Path

from .arena.matchmaking import uniform_warning
from .arena.reputation import ReputationState, initial_state
from .backends import MemberModel, build_backend
from .baselines.spin import check_references
from .config import RunConfig
from .evaluation import needs_evaluator
from .experts import build_experts, check_recipes
from .methods import method_for
from .models import ModelSpecError, ResolvedModel, default_cache_dir, resolve_adapter, resolve_model
from .prompts import load_prompts, load_references, sample_prompts
from .ratings import leaderboard_at
from .ratings import start_state as saved_start_state
from .records import Prompt, read_json, read_jsonl, to_json, write_json_atomic, write_jsonl_atomic
from .report import write_report
from .run_evaluation import RunEvaluation
from .rundir import RunDir, RunDirError
from .seeding import derive_seed
from .tasks.catalog import get_task
from .tracking import Tracking
from .training import DPOJob, SPPOJob, job_kind, job_steps, run_job
from .viewer import write_view

log = logging.getLogger(__name__)


def _noop(stage: str, total: int):
    return None


class Pipeline:
    def __init__(self, config: RunConfig, progress=None, on_iteration=None):
        """`progress(stage, total)` returns a tick(n) callback; `on_iteration(summary)` sees each result."""
        self.c = config
        self.progress = progress or _noop
        self.on_iteration = on_iteration or (lambda summary: None)
        self.cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        self.members = [m.name for m in config.pool.members]
        self.elo = config.reputation
        self.lora = config.pool.lora
        self.method = method_for(config)
        self.backend = None  # the inference backend (sparta.backends), built on first use
        self.store = None  # HF models loaded in this process (shared by the HF backend and training)
        self.trainer = None  # training on those models, built on first use
        self.outside: dict[str, MemberModel] = {}  # model spec -> a model from outside the pool (evaluation)
        self.evaluation = RunEvaluation(self)
        # set by check() (no model needed) and prepare() (the run directory, resolved models, initial adapters)
        self.prompt_pool: list[Prompt] = []
        self.references: dict[str, str] = {}  # prompt id -> reference answer (spin)
        self.run: RunDir | None = None
        self.resolved: dict[str, ResolvedModel] = {}
        self.initial_adapters: dict[str, Path | None] = {}
        self.tracking: Tracking | None = None  # experiment tracking (sparta.tracking), started by run_all

    # ---- set-up: everything cheap is checked before anything expensive ---------------------------

    def check(self) -> None:
        """Every check that needs no model: data, recipes, adapter and model paths."""
        c = self.c
        self.prompt_pool = load_prompts(c.data.prompts, c.data.user_data or None)
        if self.method.needs_references:
            self.references = load_references(c.data.prompts, c.data.user_data or None)
            check_references(self.prompt_pool, self.references, c.data.prompts)
        check_recipes([m.expert for m in c.pool.members if m.expert])
        for name in c.eval.tasks:
            get_task(name).examples(c.eval.splits[0], c.data.user_data or None)  # unknown task / missing data
        if c.eval.evaluator:
            self.evaluation.check_model(c.eval.evaluator, "eval.evaluator")
        if c.reputation.initial != "fair":
            task = get_task(c.reputation.initial)  # an unknown name fails here, listing the tasks
            if needs_evaluator(task):  # its evaluator would be picked by reputation: circular
                raise ValueError(f"reputation.initial: {task.name!r} is scored by an evaluator model; use 'fair' or "
                                 "a task graded against answers (gsm8k, math_*, multiple choice)")
            task.examples("dev", c.data.user_data or None)
        for m in c.pool.members:
            resolve_model(m.model or c.pool.base, self.cache, build=False)
            if m.adapter:
                try:
                    resolve_adapter(m.adapter, fetch=False)
                except ModelSpecError as e:
                    raise FileNotFoundError(f"pool.members[{m.name}].adapter: {e}") from None
        if c.runtime.kind == "ray" and importlib.util.find_spec("ray") is None:
            raise ModuleNotFoundError("runtime.kind=ray needs Ray: pip install 'sparta-align[ray]'")
        warning = uniform_warning(len(self.members), c.arena.k)
        if warning:
            log.warning(warning)

    def prepare(self) -> None:
        """Check, open the run directory (refusing a different config), then resolve models and experts."""
        self.check()
        self.run = RunDir.open(self.c)
        self.resolved = {m.name: resolve_model(m.model or self.c.pool.base, self.cache) for m in self.c.pool.members}
        self.initial_adapters = self.build_initial_adapters()

    def build_initial_adapters(self) -> dict[str, Path | None]:
        """Each member's starting adapter: its own, a (cached) expert, or None for a fresh one."""
        c, adapters = self.c, {}
        by_base: dict[str, list[str]] = {}
        for m in c.pool.members:
            adapters[m.name] = resolve_adapter(m.adapter) if m.adapter else None
            if m.expert:
                by_base.setdefault(m.model or c.pool.base, []).append(m.expert)
        built = {}
        for spec, recipes in by_base.items():
            base = resolve_model(spec, self.cache)
            for recipe, info in build_experts(base, sorted(set(recipes)), self.cache, self.lora, c.pool.experts,
                                              c.seed, self.progress, self._store).items():
                built[(spec, recipe)] = info["dir"]
        for m in c.pool.members:
            if m.expert:
                adapters[m.name] = built[(m.model or c.pool.base, m.expert)]
        return adapters

    def _store(self):
        """The HF models of this process (no base is loaded twice), with the configured precision and devices."""
        if self.store is None:
            from .backends.hf import ModelStore

            self.store = ModelStore.configured(self.c.model)
        return self.store

    def _pool(self, t: int) -> list[MemberModel]:
        """The members as they stand at the start of iteration t: the adapters iteration t - 1 wrote."""
        return [MemberModel(m, self.resolved[m], self.run.adapter_dir(t - 1, m) if t > 1 else self.initial_adapters[m])
                for m in self.members]

    def backend_at(self, t: int):
        """The inference backend serving the pool as it stands at the start of iteration t (every stage asks
        for its own t, so a resumed run never reads stale adapters)."""
        pool = self._pool(t) + list(self.outside.values())
        if self.c.runtime.kind == "ray":
            self._cluster().set_pool(pool)
        elif self.backend is None:
            self.backend = build_backend(self.c, pool, self._store, self.run.root / "vllm-server.log")
        else:
            self.backend.set_pool(pool)
        return self.backend

    def _cluster(self):
        """runtime.kind=ray: the Ray workers, which are the inference backend and train the members."""
        if self.backend is None:
            from .cluster import Cluster

            self.backend = Cluster(self.c, self.run.root)
        return self.backend

    def _trainer(self):
        from .backends.hf import HFTrainer

        if self.trainer is None:
            self.trainer = HFTrainer(self.lora, self.c.seed, self._store(), self.c.model.gradient_checkpointing)
        return self.trainer

    def close(self) -> None:
        """Stop what the run started (a vLLM server, Ray workers)."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    # ---- the loop ----------------------------------------------------------------------------------

    def run_all(self) -> RunDir:
        if self.c.threads:
            import torch

            torch.set_num_threads(self.c.threads)
        self.prepare()
        self.tracking = Tracking(self.c, self.run, self.members)
        try:
            self.evaluation.due(0)
            for t in range(1, self.c.iterations + 1):
                if not self.run.is_done(t, "iteration"):
                    self.iteration(t)
                self.evaluation.due(t)
                self._tracked()
                self.on_iteration(self.summary(t))
        finally:
            self.tracking.finish()  # never raises
            self.close()
        write_report(self.run.root, self.members)
        self._write_view()
        return self.run

    def _write_view(self) -> None:
        """The duel browser (RUN/view), rewritten whole after every run: 4 s for a paper-sized one. A directory
        there that `sparta view` did not write stays as it is (a warning): the run itself is done."""
        try:
            write_view(self.run.root)
        except (FileExistsError, OSError) as e:
            log.warning("the duel browser was not written: %s", e)

    def iteration(self, t: int) -> None:
        """Prompts, the method's training rows, pairs.jsonl, every member trained, metrics: iteration t."""
        run, timings = self.run, {}
        clock = time.perf_counter()
        prompts = self._prompts(t)
        timings["prompts"] = time.perf_counter() - clock
        played = self.method.play(self, t, prompts, timings)
        pairs = self._pairs(t, played.rows, timings)
        self._tracked()
        clock = time.perf_counter()
        self._train(t, pairs)
        timings[self.method.loss] = time.perf_counter() - clock
        metrics = {**played.counts(pairs), **training_and_costs(self._training(t), timings)}
        write_json_atomic(run.metrics(t), metrics)
        run.mark_done(t, "iteration")

    def _tracked(self) -> None:
        """A stage finished: the trackers get it (sparta.tracking); nothing when tracking was not started."""
        if self.tracking is not None:
            self.tracking.update()

    def _pairs(self, t: int, made: list[dict], timings: dict) -> list[dict]:
        """iter_t/pairs.jsonl, written once; read back from the file, so a resumed run trains on the same pairs."""
        clock = time.perf_counter()
        if not self.run.is_done(t, "pairs"):
            write_jsonl_atomic(self.run.pairs(t), made)
            self.run.mark_done(t, "pairs")
        timings["pairs"] = time.perf_counter() - clock
        return read_jsonl(self.run.pairs(t))

    def _prompts(self, t: int) -> list[Prompt]:
        path = self.run.prompts(t)
        if not self.run.is_done(t, "prompts"):
            chosen = sample_prompts(self.prompt_pool, self.c.data.prompts_per_iteration, self.c.seed, t)
            write_jsonl_atomic(path, [to_json(p) for p in chosen])
            self.run.mark_done(t, "prompts")
        return [Prompt(**row) for row in read_jsonl(path)]

    def start_state(self, t: int) -> ReputationState:
        if t == 1:
            self._keep_initial_reputations()
        return saved_start_state(self.run.root, t, self.members, self.elo)

    def _keep_initial_reputations(self) -> None:
        """With reputation.initial = a task: the ratings from the members' dev-split scores on it, computed once
        and kept in initial_reputations.json, so a resumed run starts from the same ratings."""
        task = self.c.reputation.initial
        path = self.run.initial_reputations
        if task != "fair" and not path.exists():
            results = self.evaluation.dev_results(task)
            metric = self.c.reputation.initial_metric or results[self.members[0]].primary
            missing = [m for m in self.members if metric not in results[m].metrics]
            if missing:
                raise RuntimeError(f"reputation.initial_metric={metric!r}: {task}'s dev results of {missing} have no "
                                   f"such metric; they have {sorted(results[missing[0]].metrics)}")
            scores = {m: results[m].metrics[metric].value for m in self.members}
            unscored = [m for m, v in scores.items() if v != v]  # NaN: every example failed
            if unscored:
                raise RuntimeError(f"reputation.initial={task}: no scored dev example for {unscored}")
            state = initial_state(self.members, self.elo, scores)
            write_json_atomic(path, {"task": task, "split": "dev", "metric": dict.fromkeys(self.members, metric),
                                     "scores": scores, "state": state.to_dict()})

    def _train(self, t: int, pairs: list[dict]) -> None:
        """Each member trains a copy of its adapter at the start of iteration t and writes iter_t/adapters/NAME."""
        run = self.run
        jobs = [self._job(t, member, self.method.rows_for(member.name, pairs))
                for member in self._pool(t) if not run.is_done(t, f"train-{member.name}")]
        with self._gpu_for_training(bool(jobs)):
            for job, metrics in self._run_jobs(jobs):  # in the order they finish
                write_json_atomic(run.training(t, job.member.name), metrics)
                run.mark_done(t, f"train-{job.member.name}")
                self._tracked()

    @contextmanager
    def _gpu_for_training(self, training: bool):
        """backend.vllm.release_for_training: the vLLM server stops before training and the trainer's base is freed
        after it, so each has the GPU in turn; the next stage starts a new server, which loads every adapter anew."""
        c = self.c
        release = training and c.backend.kind == "vllm" and c.runtime.kind == "local" and \
            c.backend.vllm.release_for_training
        if release:
            self.close()
        try:
            yield
        finally:
            if release and self.store is not None:
                self.store.release()

    def _job(self, t: int, member: MemberModel, rows: list[dict]) -> DPOJob | SPPOJob:
        """The member's training job of iteration t: SPPO on its samples for method sppo, else DPO on its pairs."""
        c = self.c
        seed, out = derive_seed(c.seed, t), self.run.adapter_dir(t, member.name)
        prompt_tokens = c.generation.max_prompt_tokens
        if self.method.loss == "sppo":
            return SPPOJob(member, rows, c.training, prompt_tokens, c.baseline.sppo_eta, seed, out)
        return DPOJob(member, rows, c.training, prompt_tokens, seed, out)

    def _run_jobs(self, jobs: list[DPOJob | SPPOJob]):
        """Yield (job, metrics) as each member's DPO or SPPO finishes: here one after the other, or over the Ray
        workers (every job is tried; a failure is raised after the others finished, so their adapters are kept)."""
        if self.c.runtime.kind == "ray" and jobs:
            yield from self._cluster().train(jobs, self.progress(f"{job_kind(jobs[0])} (ray workers)", len(jobs)))
            return
        for job in jobs:
            tick = self.progress(f"{job_kind(job)} {job.member.name}", job_steps(job))
            yield job, run_job(self._trainer(), job, tick)

    def _training(self, t: int) -> dict[str, dict]:
        return {m: read_json(self.run.training(t, m)) for m in self.members}

    # ---- evaluation (sparta/run_evaluation.py) -----------------------------------------------------------------------

    def evaluate(self, task_name: str, split: str, iteration: int | None = None, members: list[str] | None = None,
                 limit: int | None = None, evaluator: str | None = None) -> Path:
        """`sparta eval`: score members as they stood after `iteration` (0 = the initial pool; None = the last
        finished one) on a task split; writes RUN/eval/iter_NN/TASK-SPLIT.json and returns its path.
        `members` and `evaluator` name pool members or model specs (models from outside the pool, scored or
        scoring as they are, without an adapter); the evaluator defaults to eval.evaluator, then to the member
        with the highest reputation."""
        get_task(task_name).examples(split, self.c.data.user_data or None)  # a bad task or split fails first
        for name in (members or []) + ([evaluator] if evaluator else []):
            self.evaluation.check_model(name, "--members / --evaluator")
        self.prepare()
        finished = [t for t in range(1, self.c.iterations + 1) if self.run.is_done(t, "iteration")]
        iteration = (finished[-1] if finished else 0) if iteration is None else iteration
        if iteration and iteration not in finished:
            raise RunDirError(f"iteration {iteration} of {self.run.root} has not finished")
        return self.evaluation.score(iteration, task_name, split, members or self.members, limit, evaluator)

    def outside_model(self, spec: str) -> MemberModel:
        """A model from outside the pool (evaluation's), by its spec. It joins the backend's pool, so a spec whose
        weights are already loaded (pool.base) shares them: its fresh LoRA adapter adds exactly zero, so it
        computes the base model's own function, and no second copy is loaded."""
        if spec not in self.outside:
            self.outside[spec] = MemberModel(f"@{len(self.outside)}", resolve_model(spec, self.cache), None)
        return self.outside[spec]

    # ---- reporting ---------------------------------------------------------------------------------

    def summary(self, t: int) -> dict:
        return {"iteration": t, "leaderboard": leaderboard_at(self.run, t, self.members),
                "metrics": read_json(self.run.metrics(t))}


def training_and_costs(training: dict[str, dict], timings: dict) -> dict:
    return {
        "training": {m: {k: v for k, v in t.items() if k != "history"} for m, t in training.items()},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this process, so far
    }
