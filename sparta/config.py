"""One typed configuration for a run: frozen dataclasses, loaded from YAML plus `key.sub=value` overrides.

Unknown keys and wrong types are errors that name the key. Paper defaults (../SPARTA.md) are noted where the
CPU demo deliberately differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


@dataclass(frozen=True)
class MemberConfig:
    name: str
    model: str | None = None  # model spec; defaults to pool.base
    adapter: str | None = None  # a PEFT LoRA adapter directory to start from
    expert: str | None = None  # a built-in expert recipe (see `sparta experts`) to start from


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05


@dataclass(frozen=True)
class ExpertsConfig:
    """Short supervised fine-tuning that turns one base into diverse experts (the paper's pool idea)."""

    steps: int = 20
    batch_size: int = 2
    lr: float = 5e-4
    max_length: int = 256


@dataclass(frozen=True)
class PoolConfig:
    base: str = "packaged:smollm2-135m-instruct"
    members: tuple[MemberConfig, ...] = (
        MemberConfig("self_instruct", expert="self_instruct"),
        MemberConfig("math", expert="math"),
        MemberConfig("com2", expert="com2"),
        MemberConfig("normad", expert="normad"),
    )
    lora: LoraConfig = LoraConfig()
    experts: ExpertsConfig = ExpertsConfig()


@dataclass(frozen=True)
class ModelConfig:
    """How base models are loaded and run (every backend; the HF backend and training read all of it)."""

    dtype: str = "auto"  # float32 | bfloat16 | auto (bf16 on a GPU that supports it, fp32 on CPU)
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2 ...; null = transformers' choice
    device_map: str | None = None  # e.g. "auto": spread a base larger than one GPU over the visible GPUs
    gradient_checkpointing: bool = False  # DPO/SFT: recompute activations in backward (memory for time)


@dataclass(frozen=True)
class VLLMConfig:
    """The vLLM backend: a server in its own Python environment, started and stopped by sparta."""

    python: str = ".venv-vllm/bin/python"  # the environment that has vllm (`make vllm-env` builds it)
    port: int = 0  # 0 = a free port
    max_model_len: int = 4096
    max_loras: int = 4  # adapters resident at once (per batch); others are swapped in from disk
    max_lora_rank: int = 64
    gpu_memory_utilization: float = 0.5  # leaves the rest to DPO training in the same process set
    # true: stop the server before training and free the trainer's base after it, so the server and DPO each have
    # the whole GPU in turn (raise gpu_memory_utilization); the next stage starts a new server (local runtime only)
    release_for_training: bool = False
    startup_timeout_s: float = 600.0
    # a request that timed out (backend.http.timeout_s) or found no server: a 1-token request must then be answered
    # within this, or the server is hung (alive, not answering: a stuck engine); sparta kills it and stops the call
    # as for a dead server (on Ray: the worker is replaced and its part redone)
    hang_timeout_s: float = 60.0
    extra_args: tuple[str, ...] = ()  # passed to `vllm serve` as they are


@dataclass(frozen=True)
class HTTPConfig:
    """An OpenAI-compatible completions server (the vLLM backend's client, or a server you run)."""

    base_url: str = ""  # e.g. http://localhost:8000/v1
    api_key_env: str = "SPARTA_API_KEY"  # the key is read from this variable, never from (or into) a file
    served_base: str = ""  # the server's name for the base model; "" = the one model it lists without a parent
    max_concurrency: int = 8
    timeout_s: float = 300.0
    retries: int = 4  # on connection errors, 429 and 5xx, with exponential backoff


@dataclass(frozen=True)
class BackendConfig:
    kind: str = "hf"  # hf (transformers in this process) | vllm | http
    vllm: VLLMConfig = VLLMConfig()
    http: HTTPConfig = HTTPConfig()


@dataclass(frozen=True)
class Resources:
    """What one Ray worker reserves (a placement-group bundle)."""

    num_cpus: float = 1
    num_gpus: float = 0  # 1: a GPU per worker; 0.5: two workers share a GPU (small models)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the stages run: in this process, or on a Ray cluster (sparta.cluster): `workers` Ray actors, each
    holding the base model(s) and every member's adapter, share out generation and judging, and train members."""

    kind: str = "local"  # local | ray
    address: str = ""  # "": start a Ray cluster in this process; "auto": the one `ray start` runs here; ray://...
    num_cpus: int = 0  # a cluster started here: the CPUs it may use (0 = all)
    workers: int = 2
    worker: Resources = Resources()
    placement: str = "PACK"  # placement-group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    shared_storage: bool = True  # run directory on storage every node sees; false: adapters travel as Ray objects
    max_retries: int = 2  # a worker that dies or stalls is replaced and its part redone, this many times per call
    startup_timeout_s: float = 600.0  # waiting for the cluster to grant the placement group, and workers to start
    # a worker whose call has made no progress (a training step, an inference batch or row, the call's start or end)
    # for this long is hung (a stuck CUDA/NCCL call): it is killed and counts as dead. Not a limit on a job's length:
    # it must only exceed the longest stretch without progress (loading a base, starting a vLLM server, which has
    # its own backend.vllm.startup_timeout_s, a member's reference log-prob pass before its first DPO step)
    stall_timeout_s: float = 1800.0


@dataclass(frozen=True)
class DataConfig:
    prompts: str = "gsm8k"  # a task name (its combat pool), "self_instruct", or a .json/.jsonl file of prompts
    user_data: str = ""  # folder with user-supplied task files (knowledge_crosswords, normad_rot, ...)
    prompts_per_iteration: int = 12  # paper: 1000


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 96  # paper: 512
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 16
    max_prompt_tokens: int = 512


@dataclass(frozen=True)
class JudgeConfig:
    # "logprob" (expected score, one forward pass), "generate" (the authors' way) or "pairwise" (which of the duel's
    # two responses is better, both orders read; method=sparta only)
    mode: str = "logprob"
    max_new_tokens: int = 32  # generate mode only
    temperature: float = 0.0  # generate mode only; 0 = greedy
    batch_size: int = 8
    max_prompt_tokens: int = 1024


@dataclass(frozen=True)
class ArenaConfig:
    alpha: float = 0.2
    k: int = 3
    # Duels per round: match-making reads the reputations at the start of a round, updates apply in duel
    # order. 16 keeps a whole demo iteration's generation in one batch; a duel moves a rating by at most
    # K*9*gap/S <= 4.5 points, so within a round the k-nearest sets barely change. 1 = the paper's order.
    round_size: int = 16
    min_margin: float = 0.0


@dataclass(frozen=True)
class ReputationConfig:
    k0: float = 10.0
    k_min: float = 5.0
    decay: float = 0.9
    steps: int = 10
    scaling: float = 20.0
    eps: float = 0.01
    floor: float = 10.0
    window: int = 10
    sigma_min: float = 0.1
    initial_rating: float = 100.0
    initial_sigma: float = 0.5
    # "fair" (every member at initial_rating) or a task name: the members' score on that task's dev split
    # (eval.limit items), measured before iteration 1, z-scored to mean initial_rating, std 20 (SPARTA.md)
    initial: str = "fair"
    # which of the task's metrics gives that score: "" = its primary metric (MC: the generated letter; `loglik`
    # reads the options' likelihoods instead, which no letter bias can move: docs/tasks.md)
    initial_metric: str = ""
    # how the judges' scores are averaged: "reputation" (SPARTA.md 1d) or "uniform", equal weights (the
    # paper's ablation without reputation weighting). Reputations still move: they drive match-making
    weighting: str = "reputation"

    def __post_init__(self) -> None:
        # sigma_min > 0 keeps z = (R_a - R_b) / sqrt(sigma_a^2 + sigma_b^2) finite whatever the history.
        # floor > 0: aggregation divides by a sum of reputations; initial_rating > 0 likewise
        for name in ("steps", "scaling", "window", "sigma_min", "initial_sigma", "floor", "initial_rating"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"reputation.{name} must be > 0, got {getattr(self, name)!r}")
        # checked here, not in validate(): the arena reads this object directly (EloParams)
        if self.weighting not in ("reputation", "uniform"):
            raise ConfigError(f"reputation.weighting must be 'reputation' or 'uniform', got {self.weighting!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """DPO for every member each iteration. Paper: beta 0.1, lr 1e-6, 1 epoch, cosine, warmup 0.1.

    lr 1e-6 does not move a rank-8 LoRA in the few steps a CPU demo affords; 2e-4 does (see README)."""

    pairs: str = "all"  # "all" (paper) or "own" (only the duels the member fought)
    beta: float = 0.1
    lr: float = 2e-4
    epochs: int = 1
    batch_size: int = 4
    micro_batch_size: int = 2
    warmup_ratio: float = 0.1
    # prompt + response tokens. The prompt turn is encoded as combat encoded it (generation.max_prompt_tokens,
    # content shortened in the middle); the response is cut from its end past max_length (counted in the metrics)
    max_length: int = 1024
    # The "after" metrics (the report's DPO loss before→after, the summary's reward accuracy) score the trained
    # adapter on at least this many of the member's pairs (SPPO: samples), whole steps spread over its first epoch;
    # null = every pair (a fifth of a CPU member's DPO time); 0 = none, and no "after" (docs/training.md)
    after_limit: int | None = 8
    max_grad_norm: float = 1.0  # each step's gradient is clipped to this norm
    # a pair's chosen and rejected in one row, their prompt run once (where exact: docs/training.md); false = each
    # sequence its own row, as before
    share_prompts: bool = True
    # the preference loss of DPO-trained methods (docs/training.md): dpo (Rafailov et al. 2023), cdpo (conservative
    # DPO: label smoothing), rdpo (robust DPO, Chowdhury et al. 2024: unbiased under a known label flip rate), or
    # margin (each pair weighted by its aggregated score gap). Peer labels are noisy; all but dpo expect it
    loss: str = "dpo"
    label_smoothing: float = 0.0  # cdpo's ε in [0, 0.5): the share of each label taken as flipped
    # rdpo's flip rate ε in [0, 0.5), or "auto": estimated each iteration from the judges' disagreement with the
    # verdicts of the member's pairs (sparta.pairs.judge_disagreement), clipped to [0, 0.49]
    flip_rate: float | str = "auto"

    def __post_init__(self) -> None:
        if self.after_limit is not None and self.after_limit < 0:
            raise ConfigError("training.after_limit must be >= 0 or null (every pair)")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation inside a run: the pool before iteration 1 and after every `every` iterations."""

    tasks: tuple[str, ...] = ()  # task names (docs/tasks.md); empty = no evaluation during the run
    splits: tuple[str, ...] = ("dev", "test")  # dev picks the best initial member, test reports it
    every: int = 1
    # N items of each split, drawn at random with the run seed (the same items for every member, iteration and
    # call: before/after stay paired; the eval file records which); 0 = all
    limit: int = 0
    max_new_tokens: int = 256
    mc_max_new_tokens: int = 32  # enough to state a letter or an option; MC accuracy does not need reasoning
    # MC scorers beside the bare-question loglik (docs/tasks.md). mc_generate: the generated letter (`letter`, the
    # paper's metric and the primary one; false: no generation, `loglik` is primary). listed_loglik: the options'
    # likelihood under the MC prompt that lists them, in the task's order (`loglik_listed`) and rotated n times, an
    # item right only if right in every rotation (`loglik_circular`): n prompts per item. circular_letter: the
    # generated letter in every rotation (`letter_circular`), n - 1 more generations per item, off unless asked for
    mc_generate: bool = True
    listed_loglik: bool = True
    circular_letter: bool = False
    batch_size: int = 16
    max_prompt_tokens: int = 1024
    bootstrap: int = 1000  # resamples of the 95% intervals
    # who scores free-text answers 1-10 (alpaca, COM2): a pool member's name or any model spec (pool.base's
    # spec shares the loaded base, without an adapter); null = the member with the highest reputation
    evaluator: str | None = None

    def __post_init__(self) -> None:
        if self.evaluator is not None and not self.evaluator.strip():
            raise ConfigError("eval.evaluator must be a pool member's name, a model spec, or null")


@dataclass(frozen=True)
class BaselineConfig:
    """The self-alignment baselines (method != sparta, docs/baselines.md): each member trains on its own samples."""

    # self_rewarding and sppo: responses per prompt and member (self-rewarding paper: 4; SPPO paper: K = 5)
    samples: int = 4
    # sppo: η, the scale of the log-ratio targets η (P̂ − ½). Not the authors' 1000 (full fine-tuning, lr 5e-7):
    # 1 / training.beta's default, so that SPPO's targets (±5 nats) are as strong a pull away from the start
    # of the iteration as DPO's rewards, and reachable by a LoRA in one epoch (docs/sppo.md)
    sppo_eta: float = 10.0
    # meta_rewarding: judgments per answer N, sampled at judge.temperature (self-rewarding averaged 3), and the
    # length control's tolerance ρ: chosen = the shortest answer scored within ρ (max − min) of the best
    judgments: int = 3
    length_tolerance: float = 0.0


METHODS = ("sparta", "self_rewarding", "meta_rewarding", "spin", "sppo")
LOSSES = ("dpo", "cdpo", "rdpo", "margin")  # training.loss (sparta.training.dpo_loss)
# the methods whose pairs carry an aggregated score gap of chosen over rejected (meta_rewarding's judge pairs carry
# the scores the two judgments gave, not a gap in quality; spin's have no score)
MARGIN_METHODS = ("sparta", "self_rewarding")
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")  # accelerate's trackers that sparta resumes (sparta.tracking)


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking (sparta.tracking, docs/tracking.md): each finished stage is logged live to the trackers
    named; the run directory stays the source of truth (a tracker that fails is a warning). It may change on a
    resumed run: a tracker added later is given every stage already finished."""

    report_to: tuple[str, ...] = ()  # tensorboard | mlflow | wandb | trackio; empty = no tracking
    project: str = "sparta"  # wandb/trackio project, MLflow experiment
    run_name: str = ""  # "" = the run directory's name
    logging_dir: str = ""  # TensorBoard logs and MLflow's local store; "" = RUN/tracking


@dataclass(frozen=True)
class RunConfig:
    run_dir: str = "runs/demo"
    # sparta (combat) or a baseline of the paper's table: self_rewarding, meta_rewarding, spin, sppo
    # (docs/baselines.md)
    method: str = "sparta"
    seed: int = 0
    iterations: int = 3  # paper: 8
    threads: int = 0  # torch threads; 0 = all cores
    cache_dir: str = ""  # model and expert cache; "" = $SPARTA_CACHE or ~/.cache/sparta
    pool: PoolConfig = PoolConfig()
    model: ModelConfig = ModelConfig()
    backend: BackendConfig = BackendConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    data: DataConfig = DataConfig()
    generation: GenerationConfig = GenerationConfig()
    judge: JudgeConfig = JudgeConfig()
    arena: ArenaConfig = ArenaConfig()
    reputation: ReputationConfig = ReputationConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    baseline: BaselineConfig = BaselineConfig()
    tracking: TrackingConfig = TrackingConfig()


# Keys that may change between invocations on the same run directory without invalidating it.
# runtime: a run started here may resume on a cluster (the results do not depend on where stages run); tracking: a
# tracker may be added to a resumed run (it is given what is already finished)
RESUMABLE_KEYS = ("run_dir", "iterations", "threads", "cache_dir", "eval", "runtime", "tracking")


def _build(cls: type, data: object, where: str) -> object:
    """Build dataclass `cls` from plain YAML data, checking every key and type."""
    if dataclasses.is_dataclass(cls) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key {_join(where, unknown[0])!r} (known keys: {', '.join(sorted(known))})")
    values = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {e}") from None


def _coerce(tp: object, value: object, where: str) -> object:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        *first, last = [o for o in options if o is not type(None)]
        for inner in first:  # the first type that takes the value (float | str: 0.1 is a number, "auto" a word)
            try:
                return _coerce(inner, value, where)
            except ConfigError:
                pass
        return _coerce(last, value, where)
    if origin is tuple:  # tuple[X, ...]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is MemberConfig and isinstance(value, str):
        return MemberConfig(name=value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML file (None = the defaults) and apply `key.sub=value` overrides, then validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    for override in overrides:
        _apply_override(data, override)
    config = _build(RunConfig, data, "")
    validate(config)
    return config


def validate(c: RunConfig) -> None:
    """Cheap checks on values; checks that need the disk (model paths, data files) live with their loaders."""
    names = [m.name for m in c.pool.members]
    checks = [
        (c.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {c.method!r}"),
        (c.baseline.samples >= 2, f"baseline.samples must be >= 2 (a pair needs two scored samples), "
                                  f"got {c.baseline.samples}"),
        (c.baseline.sppo_eta > 0, f"baseline.sppo_eta must be > 0, got {c.baseline.sppo_eta}"),
        *_meta_rewarding_checks(c),
        (len(names) >= 3, f"pool.members: a pool needs at least 3 members (2 fight, 1 judges); got {len(names)}"),
        (len(set(names)) == len(names), f"pool.members: member names must be unique, got {names}"),
        (all(n and n.replace("_", "").replace("-", "").isalnum() for n in names),
         f"pool.members: names may hold only letters, digits, '-' and '_': {names}"),
        (all(not (m.adapter and m.expert) for m in c.pool.members),
         "pool.members: a member takes an adapter or an expert recipe, not both"),
        (c.judge.mode in ("logprob", "generate", "pairwise"),
         f"judge.mode must be 'logprob', 'generate' or 'pairwise', got {c.judge.mode!r}"),
        (c.judge.mode != "pairwise" or c.method == "sparta",
         f"judge.mode=pairwise compares the two responses of a SPARTA duel; method={c.method} judges samples one at "
         "a time: use judge.mode=logprob or generate"),
        (c.training.pairs in ("all", "own"), f"training.pairs must be 'all' or 'own', got {c.training.pairs!r}"),
        (0.0 <= c.arena.alpha <= 1.0, f"arena.alpha must lie in [0, 1], got {c.arena.alpha}"),
        (c.arena.k >= 1, f"arena.k must be >= 1, got {c.arena.k}"),
        (c.arena.round_size >= 1, f"arena.round_size must be >= 1, got {c.arena.round_size}"),
        (c.arena.min_margin >= 0, f"arena.min_margin must be >= 0, got {c.arena.min_margin}"),
        (c.iterations >= 1, f"iterations must be >= 1, got {c.iterations}"),
        (c.data.prompts_per_iteration >= 1,
         f"data.prompts_per_iteration must be >= 1, got {c.data.prompts_per_iteration}"),
        (c.generation.max_new_tokens >= 1, "generation.max_new_tokens must be >= 1"),
        (c.generation.temperature >= 0, "generation.temperature must be >= 0"),
        (0 < c.generation.top_p <= 1, "generation.top_p must lie in (0, 1]"),
        (min(c.generation.batch_size, c.judge.batch_size, c.training.micro_batch_size) >= 1,
         "batch sizes must be >= 1"),
        (c.training.batch_size % c.training.micro_batch_size == 0,
         "training.batch_size must be a multiple of training.micro_batch_size"),
        (c.training.beta > 0 and c.training.lr > 0 and c.training.epochs >= 1,
         "training.beta and training.lr must be > 0 and training.epochs >= 1"),
        (c.threads >= 0, f"threads must be >= 0, got {c.threads}"),
        (c.model.dtype in ("auto", "float32", "bfloat16"),
         f"model.dtype must be auto, float32 or bfloat16, got {c.model.dtype!r}"),
        (c.backend.kind in ("hf", "vllm", "http"), f"backend.kind must be hf, vllm or http, got {c.backend.kind!r}"),
        (c.backend.kind != "http" or bool(c.backend.http.base_url), "backend.kind=http needs backend.http.base_url"),
        (c.runtime.kind in ("local", "ray"), f"runtime.kind must be local or ray, got {c.runtime.kind!r}"),
        (not (c.backend.vllm.release_for_training and (c.backend.kind != "vllm" or c.runtime.kind != "local")),
         "backend.vllm.release_for_training needs backend.kind=vllm and runtime.kind=local (a Ray worker keeps its "
         "server)"),
        (c.runtime.workers >= 1 and c.runtime.max_retries >= 0, "runtime.workers must be >= 1, max_retries >= 0"),
        *[(value > 0, f"{key} must be > 0, got {value}") for key, value in (
            ("runtime.stall_timeout_s", c.runtime.stall_timeout_s),
            ("runtime.startup_timeout_s", c.runtime.startup_timeout_s),
            ("backend.vllm.startup_timeout_s", c.backend.vllm.startup_timeout_s),
            ("backend.vllm.hang_timeout_s", c.backend.vllm.hang_timeout_s),
            ("backend.http.timeout_s", c.backend.http.timeout_s))],
        (c.runtime.worker.num_cpus > 0 and c.runtime.worker.num_gpus >= 0,
         "runtime.worker.num_cpus must be > 0 and num_gpus >= 0"),
        (c.runtime.placement in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
         f"runtime.placement must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got {c.runtime.placement!r}"),
        (c.reputation.initial_rating >= c.reputation.floor,
         f"reputation.initial_rating ({c.reputation.initial_rating}) must be >= reputation.floor "
         f"({c.reputation.floor})"),
        (not c.reputation.initial_metric or c.reputation.initial != "fair",
         f"reputation.initial_metric={c.reputation.initial_metric!r} needs reputation.initial = a task"),
        (c.eval.every >= 1 and c.eval.limit >= 0, "eval.every must be >= 1 and eval.limit >= 0"),
        (c.eval.mc_generate or not c.eval.circular_letter,
         "eval.circular_letter rotates the generated letter: it needs eval.mc_generate=true"),
        *_length_checks(c),
        *_loss_checks(c),
        (set(c.tracking.report_to) <= set(TRACKERS),
         f"tracking.report_to: unknown tracker(s) {sorted(set(c.tracking.report_to) - set(TRACKERS))}; known: "
         f"{', '.join(TRACKERS)}"),
        (len(set(c.tracking.report_to)) == len(c.tracking.report_to),
         f"tracking.report_to names a tracker twice: {list(c.tracking.report_to)}"),
        (set(c.eval.splits) <= {"dev", "test"} and len(c.eval.splits) > 0,
         f"eval.splits must be a non-empty list of 'dev' and 'test', got {list(c.eval.splits)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _meta_rewarding_checks(c: RunConfig) -> list[tuple[bool, str]]:
    """Meta-rewarding trains the judge on its own written judgments, so they must be text and must differ."""
    if c.method != "meta_rewarding":
        return []
    b, j = c.baseline, c.judge
    duel = c.generation.max_prompt_tokens + c.generation.max_new_tokens
    return [
        (j.mode == "generate", f"method=meta_rewarding needs judge.mode=generate (its meta-judge reads and DPO "
                               f"trains on written judgments), got {j.mode!r}"),
        (j.temperature > 0, "method=meta_rewarding needs judge.temperature > 0: greedy judgments of one answer "
                            "are all the same, and the meta-judge has nothing to compare"),
        (b.judgments >= 2, f"baseline.judgments must be >= 2 (the meta-judge compares two), got {b.judgments}"),
        (0 <= b.length_tolerance <= 1, f"baseline.length_tolerance must lie in [0, 1], got {b.length_tolerance}"),
        (c.training.max_length >= duel + JUDGE_OVERHEAD + j.max_new_tokens,
         f"training.max_length ({c.training.max_length}) < a judge pair's prompt and judgment "
         f"({duel + JUDGE_OVERHEAD + j.max_new_tokens}: generation.max_prompt_tokens + generation.max_new_tokens + "
         f"{JUDGE_OVERHEAD} + judge.max_new_tokens)"),
    ]


def _loss_checks(c: RunConfig) -> list[tuple[bool, str]]:
    """training.loss and its ε: each key is checked on its own, then against the loss and the method."""
    t = c.training
    auto = t.flip_rate == "auto"
    fixed = type(t.flip_rate) is float and 0 <= t.flip_rate < 0.5
    return [
        (t.loss in LOSSES, f"training.loss must be one of {', '.join(LOSSES)}, got {t.loss!r}"),
        (c.method != "sppo" or t.loss == "dpo",
         f"training.loss={t.loss} applies to DPO-trained methods; method=sppo trains with its own loss "
         "(baseline.sppo_eta): leave training.loss at dpo"),
        (0 <= t.label_smoothing < 0.5, f"training.label_smoothing must lie in [0, 0.5), got {t.label_smoothing}"),
        (t.loss != "cdpo" or t.label_smoothing > 0,
         "training.loss=cdpo needs training.label_smoothing in (0, 0.5) (0 is plain dpo)"),
        (t.loss == "cdpo" or t.label_smoothing == 0,
         f"training.label_smoothing applies only to training.loss=cdpo (training.loss is {t.loss})"),
        (auto or fixed, f"training.flip_rate must be 'auto' or a number in [0, 0.5), got {t.flip_rate!r}"),
        (t.loss == "rdpo" or auto,
         f"training.flip_rate applies only to training.loss=rdpo (training.loss is {t.loss})"),
        (t.loss != "rdpo" or not auto or c.method == "sparta",
         f"training.flip_rate=auto estimates the flip rate from the judges of SPARTA's duels; method={c.method} has "
         "none: give training.flip_rate a number"),
        (t.loss != "rdpo" or not auto or len(c.pool.members) >= 4,
         f"training.flip_rate=auto needs two judges per duel to see them disagree (a pool of at least 4 members), "
         f"got {len(c.pool.members)} members: give training.flip_rate a number"),
        (t.loss != "margin" or c.method in MARGIN_METHODS,
         f"training.loss=margin weights each pair by its score gap, which only {' and '.join(MARGIN_METHODS)} pairs "
         f"carry; got method={c.method}"),
    ]


def _length_checks(c: RunConfig) -> list[tuple[bool, str]]:
    """Token budgets that must nest: a combat prompt and its response fit DPO's max_length and the judge's
    window (plus the judge's instructions), and every window fits the vLLM server's max_model_len."""
    g, j = c.generation, c.judge
    duel = g.max_prompt_tokens + g.max_new_tokens
    checks = [
        (c.training.max_length >= duel,
         f"training.max_length ({c.training.max_length}) < generation.max_prompt_tokens + generation.max_new_tokens "
         f"({duel}): every long pair would be cut"),
        (j.max_prompt_tokens >= duel + JUDGE_OVERHEAD,
         f"judge.max_prompt_tokens ({j.max_prompt_tokens}) < generation.max_prompt_tokens + "
         f"generation.max_new_tokens + {JUDGE_OVERHEAD} for the judge's instructions ({duel + JUDGE_OVERHEAD}): "
         "judges would read shortened responses"),
    ]
    if c.backend.kind == "vllm":
        meta = j.max_prompt_tokens + 2 * j.max_new_tokens + META_OVERHEAD + 1 if c.method == "meta_rewarding" else 0
        need = max(j.max_prompt_tokens + (j.max_new_tokens if j.mode == "generate" else 2), duel, meta,
                   c.eval.max_new_tokens + 1024 if c.eval.tasks else 0)
        checks.append((c.backend.vllm.max_model_len >= need,
                       f"backend.vllm.max_model_len ({c.backend.vllm.max_model_len}) < {need}, the longest request "
                       "(judge window, meta-judge window, or combat prompt + response, or eval prompt of 1024 + "
                       "eval.max_new_tokens)"))
    return checks


JUDGE_OVERHEAD = 96  # tokens of the judge prompt around the question and the response (authors' prompt: ~80)
META_OVERHEAD = 96  # tokens of meta-rewarding's meta-judge prompt around its four slots


def to_dict(c: RunConfig) -> dict:
    return dataclasses.asdict(c)


def fingerprint(c: RunConfig) -> str:
    """Hash of everything that changes a run's results (not where it lives or how long it goes on)."""
    data = {k: v for k, v in to_dict(c).items() if k not in RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb, name = a.get(key), b.get(key), _join(prefix, key)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff_keys(va, vb, name)
        elif va != vb:
            keys.append(name)
    return keys


def dump_yaml(c: RunConfig) -> str:
    return yaml.safe_dump(json.loads(json.dumps(to_dict(c))), sort_keys=False)


__all__ = ["ConfigError", "RunConfig", "MemberConfig", "load_config", "validate", "fingerprint", "dump_yaml",
           "diff_keys", "to_dict"]
