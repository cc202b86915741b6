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
- Faults: a worker that dies (killed, out of memory, its node lost), hangs (no progress for runtime.stall_timeout_s:
  it is then killed), or whose vLLM server died or hung (ServerLost), is replaced in its bundle and its shard or job
  redone, up to runtime.max_retries times per call; the work is seeded, so a redo gives the same result. Past
  that, the call raises, after the other jobs of the stage finished: what is done stays done, and a resumed run
  redoes only the rest. An exception inside a job (not a death) is not retried: it would happen again.
- Progress: each worker counts its progress (training steps, inference batches or rows, calls begun and ended);
  the driver reads the count through a second thread of the actor (the "beat" concurrency group), which answers
  while the first is busy, so a count that stops moving means the call is stuck, wherever it is stuck.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import shutil
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .backends import BackendError, MemberModel, ServerLost, adapter_stamp, build_backend, load_tokenizer
from .config import RunConfig
from .rundir import swap_in
from .training import DPOJob, SPPOJob, job_kind, run_job

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
        self.beats = 0  # progress made, read by heartbeat() while a call runs

    def heartbeat(self) -> int:
        """The progress count (called in the "beat" concurrency group: a thread of its own)."""
        return self.beats

    def beat(self, n: int = 1) -> None:
        self.beats += 1

    def set_pool(self, members: list[MemberModel], files: dict) -> None:
        self.beat()
        members = [self._here(m, files) for m in members]
        if self.backend is None:
            self.backend = build_backend(self.c, members, lambda: self.store, self.log_path)
        else:
            self.backend.set_pool(members)
        self.beat()

    def call(self, method: str, payload: tuple, shard: tuple[int, int]):
        self.beat()
        args, kwargs = payload
        out = getattr(self.backend, method)(*args, **kwargs, progress=self.beat, shard=shard)
        self.beat()
        return out

    def train(self, job: DPOJob | SPPOJob, files: dict) -> dict:
        """Run one member's DPO or SPPO job; returns its metrics, where it ran, and the adapter's files when they
        must travel."""
        from .backends.hf import HFTrainer

        self.beat()
        if self.trainer is None:
            self.trainer = HFTrainer(self.c.pool.lora, self.c.seed, self.store, self.c.model.gradient_checkpointing)
        travel = not self.c.runtime.shared_storage
        out = self.local / "trained" / job.member.name if travel else job.out_dir
        metrics = run_job(self.trainer, replace(job, member=self._here(job.member, files), out_dir=out), self.beat)
        self.beat()
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
        self.actor = ray.remote(concurrency_groups={"beat": 1})(Worker)  # heartbeat() answers while a call runs
        self.workers = [self._start(i) for i in range(r.workers)]
        self.watch: dict[int, _Watch] = {}  # worker index -> the progress of the call it runs
        try:
            self._up(range(r.workers))
        except BaseException:
            self.close()
            raise
        self.pool: list[MemberModel] = []
        self.files: dict = {}  # member -> Ray object of its adapter's files (runtime.shared_storage=false)
        self._objects: dict = {}  # adapter_stamp -> that object (each adapter is put once)

    def _start(self, i: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        w = self.r.worker
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i)
        return self.actor.options(num_cpus=w.num_cpus, num_gpus=w.num_gpus, scheduling_strategy=strategy,
                                  max_restarts=0).remote(self.config, i, self.run_root)

    def _up(self, indices) -> None:
        """Wait for workers to be made (their __init__ imports torch and reads the config), within
        runtime.startup_timeout_s, so that the stall timeout of their calls need not cover it."""
        import ray

        probes = {self.workers[i].heartbeat.options(concurrency_group="beat").remote(): i for i in indices}
        ready, late = ray.wait(list(probes), num_returns=len(probes), timeout=self.r.startup_timeout_s)
        ray.get(ready)  # raises if a worker could not be made
        if late:
            raise BackendError(f"ray workers {sorted(probes[p] for p in late)} did not start within "
                               f"runtime.startup_timeout_s={self.r.startup_timeout_s:g} s")

    def _replace(self, i: int, why: str) -> None:
        """A new worker in bundle i, serving the current pool (the old one died, hung, or lost its server)."""
        import ray

        log.warning("ray worker %d %s; starting a new one", i, why)
        ray.kill(self.workers[i], no_restart=True)  # a hung one too: Ray SIGKILLs what does not exit
        self.workers[i] = self._start(i)
        self._up([i])
        if self.pool:
            try:  # bounded: the new worker may hang as well (set_pool starts a vLLM server, itself bounded)
                ray.get(self.workers[i].set_pool.remote(self.pool, self.files), timeout=self.r.stall_timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise BackendError(f"the new ray worker {i} did not take the pool within runtime.stall_timeout_s="
                                   f"{self.r.stall_timeout_s:g} s") from None

    def _submit(self, i: int, call):
        """call(worker) on worker i, its progress watched from now."""
        self.watch[i] = _Watch(time.monotonic())
        return call(self.workers[i])

    def _next(self, running: dict) -> tuple:
        """The first of `running` (ref -> (worker index, ...)) to end: (ref, None), or (ref, why) for a call whose
        worker made no progress for runtime.stall_timeout_s (hung)."""
        import ray

        poll = min(5.0, self.r.stall_timeout_s / 10)
        while True:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=poll)
            if ready:
                return ready[0], None
            now = time.monotonic()
            for ref, (i, *_) in running.items():
                idle = self.watch[i].idle(self.workers[i], now)
                if idle > self.r.stall_timeout_s:
                    return ref, (f"made no progress for {idle:.0f} s (runtime.stall_timeout_s="
                                 f"{self.r.stall_timeout_s:g})")

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

    def continuation_logprobs(self, member, prefixes, continuations, *, progress=None, **kwargs):
        return self._sharded("continuation_logprobs", (member, prefixes, continuations), kwargs, progress, len)

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

        self._each(lambda w, i: w.call.remote(method, payload, (i, k)), done, method)
        return merge(parts, method)

    def _each(self, submit, done=None, stage: str = "set_pool") -> None:
        """submit(worker, i) on every worker, redone on a new worker where one dies or hangs; done(i, result) as
        each finishes."""
        import ray

        pending = {self._submit(i, lambda w, i=i: submit(w, i)): (i, 0) for i in range(len(self.workers))}
        while pending:
            ref, hung = self._next(pending)
            i, attempt = pending.pop(ref)
            try:
                if hung:
                    raise _Lost(hung)
                result = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, _Lost) as e:
                why = _lost(e)
                if why is None:  # the call raised: it would again
                    raise
                if attempt >= self.r.max_retries:
                    ray.kill(self.workers[i], no_restart=True)  # a hung one must not hold its GPU (nor stall close)
                    raise BackendError(f"{stage} on ray worker {i}: the worker {why}; {attempt + 1} time(s) in one "
                                       f"call (runtime.max_retries={self.r.max_retries})") from None
                self._replace(i, why)
                pending[self._submit(i, lambda w, i=i: submit(w, i))] = (i, attempt + 1)
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
                running[self._submit(i, lambda w, job=job, files=files: w.train.remote(job, files))] = \
                    (i, job, attempt)
            ref, hung = self._next(running)
            i, job, attempt = running.pop(ref)
            try:
                if hung:
                    raise _Lost(hung)
                result = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, _Lost) as e:
                why = _lost(e)
                if why is None:  # the job raised: it would again
                    errors.append(f"{job.member.name}: {e}")
                    idle.append(i)
                    continue
                self._replace(i, why)
                if attempt < self.r.max_retries:
                    queue.insert(0, (job, attempt + 1))
                else:
                    errors.append(f"{job.member.name}: {job_kind(job)} on ray worker {i}: the worker {why}; "
                                  f"{attempt + 1} time(s) (runtime.max_retries={self.r.max_retries})")
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


