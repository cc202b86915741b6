"""The same duels through the authors' pipeline shape and through sparta's arena, side by side.

The authors' scripts (SPARTA.md, issue 4): every member is loaded from disk for its generation and again for
its judging (and a third time for training, timed here as one load), responses are generated member by
member in static batches of 24 (T=0.7, top_k 50, top_p 0.95), and judgments are *sampled* (same settings,
up to 256 new tokens) in static batches of 24, then parsed with a regex. To be generous to that shape its
loads merge the LoRA adapter into the base (plain-model decoding speed). Both sides answer the same prompts
with the same members and the same `max_new_tokens`; the authors' judges read sparta's responses, so both
judge identical texts. Both run on the backend's device in its precision, and are timed alike (bench.measure).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from bench.measure import model_device, plain_model, timed
from sparta.arena.combat import Match, run_round
from sparta.arena.judging import judge_messages, parse_judgment
from sparta.arena.reputation import EloParams, initial_state
from sparta.backends import MemberModel
from sparta.backends.hf import HFTrainer
from sparta.chat import encode_chat
from sparta.config import GenerationConfig, JudgeConfig
from sparta.prompts import load_prompts

STATIC_BATCH = 24
JUDGE_TOKENS = 256


def matches_for(members: list[str], n: int) -> list[Match]:
    """n GSM8K duels, contestants cycling through every pair, so each member fights and judges."""
    pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
    prompts = load_prompts("gsm8k")[:n]
    return [Match(i, p, *pairs[i % len(pairs)]) for i, p in enumerate(prompts)]


def sparta_arena(backend, matches: list[Match], members: list[str], new_tokens: int) -> tuple[list, dict]:
    gen = GenerationConfig(max_new_tokens=new_tokens, temperature=0.7, top_p=0.95, batch_size=16, max_prompt_tokens=512)
    judge = JudgeConfig(mode="logprob", max_new_tokens=32, temperature=0.0, batch_size=8, max_prompt_tokens=1024)
    timings: dict = {}
    elo = EloParams()
    duels = run_round(backend, matches, members, initial_state(members, elo), elo, gen, judge, 0.0, seed=0, round_no=1,
                      iteration=1, timings=timings)
    return duels, timings


def _load(resolved, adapter_dir: Path, device, dtype: torch.dtype):
    from peft import PeftModel

    model = plain_model(resolved, device, dtype)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()


@torch.inference_mode()
def authors_sample(model, tok, prompts: list[list[int]], max_new_tokens: int,
                   adapter_names: list[str] | None = None) -> tuple[list[str], int]:
    """Their generation: static batches, sampling; returns texts and the number of new tokens made.
    `adapter_names` (one per prompt) lets a PEFT model run each row with its own adapter."""
    texts, made = [], 0
    device = model_device(model)
    for start in range(0, len(prompts), STATIC_BATCH):
        chunk = prompts[start:start + STATIC_BATCH]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        rows = {"adapter_names": adapter_names[start:start + STATIC_BATCH]} if adapter_names else {}
        new = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_k=50,
                             top_p=0.95, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             **rows)[:, width:]
        for row in new.tolist():
            stop = next((j for j, t in enumerate(row) if t in (tok.eos_token_id, tok.pad_token_id)), len(row))
            made += stop
            texts.append(tok.decode(row[:stop], skip_special_tokens=True))
    return texts, made


def authors_arena(resolved, adapters: dict[str, Path], tok, matches: list[Match], judged: dict, new_tokens: int,
                  device, dtype: torch.dtype) -> dict:
    """`judged`: {(match index, side): response text} for the duels whose two responses exist (sparta's
    responses: both sides judge identical texts, and void duels are judged by neither). Models load on `device`
    in `dtype` (sparta's)."""
    torch.manual_seed(0)
    t = {"load": 0.0, "generate": 0.0, "judge": 0.0}
    tokens = {"generate": 0, "judge": 0}
    parsed, judgments = 0, 0
    for member, adapter in adapters.items():  # generation, member by member
        model, s = timed(partial(_load, resolved, adapter, device, dtype), device)
        t["load"] += s
        prompts = [encode_chat(tok, [("user", "{0}")], [m.prompt.text], max_tokens=512).ids
                   for m in matches for side in (m.a, m.b) if side == member]
        (_, made), s = timed(partial(authors_sample, model, tok, prompts, new_tokens), device)
        t["generate"] += s
        tokens["generate"] += made
        del model
    for judge, adapter in adapters.items():  # judging, judge by judge
        model, s = timed(partial(_load, resolved, adapter, device, dtype), device)
        t["load"] += s
        prompts = [encode_chat(tok, judge_messages(), [m.prompt.text, judged[(m.index, side)]], max_tokens=1024).ids
                   for m in matches if judge not in (m.a, m.b) and (m.index, "a") in judged for side in ("a", "b")]
        (texts, made), s = timed(partial(authors_sample, model, tok, prompts, JUDGE_TOKENS), device)
        t["judge"] += s
        tokens["judge"] += made
        parsed += sum(parse_judgment(x) is not None for x in texts)
        judgments += len(texts)
        del model
    loads = 2 * len(adapters)
    return {"seconds": t, "new_tokens": tokens, "loads": loads, "load_s_each": t["load"] / loads,
            "judgments": judgments, "parsed": parsed / max(1, judgments)}


def side_by_side(backend, members: list[str], resolved, adapter_root: Path, n_duels: int, new_tokens: int) -> dict:
    tok = backend.tokenizer(members[0])
    adapters = {}
    trainer = HFTrainer(backend.lora, backend.seed, backend.store)
    for m in members:  # each member's (fresh) adapter, as the authors' scripts would load it from disk
        with trainer.slot(MemberModel(m, resolved, None)) as slot:
            slot.save(adapter_root / m)
        adapters[m] = adapter_root / m
    matches = matches_for(members, n_duels)
    (duels, timings), arena_s = timed(lambda: sparta_arena(backend, matches, members, new_tokens),
                                      backend.store.device)
    judged = {(d.index, side): r.text for d in duels if d.response_a.text and d.response_b.text
              for side, r in (("a", d.response_a), ("b", d.response_b))}
    authors = authors_arena(resolved, adapters, tok, matches, judged, new_tokens, backend.store.device,
                            backend.store.dtype)
    sparta_tokens = sum(r.n_tokens for d in duels for r in (d.response_a, d.response_b))
    judgments = sum(len(d.judgments) for d in duels)
    a = authors["seconds"]
    return {
        "duels": len(matches), "judged_duels": len(judged) // 2, "members": len(members), "max_new_tokens": new_tokens,
        "sparta": {"seconds": {"generate": timings["generate"], "judge": timings["judge"], "arena": arena_s},
                   "new_tokens": sparta_tokens, "judgments": judgments},
        "authors": authors,
        "speedup": {
            "generate": (a["generate"] + a["load"] / 2) / timings["generate"],
            "judge": (a["judge"] + a["load"] / 2) / timings["judge"],
            "arena": sum(a.values()) / arena_s,
            "arena_without_loads": (a["generate"] + a["judge"]) / arena_s,
            "judgments_per_s": (judgments / timings["judge"]) / (authors["judgments"] / a["judge"]),
        },
    }
