"""DPO and SPPO for one member (and SFT, for building experts), on the member's own LoRA adapter.

Our own DPO loss (Rafailov et al. 2023, eq. 7; the same as trl's `sigmoid` loss, cross-checked in a test):
    L = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])
and, for labels that may be flipped (training.loss, `pair_losses`): conservative DPO, robust DPO and
margin-weighted DPO.
SPPO's (Wu et al. 2024, arXiv 2405.00675; docs/sppo.md), a regression of each sample's log-ratio on its win rate:
    L = mean over samples of (log π(y|x) - log π_ref(y|x) - η (P̂(y ≻ π_ref | x) - 1/2))²
The reference is the member as it was at the start of the iteration: its log-probs are computed once per
sequence, before the first update, with the same adapter — no second model, no reload.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .backends import MemberModel
from .chat import PromptTooLong, encode_chat
from .config import LOSSES, ExpertsConfig, TrainingConfig
from .hf_compat import is_checkpointing
from .kv_continuation import continue_rows, padded
from .pairs import judge_disagreement, margin_weights
from .precision import fp32_linear
from .seeding import derive_seed


@dataclass(frozen=True)
class DPOJob:
    """One member's DPO in an iteration: all a worker needs to run it, here or on another machine."""

    member: MemberModel  # as it stands at the start of the iteration (its adapter directory)
    pairs: list[dict]
    training: TrainingConfig  # beta, epochs and the optimiser
    prompt_tokens: int  # the prompt turn's budget: generation.max_prompt_tokens, as combat encoded it
    seed: int
    out_dir: Path  # where the trained adapter is written (atomically)


@dataclass(frozen=True)
class SPPOJob:
    """One member's SPPO in an iteration (see DPOJob): its own samples, each with its estimated win rate."""

    member: MemberModel
    samples: list[dict]
    training: TrainingConfig
    prompt_tokens: int
    eta: float
    seed: int
    out_dir: Path


def _dpo(slot, job: DPOJob, progress) -> dict:
    return train_dpo(slot, job.member.name, job.pairs, job.training, job.seed, progress, job.prompt_tokens)


def _sppo(slot, job: SPPOJob, progress) -> dict:
    return train_sppo(slot, job.member.name, job.samples, job.training, job.eta, job.seed, progress, job.prompt_tokens)


# the one place that knows the job types, so the local pipeline and the Ray workers can never train differently
_RUNNERS = {DPOJob: ("dpo", _dpo), SPPOJob: ("sppo", _sppo)}


def run_job(trainer, job: DPOJob | SPPOJob, progress=None) -> dict:
    """Train a copy of the member's adapter (trainer: a backends.hf.HFTrainer) by the job's method (its type),
    write it to job.out_dir; its metrics."""
    with trainer.slot(job.member) as slot:
        metrics = _RUNNERS[type(job)][1](slot, job, progress)
        slot.save(job.out_dir)
    return metrics


def job_kind(job: DPOJob | SPPOJob) -> str:
    """"dpo" or "sppo": the name of the job's progress stage."""
    return _RUNNERS[type(job)][0]


def job_steps(job: DPOJob | SPPOJob) -> int:
    """The optimiser steps the job will take (for progress bars): SPPO leaves out samples without a win rate."""
    n = len(job.pairs) if isinstance(job, DPOJob) else sum(x["win_prob"] is not None for x in job.samples)
    return dpo_steps(n, job.training.batch_size, job.training.epochs)


def encode_example(tokenizer, prompt: str, response: str, max_length: int,
                   max_prompt_tokens: int | None = None) -> tuple[list[int], int]:
    """Token ids of the full chat (user prompt, assistant response) and where the response starts; see
    `encode_truncated`."""
    ids, start, _, _ = encode_truncated(tokenizer, prompt, response, max_length, max_prompt_tokens)
    return ids, start


