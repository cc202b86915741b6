"""The Hugging Face backend: each distinct base model loaded once, every member a named LoRA adapter on it.

A batch may mix adapters row by row (sparta.mixed_lora), so generation and judging are batched across
members that share a base. `ModelStore` holds the loaded bases of a process; `HFBackend` (inference) and
`HFTrainer` (training) share it, so a CPU run loads each base once. Training works on its own trainable copy
of a member's adapter and writes it to disk; inference slots change only through `set_pool`, from directories.
"""

from __future__ import annotations

import logging
import re
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LoraConfig as LoraShape
from ..hf_compat import is_checkpointing, set_checkpointing
from ..kv_continuation import continue_rows, padded, position_ids
from ..mixed_lora import fp32_lora_sums, row_lora
from ..models import ResolvedModel, load_random_model
from ..precision import fp32_linear
from ..rundir import swap_in
from ..seeding import derive_seed
from . import Generated, MemberModel, adapter_stamp, context_error, in_shard

log = logging.getLogger(__name__)

# generation settings a model may ship in generation_config.json that change which tokens come out
_SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
                  "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                  "sequence_bias", "epsilon_cutoff", "eta_cutoff", "min_length", "min_new_tokens")


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`model.dtype`: float32, bfloat16, or auto (bf16 on a GPU that supports it, else fp32)."""
    if name == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class _Base:
    """One loaded base model and the LoRA adapters on it (PEFT names; a member's slot may be replaced)."""

    def __init__(self, resolved: ResolvedModel, device: str, dtype: torch.dtype, attn_implementation: str | None,
                 device_map: str | None):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        # straight onto the device: loaded on the host and then moved, a 7B bf16 base takes 15 GB of host memory
        extra["device_map"] = device_map or device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolved.source)
            if resolved.kind == "random":  # no weights on disk: built from the config, seeded, on the device
                model = load_random_model(resolved.source, dtype, device, attn_implementation, device_map)
            else:
                model = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=dtype, **extra)
        except OSError as e:
            raise RuntimeError(f"could not load model {resolved.spec!r} from {resolved.source}: {e}") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.base = model
        self.device = self.base.get_input_embeddings().weight.device
        self.model = None  # the PeftModel, created with the first adapter
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(self.tokenizer.eos_token_id)
        self.window = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 10**9
        # generate() fills every setting we leave unset from the model's generation_config (Qwen2.5 ships
        # temperature 0.7, top_p 0.8, repetition_penalty 1.05): keep only the special tokens, so sparta's
        # settings are the only ones that apply
        shipped = {k: v for k, v in model.generation_config.to_diff_dict().items() if k in _SAMPLING_KEYS}
        if shipped:
            log.info("%s: ignoring the model's own generation defaults %s", resolved.spec, shipped)
        model.generation_config = GenerationConfig(bos_token_id=model.generation_config.bos_token_id,
                                                   eos_token_id=sorted(self.eos_ids),
                                                   pad_token_id=self.tokenizer.pad_token_id)
        # scores (judging, evaluation) read the output layer in fp32, as DPO does: on a bf16 base, bf16 logits moved
        # the judge's expected score by 0.031 (max 0.082) from an fp32 model's, an fp32 head by 0.025 (max 0.053)
        # (bench/judge_precision.py); the rest is the bf16 hidden states
        self.fp32_head = dtype != torch.float32
        self.slots: dict[str, tuple[str, tuple | None]] = {}  # member -> (PEFT adapter name, adapter_stamp)
        self._stale: list[str] = []  # adapters replaced or dropped, deleted by _sweep
        self._version = 0

    def put(self, member: str, adapter_dir: Path | None, lora: LoraShape, seed: int, trainable: bool = False) -> str:
        """Load `adapter_dir` (None: a fresh adapter seeded by `seed`) as member's adapter, replacing the one it
        had unless it came from the same directory. Returns the PEFT adapter name."""
        from peft import LoraConfig, PeftModel, get_peft_model

        stamp = adapter_stamp(adapter_dir)
        adapter_dir = stamp[0] if stamp else None
        old = self.slots.get(member)
        if old is not None and old[1] == stamp and not trainable:
            return old[0]
        self._version += 1
        name = f"{member}__v{self._version}"  # a new name: the old adapter stays usable until replaced
        torch.manual_seed(seed)  # LoRA A matrices start random: seed them so runs repeat
        if adapter_dir is not None:
            if not (adapter_dir / "adapter_config.json").exists():
                raise FileNotFoundError(f"adapter for member {member!r}: {adapter_dir} has no adapter_config.json")
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=name,
                                                       is_trainable=trainable)
            else:
                self.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=trainable)
        else:
            config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules="all-linear", task_type="CAUSAL_LM")
            if self.model is None:
                self.model = get_peft_model(self.base, config, adapter_name=name)
            else:
                self.model.add_adapter(name, config)
        self.model.eval()
        self.slots[member] = (name, stamp)
        if old is not None:
            self._stale.append(old[0])
        self._sweep()
        return name

    def drop(self, member: str) -> None:
        self._stale.append(self.slots.pop(member)[0])
        self._sweep()

    def _sweep(self) -> None:
        """Delete replaced adapters, but never the last one: PEFT reads the active adapter's config when an adapter
        is added, and a PeftModel whose adapters were all deleted still names a deleted one."""
        for name in list(self._stale):
            if len(self.model.peft_config) > 1:
                if self.model.active_adapter == name:  # activate another first (PEFT warns otherwise)
                    self.model.set_adapter(next(n for n in self.model.peft_config if n != name))
                self.model.delete_adapter(name)
                self._stale.remove(name)


