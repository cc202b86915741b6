"""Inference backends: what the arena and evaluation call, whatever runs the models.

The protocol takes token-id prompts and, per row, a member name; the backend maps each name to a base model
and the member's adapter directory for the iteration at hand (`set_pool`). Training is not part of it: it
owns a trainable copy of one adapter (`hf.HFTrainer`) and writes the result to the run directory, from where
the next `set_pool` reads it. Backends:

- `hf.HFBackend`: Hugging Face transformers + PEFT in this process (CPU or GPU); members on one base share it,
  batches mix adapters row by row.
- `vllm.VLLMBackend`: a vLLM server with per-row LoRA adapters, started and stopped by sparta.
- `openai_http.HTTPBackend`: any OpenAI-compatible completions server.

Sharding: every call takes `shard=(i, k)` (default None: all the work) and then computes only the i-th of k
interleaved parts of it: whole batches of the backend's own plan (HF), or rows (servers), numbered and seeded
as in the unsharded call, and None elsewhere. The k parts together are the unsharded result, bit for bit, which
is how `sparta.cluster` spreads one call over k engines.

Errors: a problem with one input (a prompt that does not fit the model's window) fails that row, as data. Any
other error (out of memory, a dead server, a bug) raises: the run stops loudly and keeps what it finished.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..models import ResolvedModel


@dataclass(frozen=True)
class MemberModel:
    """A member as one stage sees it: its base model and its adapter for that iteration."""

    name: str
    base: ResolvedModel
    adapter_dir: Path | None  # None: a fresh LoRA adapter (identical to the base until trained)


@dataclass(frozen=True)
class Generated:
    text: str | None
    n_tokens: int = 0
    finish_reason: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Failure:
    """A log-prob row (or value) a remote backend could not get: the judgment or example fails, as data."""

    error: str


class InferenceBackend(Protocol):
    def set_pool(self, members: list[MemberModel]) -> None:
        """Serve these members from now on: each name answers with its base and adapter_dir (new names join,
        changed directories are reloaded)."""

    def tokenizer(self, member: str): ...

    def generate(self, members: list[str], prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                 top_p: float, batch_size: int, seed: int, progress=None, min_new_tokens: int = 0,
                 shard: tuple[int, int] | None = None) -> list[Generated]:
        """One response per row; temperature 0 = greedy. Only these settings apply (never a model's own
        generation defaults)."""

    def next_token_logprobs(self, members: list[str], prompts: list[list[int]], token_ids: list[int], *,
                            last: int, batch_size: int, progress=None, shard=None) -> list[list[list[float]]]:
        """log p(token | prompt[:k]) for each of `token_ids` at each of the last `last` positions k:
        out[row][position][candidate], exact (not limited to a top-k); a row may be a Failure."""

    def grouped_next_token_logprobs(self, members: list[str], groups: list[list[list[int]]], token_ids: list[int],
                                    *, last: int, batch_size: int, progress=None, shard=None
                                    ) -> list[list[list[list[float]]]]:
        """`next_token_logprobs` for groups of prompts one member reads that share a prefix: out[group][prompt]."""

    def continuation_logprobs(self, member: str, prefixes: list[list[int]], continuations: list[list[list[int]]], *,
                              batch_size: int, progress=None, shard=None) -> list[list[float]]:
        """Summed log p(continuation | prefix) for each prefix's continuations; a value may be a Failure.
        `progress(n)` as work is done (HF: n prefixes; servers: one continuation), which Ray workers report."""

    def close(self) -> None: ...


class BackendError(RuntimeError):
    """A failure of the backend itself (not of one input): the run must stop."""


def check_generations(responses: list) -> None:
    """An iteration whose every generation (records.Response: duels' or baselines' samples) failed has nothing to
    judge or train on: stop, naming the cause."""
    if responses and all(r.text is None for r in responses):
        raise BackendError(f"all {len(responses)} generations of the iteration failed (first: {responses[0].error}); "
                           "nothing to judge or train on")


class ServerLost(BackendError):
    """The inference server sparta started died or hung. A local run stops; a Ray worker whose server is lost is
    replaced like a dead worker (sparta.cluster), as a fresh server may well do the work."""


def adapter_stamp(adapter_dir: Path | None) -> tuple[Path, int] | None:
    """What identifies an adapter on disk: its directory and when its weights were written (a directory rewritten
    in place holds another adapter). None for a fresh adapter."""
    if adapter_dir is None:
        return None
    directory = Path(adapter_dir).resolve()
    weights = directory / "adapter_model.safetensors"
    return directory, weights.stat().st_mtime_ns if weights.exists() else 0


def single_base(members: list[MemberModel], kind: str) -> ResolvedModel:
    """The one base model a server-backed pool runs on."""
    bases = {m.base.fingerprint: m.base for m in members}
    if len(bases) != 1:
        raise BackendError(f"backend.kind={kind} serves one base model; this pool has {len(bases)} "
                           "(use backend.kind=hf for a heterogeneous pool)")
    base = next(iter(bases.values()))
    if base.kind == "random":
        raise BackendError(f"backend.kind={kind}: {base.spec} has no weights on disk for a server to load "
                           "(random models are built in the process: use backend.kind=hf)")
    return base


@functools.cache
def load_tokenizer(source: str):
    """A base model's tokenizer, loaded once per process (server backends and the Ray driver encode with it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def in_shard(number: int, shard: tuple[int, int] | None) -> bool:
    """Whether unit `number` of a call's work belongs to shard (i, k): units are dealt out round-robin."""
    return shard is None or number % shard[1] == shard[0]


def context_error(prompt_tokens: int, max_new_tokens: int, window: int) -> str | None:
    """Why a row cannot run in a model's context window, or None: a failure of that input, recorded as data."""
    if prompt_tokens + max_new_tokens > window:
        return (f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) exceed the model's context "
                f"window of {window} tokens")
    return None


def build_backend(config, pool: list[MemberModel], hf_store, log_path: Path | None = None) -> InferenceBackend:
    """The inference backend `config.backend.kind` names, serving `pool`. `hf_store()` returns the process's
    backends.hf.ModelStore (shared with training), called only by the HF backend; a vLLM server logs to
    `log_path`."""
    kind = config.backend.kind
    if kind == "hf":
        from .hf import HFBackend

        return HFBackend(pool, config.pool.lora, config.seed, store=hf_store())
    if kind == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(pool, config.backend.vllm, config.backend.http, config.model, log_path)
    from .openai_http import HTTPBackend

    return HTTPBackend(pool, config.backend.http)
