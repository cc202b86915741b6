"""The Hugging Face backend: each distinct base model loaded once, every member a named LoRA adapter on it.

A batch may mix adapters row by row (sparta.mixed_lora), so generation and judging are
batched across members that share a base. Training switches the active adapter and touches only its
parameters. Works on CPU and GPU; heterogeneous pools get one loaded base per distinct model.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import LoraConfig as LoraShape
from .mixed_lora import row_lora
from .models import ResolvedModel
from .seeding import derive_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberModel:
    name: str
    base: ResolvedModel
    adapter_dir: Path | None  # None: a fresh LoRA adapter (identical to the base until trained)


@dataclass(frozen=True)
class Generated:
    text: str | None
    n_tokens: int = 0
    finish_reason: str = ""
    error: str | None = None


class _Base:
    """One loaded base model with its members' adapters."""

    def __init__(self, resolved: ResolvedModel, device: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolved.source)
            model = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=torch.float32)
        except OSError as e:
            raise RuntimeError(f"could not load model {resolved.spec!r} from {resolved.source}: {e}") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.base = model.to(device)
        self.model = None  # the PeftModel, created with the first adapter
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(self.tokenizer.eos_token_id)

    def add_adapter(self, name: str, adapter_dir: Path | None, lora: LoraShape, seed: int) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        torch.manual_seed(seed)  # LoRA A matrices start random: seed them so runs repeat
        if adapter_dir is not None:
            if not (Path(adapter_dir) / "adapter_config.json").exists():
                raise FileNotFoundError(f"adapter for member {name!r}: {adapter_dir} has no adapter_config.json")
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=name,
                                                       is_trainable=True)
            else:
                self.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=True)
            return
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules="all-linear", task_type="CAUSAL_LM")
        if self.model is None:
            self.model = get_peft_model(self.base, config, adapter_name=name)
        else:
            self.model.add_adapter(name, config)