class ModelStore:
    """The base models loaded in this process, one per distinct fingerprint."""

    def __init__(self, device: str | None = None, dtype: str = "float32", attn_implementation: str | None = None,
                 device_map: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(dtype, self.device)
        self.attn_implementation, self.device_map = attn_implementation, device_map
        self.bases: dict[str, _Base] = {}
        self.loads = 0  # how many base models were loaded (tests check: one per distinct base)

    @property
    def precision(self) -> str:
        """What a model trained here is trained in, e.g. "bfloat16 on cuda" (device kind, not index)."""
        return f"{str(self.dtype).removeprefix('torch.')} on {torch.device(self.device).type}"

    @classmethod
    def configured(cls, model) -> ModelStore:
        """A store with config.model's precision, attention and device map (its device: a GPU if there is one)."""
        return cls(dtype=model.dtype, attn_implementation=model.attn_implementation, device_map=model.device_map)

    def release(self) -> None:
        """Drop every loaded base and give their memory back (the next `get` loads again)."""
        import gc

        self.bases.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def get(self, resolved: ResolvedModel) -> _Base:
        if resolved.fingerprint not in self.bases:
            self.bases[resolved.fingerprint] = _Base(resolved, self.device, self.dtype, self.attn_implementation,
                                                     self.device_map)
            self.loads += 1
        return self.bases[resolved.fingerprint]


class HFBackend:
    """Inference (sparta.backends.InferenceBackend) on models loaded in this process."""

    def __init__(self, members: list[MemberModel], lora: LoraShape, seed: int, device: str | None = None, *,
                 store: ModelStore | None = None):
        self.store = store or ModelStore(device)
        self.lora, self.seed = lora, seed
        self.base_of: dict[str, str] = {}
        self.set_pool(members)

    @property
    def loads(self) -> int:
        return self.store.loads

    @property
    def bases(self) -> dict[str, _Base]:
        return self.store.bases

    def set_pool(self, members: list[MemberModel]) -> None:
        for m in members:
            base = self.store.get(m.base)
            base.put(m.name, m.adapter_dir, self.lora, derive_seed(self.seed, "adapter", m.name))
            self.base_of[m.name] = m.base.fingerprint

    def close(self) -> None:
        pass

    def tokenizer(self, member: str):
        return self.bases[self.base_of[member]].tokenizer

    def adapter(self, member: str) -> tuple[object, str]:
        """The PeftModel serving `member` and the PEFT name of its adapter (for tests and benchmarks)."""
        base = self.bases[self.base_of[member]]
        return base.model, base.slots[member][0]

    def _groups(self, members: list[str]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, m in enumerate(members):
            groups.setdefault(self.base_of[m], []).append(i)
        return groups

    def _batches(self, members: list[str], prompts: list[list[int]], batch_size: int, shard=None):
        """Yield (number, base, row indices) batches: rows grouped by base, sorted by length to limit padding.
        `shard=(i, k)` keeps the batches numbered i mod k (the same batches, numbers and seeds as unsharded)."""
        number = 0
        for key, rows in self._groups(members).items():
            rows = sorted(rows, key=lambda i: len(prompts[i]), reverse=True)
            for start in range(0, len(rows), batch_size):
                if in_shard(number, shard):
                    yield number, self.bases[key], rows[start:start + batch_size]
                number += 1

    @contextmanager
    def _adapters(self, base: _Base, members: list[str], scoring: bool = False):
        """Row i of the batches run inside uses members[i]'s adapter: our stacked path (mixed_lora), or PEFT's
        `adapter_names` for adapters it does not cover. Yields the keyword arguments to pass to the model.
        `scoring`: logits are read as scores, so the output layer runs in fp32 (see _Base.fp32_head)."""
        names = [base.slots[m][0] for m in members]
        with row_lora(base.model, names) as stacked, fp32_head(base.base) if scoring and base.fp32_head \
                else nullcontext():
            yield {} if stacked else {"adapter_names": names}

    def _run_prefixes(self, base: _Base, members: list[str], prefixes: list[list[int]]):
        """Run each prefix once (row i with members[i]'s adapter), left-padded, keeping its KV cache for
        `continue_rows`. Returns the pass's output (logits of each prefix's last token, the cache) and the
        prefixes' attention mask."""
        ids, mask = self._left_pad(base, prefixes)
        with self._adapters(base, members, scoring=True) as adapters:
            first = base.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True,
                               logits_to_keep=1, **adapters)
        return first, mask

    def _left_pad(self, base: _Base, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return padded(seqs, base.tokenizer.pad_token_id, base.device, left=True)

    @torch.inference_mode()
    def generate(self, members: list[str], prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                 top_p: float, batch_size: int, seed: int, progress=None, min_new_tokens: int = 0,
                 shard=None) -> list[Generated]:
        """Generate one response per (member, prompt ids). A row that does not fit its model's context window
        fails as data; any error while generating (out of memory, ...) is not about one input and raises.
        `min_new_tokens` holds back end-of-sequence (benchmarks use it to compare equal lengths)."""
        out: list[Generated | None] = [None] * len(prompts)
        runnable = []
        for i, (m, p) in enumerate(zip(members, prompts)):
            error = context_error(len(p), max_new_tokens, self.bases[self.base_of[m]].window)
            if error:
                out[i] = Generated(None, error=error) if in_shard(0, shard) else None
            else:
                runnable.append(i)
        batches = self._batches([members[i] for i in runnable], [prompts[i] for i in runnable], batch_size, shard)
        for number, base, rows in batches:
            rows = [runnable[i] for i in rows]
            torch.manual_seed(derive_seed(seed, "generate", number))
            results = self._generate_batch(base, [members[i] for i in rows], [prompts[i] for i in rows],
                                           max_new_tokens, temperature, top_p, min_new_tokens)
            for i, r in zip(rows, results):
                out[i] = r
            if progress:
                progress(len(rows))
        return out  # type: ignore[return-value]

    def _generate_batch(self, base: _Base, members: list[str], prompts: list[list[int]], max_new_tokens: int,
                        temperature: float, top_p: float, min_new_tokens: int = 0) -> list[Generated]:
        from transformers import LogitsProcessorList

        ids, mask = self._left_pad(base, prompts)
        # temperature and top-p by our processor (HF would sort the whole vocabulary at every step)
        sampling = dict(do_sample=True, top_k=0, logits_processor=LogitsProcessorList([TopP(temperature, top_p)])) \
            if temperature > 0 else dict(do_sample=False)
        with self._adapters(base, members) as adapters:
            new = base.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      min_new_tokens=min_new_tokens or None, pad_token_id=base.tokenizer.pad_token_id,
                                      eos_token_id=sorted(base.eos_ids), **sampling, **adapters)[:, ids.shape[1]:]
        results = []
        for row in new.tolist():
            stop = next((j for j, t in enumerate(row) if t in base.eos_ids), None)
            tokens = row if stop is None else row[:stop]
            text = base.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            if not text:
                results.append(Generated(None, len(tokens), "stop" if stop is not None else "length",
                                         error="empty response"))
            else:
                results.append(Generated(text, len(tokens), "stop" if stop is not None else "length"))
        return results

    @torch.inference_mode()
    def next_token_logprobs(self, members: list[str], prompts: list[list[int]], token_ids: list[int], *,
                            last: int, batch_size: int, progress=None, shard=None) -> list[list[list[float]]]:
        """Log-probabilities of `token_ids` as the next token after each of the last `last` positions.

        Returns rows[i][position][candidate]. Only the last `last` logits are computed (no full-vocab
        logits for every position)."""
        out: list = [None] * len(prompts)
        for _, base, rows in self._batches(members, prompts, batch_size, shard):
            candidates = torch.tensor(token_ids, device=base.device)
            ids, mask = self._left_pad(base, [prompts[i] for i in rows])
            with self._adapters(base, [members[i] for i in rows], scoring=True) as adapters:
                logits = base.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                                    logits_to_keep=last, **adapters).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)[:, :, candidates]
            for i, lp in zip(rows, logprobs.tolist()):
                out[i] = lp
            if progress:
                progress(len(rows))
        return out

    @torch.inference_mode()
    def grouped_next_token_logprobs(self, members: list[str], groups: list[list[list[int]]], token_ids: list[int], *,
                                    last: int, batch_size: int, progress=None, shard=None
                                    ) -> list[list[list[list[float]]]]:
        """`next_token_logprobs` for groups of prompts that one member reads and that share a leading part (a
        judge scoring both responses of a duel: same instructions and question). Each group's longest common
        prefix runs once and its KV cache serves every prompt of the group. Returns out[group][prompt]."""
        out: list = [None] * len(groups)
        for _, base, rows in self._batches(members, [g[0] for g in groups], batch_size, shard):
            candidates = torch.tensor(token_ids, device=base.device)
            # the prefix stops `last` tokens before the shortest prompt ends: those positions are read
            cut = [min(_common_prefix(groups[g]), min(len(p) for p in groups[g]) - last) for g in rows]
            if min(cut) < 1:
                raise ValueError(f"grouped_next_token_logprobs: every prompt needs more than last={last} tokens")
            expand = [i for i, g in enumerate(rows) for _ in groups[g]]
            first, mask = self._run_prefixes(base, [members[g] for g in rows],
                                             [groups[g][0][:c] for g, c in zip(rows, cut)])
            # the rests left-padded, so that their last positions line up for logits_to_keep
            rests, rest_mask = self._left_pad(base, [p[c:] for g, c in zip(rows, cut) for p in groups[g]])
            with self._adapters(base, [members[rows[i]] for i in expand], scoring=True) as adapters:
                logits = continue_rows(base.model, first, mask, expand, rests, rest_mask, logits_to_keep=last,
                                       **adapters).logits
            logprobs = iter(torch.log_softmax(logits.float(), dim=-1)[:, :, candidates].tolist())
            for g in rows:
                out[g] = [next(logprobs) for _ in groups[g]]
            if progress:
                progress(sum(len(groups[g]) for g in rows))
        return out

    @torch.inference_mode()
    def continuation_logprobs(self, member: str, prefixes: list[list[int]], continuations: list[list[list[int]]], *,
                              batch_size: int, progress=None, shard=None) -> list[list[float]]:
        """Summed log p(continuation | prefix) for each prefix's continuations (e.g. the options of a question).

        Each prefix is run once and its KV cache shared by its continuations, so scoring k options costs one
        prefix plus k short continuations instead of k full sequences."""
        base = self.bases[self.base_of[member]]
        out: list = []
        for number, start in enumerate(range(0, len(prefixes), batch_size)):
            chunk, conts = prefixes[start:start + batch_size], continuations[start:start + batch_size]
            if not in_shard(number, shard):
                out += [None] * len(chunk)
                continue
            expand = [i for i, options in enumerate(conts) for _ in options]
            first, mask = self._run_prefixes(base, [member] * len(chunk), chunk)
            cont_ids, cont_mask = padded([c for options in conts for c in options], base.tokenizer.pad_token_id,
                                         base.device)
            with self._adapters(base, [member] * len(expand), scoring=True) as adapters:
                logits = continue_rows(base.model, first, mask, expand, cont_ids, cont_mask, **adapters).logits
            # token k of a continuation is predicted by the prefix's last logits (k = 0) or by position k - 1
            logits = torch.cat([first.logits[torch.tensor(expand, device=base.device)], logits[:, :-1]], 1).float()
            token_lp = torch.log_softmax(logits, -1).gather(-1, cont_ids[..., None])[..., 0] * cont_mask
            sums = iter(token_lp.sum(-1).tolist())
            out += [[next(sums) for _ in options] for options in conts]
            if progress:
                progress(len(chunk))
        return out