def encode_truncated(tokenizer, prompt: str, response: str, max_length: int, max_prompt_tokens: int | None = None
                     ) -> tuple[list[int], int, bool, bool]:
    """(ids, response start, response cut, prompt shortened). The prompt turn is encoded on its own, as combat
    encodes it for generation: over `max_prompt_tokens` (default max_length // 2) its content is shortened in the
    middle, the template never cut, so it does not depend on the response (chosen and rejected share it). The
    response follows and, over `max_length`, is cut from its end as trainers do: nothing is spliced into it."""
    budget = max_prompt_tokens or max_length // 2
    turn = encode_chat(tokenizer, [("user", "{0}")], [prompt], max_tokens=budget, add_generation_prompt=True)
    full = encode_chat(tokenizer, [("user", "{0}"), ("assistant", "{1}")], [prompt, response],
                       max_tokens=10**9, add_generation_prompt=False)
    unshortened = turn if not turn.shortened else encode_chat(tokenizer, [("user", "{0}")], [prompt],
                                                              max_tokens=10**9)
    if full.ids[:len(unshortened.ids)] != unshortened.ids:
        raise ValueError("the chat template renders the prompt turn differently before a response; "
                         "training needs the prompt as generation saw it")
    ids = turn.ids + full.ids[len(unshortened.ids):]
    start = len(turn.ids)
    if start >= max_length:
        raise PromptTooLong(f"the prompt takes {start} tokens, leaving none of training.max_length={max_length} "
                            "for the response")
    return ids[:max_length], start, len(ids) > max_length, turn.shortened