class HFBackend:
    def __init__(self, members: list[MemberModel], lora: LoraShape, seed: int, device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.bases: dict[str, _Base] = {}
        self.base_of: dict[str, str] = {}
        self.loads = 0  # how many base models this backend loaded (tests check: one per distinct base)
        for m in members:
            key = m.base.fingerprint
            if key not in self.bases:
                self.bases[key] = _Base(m.base, self.device)
                self.loads += 1
            self.bases[key].add_adapter(m.name, m.adapter_dir, lora, derive_seed(seed, "adapter", m.name))
            self.base_of[m.name] = key
        for b in self.bases.values():
            b.model.eval()

    def tokenizer(self, member: str):
        return self.bases[self.base_of[member]].tokenizer

    def model(self, member: str):
        return self.bases[self.base_of[member]].model

    def _groups(self, members: list[str]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, m in enumerate(members):
            groups.setdefault(self.base_of[m], []).append(i)
        return groups

    def _batches(self, members: list[str], prompts: list[list[int]], batch_size: int):
        """Yield (base, row indices) batches: rows grouped by base, sorted by length to limit padding."""
        for key, rows in self._groups(members).items():
            rows = sorted(rows, key=lambda i: len(prompts[i]), reverse=True)
            for start in range(0, len(rows), batch_size):
                yield self.bases[key], rows[start:start + batch_size]

    @contextmanager
    def _adapters(self, base: _Base, members: list[str]):
        """Row i of the batches run inside uses members[i]'s adapter: our stacked path (mixed_lora), or PEFT's
        `adapter_names` for adapters it does not cover. Yields the keyword arguments to pass to the model."""
        with row_lora(base.model, members) as stacked:
            yield {} if stacked else {"adapter_names": members}

    def _run_prefixes(self, base: _Base, members: list[str], prefixes: list[list[int]], expand: list[int]):
        """Run each prefix once (row i with members[i]'s adapter) and copy its KV cache to the rows that
        `expand` maps to it. Returns the pass's output (logits of each prefix's last token, the copied cache)
        and the prefixes' attention mask."""
        ids, mask = self._left_pad(base, prefixes)
        with self._adapters(base, members) as adapters:
            first = base.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True,
                               logits_to_keep=1, **adapters)
        # transformers 5.24 names the KV cache `cache` (was past_key_values)
        first.cache.reorder_cache(torch.tensor(expand, device=self.device))
        return first, mask

    def _left_pad(self, base: _Base, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = base.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask

    @torch.inference_mode()
    def generate(self, members: list[str], prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                 top_p: float, batch_size: int, seed: int, progress=None, min_new_tokens: int = 0) -> list[Generated]:
        """Generate one response per (member, prompt ids). A batch that raises fails its rows, loudly.
        `min_new_tokens` holds back end-of-sequence (benchmarks use it to compare equal lengths)."""
        out: list[Generated | None] = [None] * len(prompts)
        for number, (base, rows) in enumerate(self._batches(members, prompts, batch_size)):
            torch.manual_seed(derive_seed(seed, "generate", number))
            try:
                results = self._generate_batch(base, [members[i] for i in rows], [prompts[i] for i in rows],
                                               max_new_tokens, temperature, top_p, min_new_tokens)
            except (RuntimeError, ValueError) as e:
                log.error("generation failed for a batch of %d: %s", len(rows), e)
                results = [Generated(None, error=f"{type(e).__name__}: {e}")] * len(rows)
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
                            last: int, batch_size: int, progress=None) -> list[list[list[float]]]:
        """Log-probabilities of `token_ids` as the next token after each of the last `last` positions.

        Returns rows[i][position][candidate]. Only the last `last` logits are computed (no full-vocab
        logits for every position)."""
        out: list = [None] * len(prompts)
        candidates = torch.tensor(token_ids, device=self.device)
        for base, rows in self._batches(members, prompts, batch_size):
            ids, mask = self._left_pad(base, [prompts[i] for i in rows])
            with self._adapters(base, [members[i] for i in rows]) as adapters:
                logits = base.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                                    logits_to_keep=last, **adapters).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)[:, :, candidates]
            for i, lp in zip(rows, logprobs.tolist()):
                out[i] = lp
            if progress:
                progress(len(rows))
        return out

    @torch.inference_mode()
    def grouped_next_token_logprobs(self, members: list[str], groups: list[list[list[int]]], token_ids: list[int], *,
                                    last: int, batch_size: int, progress=None) -> list[list[list[list[float]]]]:
        """`next_token_logprobs` for groups of prompts that one member reads and that share a leading part (a
        judge scoring both responses of a duel: same instructions and question). Each group's longest common
        prefix runs once and its KV cache serves every prompt of the group. Returns out[group][prompt]."""
        out: list = [None] * len(groups)
        candidates = torch.tensor(token_ids, device=self.device)
        for base, rows in self._batches(members, [g[0] for g in groups], batch_size):
            # the prefix stops `last` tokens before the shortest prompt ends: those positions are read
            cut = [min(_common_prefix(groups[g]), min(len(p) for p in groups[g]) - last) for g in rows]
            if min(cut) < 1:
                raise ValueError(f"grouped_next_token_logprobs: every prompt needs more than last={last} tokens")
            expand = [i for i, g in enumerate(rows) for _ in groups[g]]
            first, mask = self._run_prefixes(base, [members[g] for g in rows],
                                             [groups[g][0][:c] for g, c in zip(rows, cut)], expand)
            rests, rest_mask = self._left_pad(base, [p[c:] for g, c in zip(rows, cut) for p in groups[g]])
            # left padding here sits between prefix and rest: masked out, and positions continue the prefix
            positions = torch.tensor(cut, device=self.device)[expand][:, None] + _positions(rest_mask)
            with self._adapters(base, [members[rows[i]] for i in expand]) as adapters:
                logits = base.model(input_ids=rests, attention_mask=torch.cat([mask[expand], rest_mask], -1),
                                    position_ids=positions, cache=first.cache, use_cache=False, logits_to_keep=last,
                                    **adapters).logits
            logprobs = iter(torch.log_softmax(logits.float(), dim=-1)[:, :, candidates].tolist())
            for g in rows:
                out[g] = [next(logprobs) for _ in groups[g]]
            if progress:
                progress(sum(len(groups[g]) for g in rows))
        return out

    @torch.inference_mode()
    def continuation_logprobs(self, member: str, prefixes: list[list[int]], continuations: list[list[list[int]]], *,
                              batch_size: int) -> list[list[float]]:
        """Summed log p(continuation | prefix) for each prefix's continuations (e.g. the options of a question).

        Each prefix is run once and its KV cache shared by its continuations, so scoring k options costs one
        prefix plus k short continuations instead of k full sequences."""
        base = self.bases[self.base_of[member]]
        out: list[list[float]] = []
        for start in range(0, len(prefixes), batch_size):
            chunk, conts = prefixes[start:start + batch_size], continuations[start:start + batch_size]
            expand = [i for i, options in enumerate(conts) for _ in options]
            first, mask = self._run_prefixes(base, [member] * len(chunk), chunk, expand)
            rows = torch.tensor(expand, device=self.device)
            flat = [c for options in conts for c in options]
            width = max(len(c) for c in flat)
            pad = base.tokenizer.pad_token_id
            cont_ids = torch.tensor([c + [pad] * (width - len(c)) for c in flat], device=self.device)
            cont_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in flat], device=self.device)
            positions = mask.sum(-1)[rows][:, None] + torch.arange(width, device=self.device)[None]
            with self._adapters(base, [member] * len(flat)) as adapters:
                logits = base.model(input_ids=cont_ids, attention_mask=torch.cat([mask[rows], cont_mask], -1),
                                    position_ids=positions, cache=first.cache, use_cache=False, **adapters).logits
            # token k of a continuation is predicted by the prefix's last logits (k = 0) or by position k - 1
            logits = torch.cat([first.logits[rows], logits[:, :-1]], 1).float()
            token_lp = torch.log_softmax(logits, -1).gather(-1, cont_ids[..., None])[..., 0] * cont_mask
            sums = iter(token_lp.sum(-1).tolist())
            out += [[next(sums) for _ in options] for options in conts]
        return out

    def save_adapter(self, member: str, directory: Path) -> None:
        """Write the member's adapter atomically (temp dir, then rename) in PEFT's on-disk format."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        model = self.model(member)
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = get_peft_model_state_dict(model, adapter_name=member)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"))
        model.peft_config[member].save_pretrained(str(tmp))
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():  # swap in two renames so a crash never leaves no adapter at all
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)

    def load_adapter_weights(self, member: str, directory: Path) -> None:
        """Replace the member's adapter weights with those saved in `directory`."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(str(Path(directory) / "adapter_model.safetensors"), device=self.device)
        result = set_peft_model_state_dict(self.model(member), state, adapter_name=member)
        missing = [k for k in result.missing_keys if _adapter_key(k) == member]
        if missing:
            raise RuntimeError(f"adapter in {directory} lacks weights for member {member!r}: {missing[:3]}")

    def adapter_parameters(self, member: str) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model(member).named_parameters() if _adapter_key(n) == member]


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


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: padding must not shift the real tokens' positions."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    return next((i for i in range(n) if any(s[i] != seqs[0][i] for s in seqs)), n)


_ADAPTER_KEY = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.([^.]+)(?:\.|$)")


def _adapter_key(parameter_name: str) -> str | None:
    """The adapter a LoRA parameter belongs to (the name segment right after lora_A/lora_B), else None."""
    match = _ADAPTER_KEY.search(parameter_name)
    return match.group(1) if match else None