@dataclass
class TrainSlot:
    """A trainable copy of one member's adapter on its loaded base (the PEFT adapter `adapter`)."""

    model: object  # the PeftModel; `adapter` is its active adapter while the slot is open
    adapter: str
    tokenizer: object
    device: torch.device

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if _adapter_key(n) == self.adapter]

    def compute(self):
        """The context every training pass runs in: nothing on an fp32 base; on a bf16 one, bf16 matmuls with the
        adapter's deltas and the residual stream in fp32 (mixed_lora.fp32_lora_sums)."""
        if self.model.get_base_model().dtype == torch.float32:
            return nullcontext()
        return fp32_lora_sums(self.model, self.adapter)

    def save(self, directory: Path) -> None:
        """Write the adapter atomically (temp dir, then rename) in PEFT's on-disk format."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = get_peft_model_state_dict(self.model, adapter_name=self.adapter)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"))
        config = self.model.peft_config[self.adapter]
        config.inference_mode = True
        config.save_pretrained(str(tmp))
        swap_in(tmp, directory)


class HFTrainer:
    """Training on the bases of a ModelStore (shared with an HFBackend in the same process, or its own)."""

    def __init__(self, lora: LoraShape, seed: int, store: ModelStore | None = None, gradient_checkpointing=False):
        self.store = store or ModelStore()
        self.lora, self.seed = lora, seed
        self.gradient_checkpointing = gradient_checkpointing

    @contextmanager
    def slot(self, member: MemberModel):
        """A trainable copy of `member`'s adapter (its directory, or the fresh adapter an inference backend
        builds for the same member and seed), removed on exit: save it before."""
        base = self.store.get(member.base)
        key = f"train-{member.name}"
        name = base.put(key, member.adapter_dir, self.lora, derive_seed(self.seed, "adapter", member.name),
                        trainable=True)
        base.model.set_adapter(name)
        checkpointing = self.gradient_checkpointing and not is_checkpointing(base.model)
        if checkpointing:  # recompute activations in backward: memory for time (7B DPO on one GPU)
            set_checkpointing(base.model, True)
        try:
            yield TrainSlot(base.model, name, base.tokenizer, base.device)
        finally:
            if checkpointing:
                set_checkpointing(base.model, False)
            base.drop(key)


class TopP:
    """Temperature, then nucleus (top-p) filtering by Hugging Face's rule (keep a token while the mass of the
    tokens ranked above it is below top_p), without sorting the whole vocabulary at every step: the nucleus
    lies within the top `k` tokens whenever their mass reaches top_p, which is checked (else a full sort).
    A logits processor for `generate`, which runs its own warpers after user processors, hence temperature here."""

    def __init__(self, temperature: float, top_p: float, k: int = 256):
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"TopP needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        self.temperature, self.top_p, self.k = temperature, top_p, k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature
        if self.top_p >= 1:
            return scores
        top, index = scores.topk(min(self.k, scores.shape[-1]), dim=-1)
        probs = (top - scores.logsumexp(-1, keepdim=True)).exp()
        if (probs.sum(-1) < self.top_p).any():  # the nucleus may reach past the top k: sort everything
            top, index = scores.sort(dim=-1, descending=True)
            probs = top.softmax(-1)
        above = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        keep = above < self.top_p
        keep[:, 0] = True
        return torch.full_like(scores, float("-inf")).scatter_(-1, index, top.masked_fill(~keep, float("-inf")))


@contextmanager
def fp32_head(model):
    """While open, `model`'s output layer returns fp32 logits computed from fp32 copies of its input and weights
    (bf16 logits round by ~0.1 at typical magnitudes). It runs on the few positions scores read (logits_to_keep),
    so the bf16 product it replaces costs nothing worth saving."""
    def full_precision(module, args, output):
        return fp32_linear(module, args[0])

    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:  # a LoRA-wrapped head computes its own way
        yield
        return
    hook = head.register_forward_hook(full_precision)
    try:
        yield
    finally:
        hook.remove()


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    return next((i for i in range(n) if any(s[i] != seqs[0][i] for s in seqs)), n)


_ADAPTER_KEY = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.([^.]+)(?:\.|$)")


def _adapter_key(parameter_name: str) -> str | None:
    """The adapter a LoRA parameter belongs to (the name segment right after lora_A/lora_B), else None."""
    match = _ADAPTER_KEY.search(parameter_name)
    return match.group(1) if match else None
