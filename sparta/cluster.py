"""`runtime.kind=ray`: the pipeline's stages on a Ray cluster.

`runtime.workers` Ray actors (`Worker`), one placement-group bundle each (`runtime.worker`: CPUs and GPUs), each
hold the base model(s) and every member's adapter in a ModelStore of their own, as the local pipeline's process
does, and serve the configured backend (HF in the worker, or a vLLM server it starts).

- Inference: each backend call is cut into one shard per worker (sparta.backends: whole batches of the backend's
  own plan, numbered and seeded as in one call) and the shards merged, so the results are those of one local
  backend, bit for bit.
- Training: each member's job (`training.DPOJob`, or `SPPOJob` for method=sppo) goes to the next free worker; it
  writes iter_t/adapters/NAME on shared storage, or (runtime.shared_storage=false) returns the files, which the
  driver writes there. Adapters reach the workers the same way: as directories, or as Ray objects.
- Faults: a worker that dies (killed, out of memory, its node lost) is replaced in its bundle and its shard or job
  redone, up to runtime.max_retries times per call; the work is seeded, so a redo gives the same result. Past
  that, the call raises, after the other jobs of the stage finished: what is done stays done, and a resumed run
  redoes only the rest. An exception inside a job (not a death) is not retried: it would happen again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import shutil
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

from .backends import BackendError, MemberModel, adapter_stamp, build_backend, load_tokenizer
from .config import RunConfig
from .rundir import swap_in
from .training import DPOJob, SPPOJob, run_job

log = logging.getLogger(__name__)


class Worker:
    """One Ray actor (made remote by Cluster, so importing this module needs no Ray): a ModelStore, the backend
    serving the pool on it, and training on the same loaded bases."""

    def __init__(self, config: RunConfig, index: int, run_root: str):
        import torch

        from .backends.hf import ModelStore

        torch.set_num_threads(config.threads or max(1, int(config.runtime.worker.num_cpus)))
        vllm = config.backend.vllm  # workers on one node must not ask for the same port
        self.c = replace(config, backend=replace(config.backend, vllm=replace(vllm, port=vllm.port and
                                                                               vllm.port + index)))
        self.index = index
        self.local = Path(tempfile.mkdtemp(prefix=f"sparta-worker{index}-"))  # adapters that came as objects
        self.received: dict[str, Path] = {}  # Ray object id -> where its adapter was written
        shared = config.runtime.shared_storage
        self.log_path = Path(run_root) / f"vllm-server-{index}.log" if shared else self.local / "vllm-server.log"
        self.store = ModelStore.configured(config.model)
        self.backend = None
        self.trainer = None

    def set_pool(self, members: list[MemberModel], files: dict) -> None:
        members = [self._here(m, files) for m in members]
        if self.backend is None:
            self.backend = build_backend(self.c, members, lambda: self.store, self.log_path)
        else:
            self.backend.set_pool(members)

    def call(self, method: str, payload: tuple, shard: tuple[int, int]):
        args, kwargs = payload
        return getattr(self.backend, method)(*args, **kwargs, shard=shard)

    def train(self, job: DPOJob | SPPOJob, files: dict) -> dict:
        """Run one member's DPO or SPPO job; returns its metrics, where it ran, and the adapter's files when they
        must travel."""
        from .backends.hf import HFTrainer

        if self.trainer is None:
            self.trainer = HFTrainer(self.c.pool.lora, self.c.seed, self.store, self.c.model.gradient_checkpointing)
        travel = not self.c.runtime.shared_storage
        out = self.local / "trained" / job.member.name if travel else job.out_dir
        metrics = run_job(self.trainer, replace(job, member=self._here(job.member, files), out_dir=out))
        return {"metrics": metrics, "files": pack(out) if travel else None,
                "where": {"node": socket.gethostname(), "worker": self.index,
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}}

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        shutil.rmtree(self.local, ignore_errors=True)

    def _here(self, member: MemberModel, files: dict) -> MemberModel:
        """The member with an adapter directory on this machine (written once from its files, if they came)."""
        if member.name not in files:
            return member
        ref = files[member.name]
        if ref.hex() not in self.received:  # fetched once, not at every stage's set_pool
            import ray

            blob = ray.get(ref)
            directory = self.local / "adapters" / hashlib.sha256(b"".join(
                name.encode() + data for name, data in sorted(blob.items()))).hexdigest()[:16]
            if not directory.exists():
                unpack(blob, directory)
            self.received[ref.hex()] = directory
        return replace(member, adapter_dir=self.received[ref.hex()])


class Cluster:
    """The inference backend (sparta.backends.InferenceBackend) over the workers, and the trainer of members."""

    def __init__(self, config: RunConfig, run_root: Path):
        import ray
        from ray.util.placement_group import placement_group

        r = self.r = config.runtime
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=r.address or None, num_cpus=None if r.address or not r.num_cpus else r.num_cpus,
                     include_dashboard=False, logging_level=logging.WARNING)
        bundle = {"CPU": r.worker.num_cpus, **({"GPU": r.worker.num_gpus} if r.worker.num_gpus else {})}
        self.group = placement_group([bundle] * r.workers, strategy=r.placement)
        try:
            ray.get(self.group.ready(), timeout=r.startup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise BackendError(f"runtime: the Ray cluster did not grant {r.workers} workers of {bundle} "
                               f"({r.placement}) within {r.startup_timeout_s:.0f} s; it has "
                               f"{ray.cluster_resources()}") from None
        self.config, self.run_root = config, str(Path(run_root).resolve())
        self.actor = ray.remote(Worker)
        self.workers = [self._start(i) for i in range(r.workers)]
        self.pool: list[MemberModel] = []
        self.files: dict = {}  # member -> Ray object of its adapter's files (runtime.shared_storage=false)
        self._objects: dict = {}  # adapter_stamp -> that object (each adapter is put once)

    def _start(self, i: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        w = self.r.worker
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i)
        return self.actor.options(num_cpus=w.num_cpus, num_gpus=w.num_gpus, scheduling_strategy=strategy,
                                  max_restarts=0).remote(self.config, i, self.run_root)

    def _replace(self, i: int, error: Exception) -> None:
        """A new worker in bundle i, serving the current pool (the old one died)."""
        import ray

        log.warning("ray worker %d died (%s); starting a new one", i, str(error).splitlines()[0][:200])
        ray.kill(self.workers[i], no_restart=True)
        self.workers[i] = self._start(i)
        if self.pool:
            ray.get(self.workers[i].set_pool.remote(self.pool, self.files))

    # ---- the inference protocol --------------------------------------------------------------------

    def set_pool(self, members: list[MemberModel]) -> None:
        self.pool = [_absolute(m) for m in members]
        self.files = {} if self.r.shared_storage else {m.name: self._object(m) for m in self.pool if m.adapter_dir}
        live = {adapter_stamp(m.adapter_dir) for m in self.pool}
        self._objects = {k: v for k, v in self._objects.items() if k in live}  # frees earlier iterations' objects
        self._each(lambda w, i: w.set_pool.remote(self.pool, self.files))

    def tokenizer(self, member: str):
        return load_tokenizer(next(m.base.source for m in self.pool if m.name == member))

    def generate(self, members, prompts, *, progress=None, **kwargs):
        return self._sharded("generate", (members, prompts), kwargs, progress, lambda v: 1)

    def next_token_logprobs(self, members, prompts, token_ids, *, progress=None, **kwargs):
        return self._sharded("next_token_logprobs", (members, prompts, token_ids), kwargs, progress, lambda v: 1)

    def grouped_next_token_logprobs(self, members, groups, token_ids, *, progress=None, **kwargs):
        return self._sharded("grouped_next_token_logprobs", (members, groups, token_ids), kwargs, progress, len)

    def continuation_logprobs(self, member, prefixes, continuations, **kwargs):
        return self._sharded("continuation_logprobs", (member, prefixes, continuations), kwargs, None, len)

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for w in getattr(self, "workers", []):
            try:
                ray.get(w.close.remote(), timeout=60)  # stops a vLLM server it runs
            except ray.exceptions.RayError as e:
                log.warning("ray worker did not close cleanly: %s", str(e).splitlines()[0][:200])
            ray.kill(w, no_restart=True)
        self.workers = []
        remove_placement_group(self.group)
        if self.started:
            ray.shutdown()
            self.started = False

    def _sharded(self, method: str, args: tuple, kwargs: dict, progress, size) -> list:
        """One call cut into one shard per worker; the merged rows (each computed by exactly one shard)."""
        import ray

        payload = ray.put((args, kwargs))
        k = len(self.workers)
        parts: list = [None] * k

        def done(i, part):
            parts[i] = part
            if progress:
                progress(sum(size(v) for v in part if v is not None))

        self._each(lambda w, i: w.call.remote(method, payload, (i, k)), done)
        return merge(parts, method)

    def _each(self, submit, done=None) -> None:
        """submit(worker, i) on every worker, redone on a new worker where one dies; done(i, result) as each
        finishes."""
        import ray

        pending = {submit(w, i): (i, 0) for i, w in enumerate(self.workers)}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, attempt = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                if attempt >= self.r.max_retries:
                    raise BackendError(f"ray worker {i} died {attempt + 1} time(s) in one call "
                                       f"(runtime.max_retries={self.r.max_retries}): {e}") from None
                self._replace(i, e)
                pending[submit(self.workers[i], i)] = (i, attempt + 1)
                continue
            if done:
                done(i, result)

    def _object(self, member: MemberModel):
        import ray

        stamp = adapter_stamp(member.adapter_dir)
        if stamp not in self._objects:
            self._objects[stamp] = ray.put(pack(member.adapter_dir))
        return self._objects[stamp]

    # ---- training ----------------------------------------------------------------------------------

    def train(self, jobs: list[DPOJob | SPPOJob], tick=None):
        """Yield (job, metrics) as each finishes, jobs given to workers as they free up. A worker that dies is
        replaced and its job redone (runtime.max_retries); an error is raised once every other job is over."""
        import ray

        queue = [(_absolute_job(j), 0) for j in jobs]
        idle, running, errors = list(range(len(self.workers))), {}, []
        while queue or running:
            while queue and idle:
                (job, attempt), i = queue.pop(0), idle.pop(0)
                files = {} if self.r.shared_storage or not job.member.adapter_dir else \
                    {job.member.name: self._object(job.member)}
                running[self.workers[i].train.remote(job, files)] = (i, job, attempt)
            [ref], _ = ray.wait(list(running), num_returns=1)
            i, job, attempt = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._replace(i, e)
                if attempt < self.r.max_retries:
                    queue.insert(0, (job, attempt + 1))
                else:
                    errors.append(f"{job.member.name}: worker died {attempt + 1} time(s): {e}")
                idle.append(i)
                continue
            except ray.exceptions.RayTaskError as e:  # the job raised: it would again
                errors.append(f"{job.member.name}: {e}")
                idle.append(i)
                continue
            idle.append(i)
            if result["files"] is not None:
                unpack(result["files"], job.out_dir)
            if tick:
                tick(1)
            yield job, {**result["metrics"], "ray": {**result["where"], "attempts": attempt + 1}}
        if errors:
            raise BackendError(f"training failed on the Ray workers for {len(errors)} member(s) (the others are "
                               "kept): " + "; ".join(e.splitlines()[0][:300] for e in errors))


def merge(parts: list[list], method: str) -> list:
    """The rows of a sharded call: each row from the one shard that computed it."""
    out = []
    for i, values in enumerate(zip(*parts)):
        found = [v for v in values if v is not None]
        if len(found) != 1:
            raise BackendError(f"{method}: row {i} came from {len(found)} shards, not 1")
        out.append(found[0])
    return out


def pack(directory: Path) -> dict[str, bytes]:
    """An adapter directory's files, to travel as one Ray object."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}


def unpack(files: dict[str, bytes], directory: Path) -> None:
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    swap_in(tmp, directory)


def _absolute(m: MemberModel) -> MemberModel:
    """Paths as every worker reads them (a worker's working directory is not the driver's)."""
    source = Path(m.base.source)
    base = replace(m.base, source=str(source.resolve())) if source.exists() else m.base
    return replace(m, base=base, adapter_dir=Path(m.adapter_dir).resolve() if m.adapter_dir else None)


def _absolute_job(job: DPOJob | SPPOJob) -> DPOJob | SPPOJob:
    return replace(job, member=_absolute(job.member), out_dir=Path(job.out_dir).resolve())