def sequence_logprobs(model, examples: list[tuple[list[int], int]], pad_id: int, device,
                      share_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p over each example's response tokens (from its start to the end), and token counts.
    With `share_prompts`, examples with the same prompt (ids[:start]: DPO's chosen and rejected) run it once: the
    prompt's keys and values are copied to each response, which runs after it on its own row (`_Layout`); where the
    model cannot (`_can_share`), each example runs whole. The output layer and log-softmax run in fp32 whatever the
    model's dtype (bf16 logits round to ~0.1), and only at the positions that predict a response token."""
    layout = _Layout(examples, share_prompts)
    if layout.rests and not _can_share(model, layout.width):
        layout = _Layout(examples, False)
    hidden = layout.hidden_states(_decoder(model), pad_id, device)
    picked = hidden[torch.tensor(layout.source, device=device)]
    nll = F.cross_entropy(_fp32_head(model, picked), torch.tensor(layout.targets, device=device), reduction="none")
    owner = torch.tensor(layout.owner, device=device, dtype=torch.long)
    logp = torch.zeros(len(examples), device=device, dtype=nll.dtype).index_add(0, owner, -nll)
    return logp, torch.bincount(owner, minlength=len(examples))


class _Layout:
    """Examples as rows of two passes. Sharing, and some prompt shared: each distinct prompt is a row of the first
    pass and each example's tokens after it a row of the second, on a copy of its prompt's KV cache, at the
    positions it has alone; so every token attends to what it would in its own row (the same log-probs up to the
    order of fp32 sums). Otherwise each example is one row of a single pass, as it always was. `source[k]` is where,
    in the passes' hidden states (flattened, first pass then second), lies the position that predicts scored
    token k (token t is predicted by position t - 1, t >= max(start, 1))."""

    def __init__(self, examples: list[tuple[list[int], int]], share: bool):
        groups: dict = {}
        for i, (ids, start) in enumerate(examples):
            groups.setdefault(("prompt", tuple(ids[:start])) if share and start > 0 else ("alone", i), []).append(i)
        split = any(len(g) > 1 for g in groups.values())
        # the first pass: a prompt (shared or not; at least one token, so that no attention row is empty), or whole
        cut = [max(start, 1) if split else len(ids) for ids, start in examples]
        self.prompts = [examples[g[0]][0][:cut[g[0]]] for g in groups.values()]
        self.rests = [examples[i][0][cut[i]:] for g in groups.values() for i in g] if split else []
        self.expand = [row for row, g in enumerate(groups.values()) for _ in g] if split else []
        self.source, self.targets, self.owner = [], [], []
        prompt_width, rest_width = max(map(len, self.prompts)), max(map(len, self.rests), default=0)
        self.width = prompt_width + rest_width
        second = len(self.prompts) * prompt_width  # where the second pass's hidden states start
        rest_row = 0
        for row, g in enumerate(groups.values()):
            for i in g:
                ids, start = examples[i]
                for t in range(max(start, 1), len(ids)):
                    after = t - 1 - cut[i]  # where token t - 1 lies in the example's second-pass row, if it does
                    self.source.append(row * prompt_width + t - 1 if after < 0 else
                                       second + rest_row * rest_width + after)
                    self.targets.append(ids[t])
                    self.owner.append(i)
                rest_row += 1

    def hidden_states(self, decoder, pad_id: int, device) -> torch.Tensor:
        ids, mask = padded(self.prompts, pad_id, device)
        first = decoder(input_ids=ids, attention_mask=mask, use_cache=bool(self.rests))
        hidden = first.last_hidden_state.flatten(0, 1)
        if not self.rests:
            return hidden
        # the prompt's padding sits between it and the response: continue_rows masks it out and continues the
        # positions from the prompt's real tokens
        second = continue_rows(decoder, first, mask, self.expand, *padded(self.rests, pad_id, device))
        return torch.cat([hidden, second.last_hidden_state.flatten(0, 1)])


def _can_share(model, width: int) -> bool:
    """Whether a response on a copy of its prompt's cache sees what it sees alone: SDPA or eager attention (others
    untested), full or sliding-window layers, any window at least `width` (a window counts cache slots, and the
    prompts' padding adds slots), and no gradient checkpointing (it drops the cache in training)."""
    config = _config(model)
    window = getattr(config, "sliding_window", None)
    layers = set(getattr(config, "layer_types", None) or []) - {"full_attention", "sliding_attention"}
    return (config._attn_implementation in ("sdpa", "eager") and not layers and not is_checkpointing(_inner(model))
            and (not window or window >= width))


def _inner(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _config(model):
    return _inner(model).config.get_text_config()


def _decoder(model):
    return _inner(model).get_decoder()


def _fp32_head(model, hidden: torch.Tensor) -> torch.Tensor:
    """The output layer applied in fp32 to `hidden` (a LoRA-wrapped head: its own forward, then fp32)."""
    head = _inner(model).get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return head(hidden).float()
    return fp32_linear(head, hidden)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, kind: str = "dpo", eps: float = 0.0,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean preference loss (`pair_losses`; plain DPO by default) and the implicit rewards β·(log π − log π_ref) of
    chosen and rejected."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = pair_losses(chosen_reward - rejected_reward, kind, eps, weights).mean()
    return loss, chosen_reward.detach(), rejected_reward.detach()


def pair_losses(h: torch.Tensor, kind: str, eps: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Each pair's loss from its reward margin h = β[(log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)]:
      dpo     −log σ(h)                                   Rafailov et al. 2023, eq. 7
      cdpo    −(1−ε) log σ(h) − ε log σ(−h)               conservative DPO (Mitchell 2023, "A note on DPO with noisy
                                                          preferences"; trl's sigmoid loss with label_smoothing=ε):
                                                          the label is taken as flipped with probability ε
      rdpo    [−(1−ε) log σ(h) + ε log σ(−h)] / (1 − 2ε)  robust DPO (Chowdhury et al. 2024, "Provably Robust DPO",
                                                          arXiv 2403.00409): in expectation over labels flipped at
                                                          rate ε < ½ it equals DPO's loss on the true labels
      margin  w · (−log σ(h))                             margin-weighted DPO, w: the pair's weight
                                                          (sparta.pairs.margin_weights)
    ε = 0 gives DPO's loss exactly for cdpo and rdpo, and so do weights of 1 for margin."""
    if kind == "dpo":
        return -F.logsigmoid(h)
    if kind == "cdpo":
        return -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    if kind == "rdpo":
        return (-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
    if kind == "margin":
        return weights * -F.logsigmoid(h)
    raise ValueError(f"unknown preference loss {kind!r}")


def sppo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, win_prob: torch.Tensor, eta: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SPPO loss (log-ratio − η (P̂ − ½))² and the log-ratios log π − log π_ref. The paper's log-partition
    term is approximated by the constant η/2, which is what centres the target at P̂ = ½."""
    log_ratios = policy_logps - ref_logps
    loss = ((log_ratios - eta * (win_prob - 0.5)) ** 2).mean()
    return loss, log_ratios.detach()


def _prepare(slot, member: str, seed: int, tag: str):
    model = slot.model
    model.set_adapter(slot.adapter)
    for _, p in model.named_parameters():
        p.requires_grad_(False)
    params = slot.parameters()
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(derive_seed(seed, tag, member))  # LoRA dropout
    return model, params


def _schedule(optimizer, total_steps: int, warmup_ratio: float):
    """Linear warmup then cosine decay to zero (the paper's schedule)."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batches(n: int, batch_size: int, epochs: int, rng: random.Random) -> list[list[int]]:
    out = []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        out += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return out


def _run_steps(model, params, batches, s: TrainingConfig, micro_loss, progress, dropout: bool) -> list[dict]:
    """The optimisation loop shared by DPO and SFT: grad accumulation over micro-batches, clipping,
    AdamW, warmup + cosine. `micro_loss(indices, weight)` backpropagates and returns step stats.
    DPO runs without dropout (as trl does by default) so that the policy equals the reference at step one."""
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    scheduler = _schedule(optimizer, len(batches), s.warmup_ratio)
    history = []
    training_mode(model, dropout)
    try:
        for batch in batches:
            stats: dict[str, float] = {}
            for start in range(0, len(batch), s.micro_batch_size):
                micro = batch[start:start + s.micro_batch_size]
                for key, value in micro_loss(micro, len(micro) / len(batch)).items():
                    stats[key] = stats.get(key, 0.0) + value * len(micro) / len(batch)
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm))
            stats["lr"] = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.append(stats)
            if progress:
                progress(1)
    finally:
        model.eval()
    return history


def training_mode(model, dropout: bool) -> None:
    """Put `model` in training mode; without dropout, only the decoder layers are (every other module evaluates).
    transformers checkpoints a decoder layer only while that layer is training, so `model.train(False)` would
    silently switch gradient checkpointing off; dropout, LoRA's included, lives in the layers' submodules (the
    attention's `training` flag decides its dropout), which stay in eval mode."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.train(True)
    if not dropout:
        for module in model.modules():
            module.training = isinstance(module, GradientCheckpointingLayer)


@contextmanager
def _phase(slot, seconds: dict, cpu_seconds: dict, name: str):
    """Run a block in the slot's compute context and record its wall time, and this process's CPU time (all its
    threads: on a shared machine the wall time grows with the others' load, the CPU time much less), under `name`."""
    clock, cpu = time.perf_counter(), time.process_time()
    with slot.compute():
        yield
    seconds[name], cpu_seconds[name] = time.perf_counter() - clock, time.process_time() - cpu


@dataclass
class _Fit:
    history: list[dict]
    reference: dict  # micro-batch (a tuple of indices) -> its reference log-probs
    after: dict  # the same for the trained adapter, over scored
    scored: list[tuple[int, ...]]  # the examples scored after training (each once), in the steps' micro-batches
    seconds: dict
    cpu_seconds: dict


def scored_steps(per_epoch: int, limit: int | None, batch_size: int) -> list[int]:
    """The steps whose examples the after-pass scores: whole steps of the first epoch (a step is sorted by length:
    never the short end of one), at least `limit` examples (None: every step), spread evenly over the epoch, so
    that the sample holds examples trained early and late."""
    n = per_epoch if limit is None else min(per_epoch, math.ceil(limit / batch_size))
    return [i * per_epoch // n for i in range(n)]


def _fit_against_reference(slot, model, params, logps, loss_of, lengths: list[int], s: TrainingConfig,
                           rng: random.Random, progress) -> _Fit:
    """The part DPO and SPPO share: reference log-probs, the steps, and a no-grad pass after them over some steps'
    examples (`training.after_limit`). `logps(indices)` scores examples with the current adapter;
    `loss_of(indices, policy, reference)` gives a micro-batch's (mean loss, stats)."""
    batches = _batches(len(lengths), s.batch_size, s.epochs, rng)
    # a step's gradient is the mean over its examples whatever their grouping: micro-batch by length (less padding)
    batches = [sorted(batch, key=lengths.__getitem__) for batch in batches]

    def micro_batches(steps):
        return [tuple(b[i:i + s.micro_batch_size]) for b in steps for i in range(0, len(b), s.micro_batch_size)]

    micro = micro_batches(batches)
    per_epoch = len(batches) // s.epochs
    scored = micro_batches([batches[i] for i in scored_steps(per_epoch, s.after_limit, s.batch_size)])

    def no_grad_logps(layouts):
        with torch.inference_mode():
            return {rows: logps(list(rows)) for rows in dict.fromkeys(layouts)}

    # The reference is this adapter before any update, computed in exactly the micro-batches the steps use:
    # in bf16 a sequence's log-prob moves with its batch's padding by about the size of DPO's rewards.
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with _phase(slot, seconds, cpu, "reference"):
        reference = no_grad_logps(micro)

    def micro_loss(indices, weight):
        loss, stats = loss_of(indices, logps(indices), reference[tuple(indices)])
        (loss * weight).backward()
        return {"loss": loss.item(), **stats}

    with _phase(slot, seconds, cpu, "steps"):
        history = _run_steps(model, params, batches, s, micro_loss, progress, dropout=False)
    after = {}
    if scored:
        with _phase(slot, seconds, cpu, "after"):
            after = no_grad_logps(scored)
    return _Fit(history, reference, after, scored, seconds, cpu)


def train_dpo(slot, member: str, pairs: list[dict], s: TrainingConfig, seed: int, progress=None,
              prompt_tokens: int | None = None) -> dict:
    """DPO-train `member`'s adapter (a backends.hf.TrainSlot) on `pairs` (trl conversational format), each
    prompt turn encoded within `prompt_tokens` (None: s.max_length // 2). Returns metrics."""
    if not pairs:
        return {"member": member, "pairs": 0, "steps": 0}
    model, params = _prepare(slot, member, seed, "dpo")
    tok = slot.tokenizer
    examples, counts = _encode_rows(tok, pairs, ("chosen", "rejected"), s.max_length, prompt_tokens)
    pairs = [p for p, e in zip(pairs, examples) if e is not None]
    examples = [e for e in examples if e is not None]
    if not pairs:
        return {"member": member, "pairs": 0, "steps": 0, **counts}
    objective = Objective.of(s, pairs, slot.device)

    def logps(indices):
        seqs = [examples[i][0] for i in indices] + [examples[i][1] for i in indices]
        total, _ = sequence_logprobs(model, seqs, tok.pad_token_id, slot.device, share_prompts=s.share_prompts)
        return total[:len(indices)], total[len(indices):]

    def loss_of(indices, policy, ref):
        loss, rc, rr = objective.loss(indices, *policy, *ref, s.beta)
        return loss, {"reward_chosen": rc.mean().item(), "reward_rejected": rr.mean().item(),
                      "reward_margin": (rc - rr).mean().item(), "reward_accuracy": (rc > rr).float().mean().item()}

    # a pair's row: its prompt and both responses (share_prompts), else its longer sequence
    lengths = [len(c[0]) + len(r[0]) - c[1] if s.share_prompts else max(len(c[0]), len(r[0])) for c, r in examples]
    rng = random.Random(derive_seed(seed, "dpo-order", member))
    fit = _fit_against_reference(slot, model, params, logps, loss_of, lengths, s, rng, progress)
    history = fit.history
    return {"member": member, "pairs": len(pairs), "steps": len(history), "history": history,
            "seconds": fit.seconds, "cpu_seconds": fit.cpu_seconds, **counts,
            "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"], **objective.stats,
            **_dpo_after(fit, s.beta, objective)}


@dataclass(frozen=True)
class Objective:
    """The preference loss train_dpo minimises (training.loss, `pair_losses`) with what it needs: ε (cdpo's label
    smoothing, rdpo's flip rate), margin's weight per pair (by index); and what the member's metrics say of it
    (`stats`: nothing for plain dpo, so its metrics are as they always were)."""

    kind: str = "dpo"
    eps: float = 0.0
    weights: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)

    @staticmethod
    def of(s: TrainingConfig, pairs: list[dict], device) -> Objective:
        if s.loss == "cdpo":
            return Objective("cdpo", s.label_smoothing, stats={"objective": {"loss": "cdpo", "eps": s.label_smoothing}})
        if s.loss == "rdpo":
            return _rdpo(s.flip_rate, pairs)
        if s.loss == "margin":
            w = margin_weights(pairs)
            return Objective("margin", weights=torch.tensor(w, dtype=torch.float32, device=device),
                             stats={"objective": {"loss": "margin", "weight_min": min(w), "weight_max": max(w)}})
        if s.loss != "dpo":
            raise ValueError(f"training.loss must be one of {', '.join(LOSSES)}, got {s.loss!r}")
        return Objective()

    def loss(self, indices, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
        """`dpo_loss` over the pairs at `indices` (their rows, in order)."""
        weights = None if self.weights is None else self.weights[list(indices)]
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, self.kind, self.eps, weights)


def _rdpo(flip_rate: float | str, pairs: list[dict]) -> Objective:
    """rdpo at the given flip rate, or at the judges' disagreement on these pairs (auto), clipped to [0, 0.49]:
    the loss divides by 1 − 2ε."""
    if flip_rate != "auto":
        return Objective("rdpo", float(flip_rate), stats={"objective": {"loss": "rdpo", "eps": float(flip_rate)}})
    estimate, used = judge_disagreement(pairs)
    eps = min(max(estimate, 0.0), FLIP_RATE_MAX)
    return Objective("rdpo", eps, stats={"objective": {"loss": "rdpo", "eps": eps, "flip_rate_estimate": estimate,
                                                       "estimated_from_pairs": used}})


FLIP_RATE_MAX = 0.49  # rdpo's largest ε: at ½ its loss divides by zero


def _dpo_after(fit: _Fit, beta: float, objective: Objective) -> dict:
    """After training, on the scored pairs: did the member learn to prefer the chosen responses? (none: {})"""
    if not fit.scored:
        return {}
    stacked = [torch.cat([d[rows][k] for rows in fit.scored]) for d in (fit.after, fit.reference) for k in (0, 1)]
    loss, rc, rr = objective.loss([i for rows in fit.scored for i in rows], *stacked, beta)
    return {"after": {"loss": loss.item(), "reward_margin": (rc - rr).mean().item(),
                      "reward_accuracy": (rc > rr).float().mean().item(), "pairs": len(rc)}}


def train_sppo(slot, member: str, samples: list[dict], s: TrainingConfig, eta: float, seed: int, progress=None,
               prompt_tokens: int | None = None) -> dict:
    """SPPO-train `member`'s adapter (a TrainSlot) on its own samples: trl prompt-completion dicts
    {"prompt": [user message], "completion": [assistant message], "win_prob": P̂(y ≻ π_t | x)}
    (sparta.pairs.win_probabilities). A sample whose win rate is None (nobody could compare it) is left out
    and counted. Returns metrics; "after" measures, on the scored samples (`training.after_limit`), how close
    the log-ratios came to their targets η (P̂ − ½)."""
    kept = [x for x in samples if x["win_prob"] is not None]
    counts = {"skipped_no_win_prob": len(samples) - len(kept)}
    tok = slot.tokenizer
    examples, encode_counts = _encode_rows(tok, kept, ("completion",), s.max_length, prompt_tokens)
    counts |= encode_counts
    kept = [x for x, e in zip(kept, examples) if e is not None]
    examples = [e[0] for e in examples if e is not None]
    if not kept:
        return {"member": member, "samples": 0, "steps": 0, **counts}
    model, params = _prepare(slot, member, seed, "sppo")
    win = torch.tensor([x["win_prob"] for x in kept], dtype=torch.float32, device=slot.device)

    def logps(indices):
        total, _ = sequence_logprobs(model, [examples[i] for i in indices], tok.pad_token_id, slot.device,
                                     share_prompts=s.share_prompts)
        return total

    def loss_of(indices, policy, ref):
        loss, log_ratios = sppo_loss(policy, ref, win[list(indices)], eta)
        return loss, {"log_ratio": log_ratios.mean().item()}

    rng = random.Random(derive_seed(seed, "sppo-order", member))
    fit = _fit_against_reference(slot, model, params, logps, loss_of, [len(e[0]) for e in examples], s, rng,
                                 progress)
    history = fit.history
    metrics = {"member": member, "samples": len(kept), "steps": len(history), "history": history,
               "seconds": fit.seconds, "cpu_seconds": fit.cpu_seconds, **counts,
               "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"]}
    if fit.scored:
        order = [i for rows in fit.scored for i in rows]
        after, reference = (torch.cat([d[rows] for rows in fit.scored]) for d in (fit.after, fit.reference))
        metrics["after"] = {**_sppo_after(after, reference, win[order], eta), "samples": len(order)}
    return metrics


def _sppo_after(after: torch.Tensor, reference: torch.Tensor, win: torch.Tensor, eta: float) -> dict:
    """How far the trained log-ratios are from their targets, and whether they follow the win rates."""
    loss, log_ratios = sppo_loss(after, reference, win, eta)
    # a correlation needs both to vary (e.g. not all samples at P̂ = ½)
    varies = len(win) > 1 and bool(win.std() > 0) and bool(log_ratios.std() > 0)
    return {"loss": loss.item(), "target_error": (log_ratios - eta * (win - 0.5)).abs().mean().item(),
            "correlation": torch.corrcoef(torch.stack([log_ratios, win]))[0, 1].item() if varies else None,
            "log_ratio_above_half": _mean_or_none(log_ratios[win > 0.5]),
            "log_ratio_below_half": _mean_or_none(log_ratios[win < 0.5])}


def _mean_or_none(x: torch.Tensor) -> float | None:
    return x.mean().item() if len(x) else None


def _encode_rows(tok, rows: list[dict], sides: tuple[str, ...], max_length: int, prompt_tokens: int | None):
    """Each row's encodings of its `sides` (one response message each) after the shared prompt, None for a row
    whose prompt does not fit; and the counts of rows with a response cut short, with a shortened prompt, and
    left out. A row's own `max_prompt_tokens` (meta-rewarding's judge pairs: the judge's window) overrides
    `prompt_tokens`."""
    examples, counts = [], {"truncated": 0, "prompt_shortened": 0, "skipped_prompt_too_long": 0}
    for row in rows:
        prompt, budget = row["prompt"][0]["content"], row.get("max_prompt_tokens") or prompt_tokens
        try:
            encoded = [encode_truncated(tok, prompt, row[side][0]["content"], max_length, budget)
                       for side in sides]
        except PromptTooLong:
            examples.append(None)
            counts["skipped_prompt_too_long"] += 1
            continue
        counts["truncated"] += any(e[2] for e in encoded)
        counts["prompt_shortened"] += encoded[0][3]  # one prompt turn for every side
        examples.append(tuple(e[:2] for e in encoded))
    return examples, counts


def dpo_steps(n_pairs: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n_pairs / batch_size) if n_pairs else 0


def train_sft(slot, member: str, examples: list[tuple[str, str]], experts: ExpertsConfig, seed: int,
              progress=None) -> dict:
    """Supervised fine-tuning of `member`'s adapter (a TrainSlot) on (prompt, response) examples: mean token NLL,
    `experts.steps` steps of `experts.batch_size` examples; warmup and clipping as training's defaults."""
    s = TrainingConfig(lr=experts.lr, batch_size=experts.batch_size, micro_batch_size=experts.batch_size,
                       max_length=experts.max_length)
    steps = experts.steps
    model, params = _prepare(slot, member, seed, "sft")
    tok = slot.tokenizer
    encoded = []
    for p, r in examples:
        try:
            encoded.append(encode_example(tok, p, r, s.max_length))
        except PromptTooLong:  # an example whose prompt alone fills max_length is left out
            continue
    rng = random.Random(derive_seed(seed, "sft-order", member))
    batches = _batches(len(encoded), s.batch_size, math.ceil(steps * s.batch_size / len(encoded)), rng)[:steps]

    def micro_loss(indices, weight):
        logp, counts = sequence_logprobs(model, [encoded[i] for i in indices], tok.pad_token_id, slot.device)
        loss = -logp.sum() / counts.sum()
        (loss * weight).backward()
        return {"loss": loss.item()}

    with slot.compute():
        history = _run_steps(model, params, batches, s, micro_loss, progress, dropout=True)
    return {"member": member, "examples": len(examples), "steps": len(history),
            "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"], "history": history}