class _Lost(Exception):
    """A call whose worker hung (it was not seen to end)."""


def _lost(error: Exception) -> str | None:
    """Why the worker of a failed call is lost (it died, hung, or its server was lost: replace it and redo the
    call), or None when the call itself raised."""
    import ray

    if isinstance(error, ray.exceptions.RayActorError):
        return f"died ({str(error).splitlines()[0][:200]})"
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, ServerLost):
        return f"lost its server ({str(error.cause).splitlines()[0]})"  # whole: it names the server's log
    if isinstance(error, _Lost):
        return str(error)
    return None


class _Watch:
    """The progress of one worker's call: its count as last read, and when it last moved."""

    def __init__(self, now: float):
        self.count, self.moved, self.probe = None, now, None

    def idle(self, worker, now: float) -> float:
        """Seconds since the count last moved; reads it without waiting (a hung worker never answers)."""
        import ray

        if self.probe is not None and ray.wait([self.probe], timeout=0)[0]:
            try:
                count = ray.get(self.probe)
            except ray.exceptions.RayError:  # a dead worker: its call says so
                count = self.count
            if count != self.count:
                self.count, self.moved = count, now
            self.probe = None
        if self.probe is None:
            self.probe = worker.heartbeat.options(concurrency_group="beat").remote()
        return now - self.moved


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
