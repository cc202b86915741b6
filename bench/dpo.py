"""DPO cost on the CPU (issue 15 §5): one member's DPO on the same real pairs, the old path and the new, one process.

    .venv/bin/python -m bench.dpo [--pairs 32] [--out bench/results/NAME.json] [--pairs-file PATH]

Pairs: SmolLM2's own answers (two members, temperature 0.7) to GSM8K prompts of 100-300 tokens (questions joined
until a seeded target length), 100-250 new tokens each; TrainingConfig's defaults (the demo's, but for `pairs`).
Both paths train the same start adapter with the same seed:

  old  training.after_limit=None, share_prompts=False: every pair scored again after training, chosen and
       rejected as two rows (the behaviour before issue 15 §5; the output layer's restriction to response
       positions is not a setting, so "old" already has it and the ratio understates the change)
  new  the defaults: the prompt run once per pair (one row, a 4D mask), the "after" pass on the first 16 pairs

Reported: seconds per pair, whole and by phase (reference, steps, after), their old/new ratios, and the trained
adapters' loss, reward margin and reward accuracy on every pair, measured the same way for both after the timing
(reference: the start adapter; one pair per pass, separate rows), with their differences and the tolerance. Runs in
`--order` (default old,new,new,old: a drift in the machine's load falls on both paths alike); a path run twice
reports the mean of its times and checks that its two adapters agree.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.run import _cpu_model, _pool, write_result
from sparta.backends import MemberModel
from sparta.backends.hf import HFTrainer
from sparta.chat import encode_chat
from sparta.config import LoraConfig, TrainingConfig
from sparta.models import resolve_model
from sparta.prompts import load_prompts
from sparta.rundir import package_versions
from sparta.training import _encode_rows, dpo_loss, sequence_logprobs, train_dpo

PATHS = {"old": {"after_limit": None, "share_prompts": False}, "new": {}}
PHASES = ("reference", "steps", "after")
# |Δ loss| on every pair, and reward accuracy within one pair: see docs/training.md (the two paths differ only in
# how fp32 sums are ordered; a flipped pair is one whose margin is at that noise)
LOSS_TOLERANCE = 0.01


def make_pairs(backend, members, tok, n: int, prompt_tokens=(100, 300), new_tokens=(100, 250), seed: int = 0):
    """n preference pairs in trl's conversational format: two members' answers to one prompt each."""
    rng = random.Random(seed)
    texts = [p.text for p in load_prompts("gsm8k")[200:]]
    questions, i = [], 0
    for _ in range(n):
        target, text = rng.randint(*prompt_tokens), texts[i]
        i += 1
        while len(encode_chat(tok, [("user", "{0}")], [text], max_tokens=10**6).ids) < target:
            text += "\n\n" + texts[i].split("\n\n", 1)[-1]  # the next question without the instruction line
            i += 1
        questions.append(text)
    enc = [encode_chat(tok, [("user", "{0}")], [q], max_tokens=10**6).ids for q in questions]
    answers = backend.generate([members[0]] * n + [members[1]] * n, enc + enc, max_new_tokens=new_tokens[1],
                               min_new_tokens=new_tokens[0], temperature=0.7, top_p=0.95, batch_size=16, seed=2)

    def turn(role, text):
        return [{"role": role, "content": text}]

    return [{"prompt": turn("user", q), "chosen": turn("assistant", a.text), "rejected": turn("assistant", b.text)}
            for q, a, b in zip(questions, answers[:n], answers[n:]) if a.text and b.text]


def settings(**changes) -> TrainingConfig:
    return replace(TrainingConfig(), **changes)


def lengths(tok, pairs: list[dict], s: TrainingConfig) -> dict:
    examples, _ = _encode_rows(tok, pairs, ("chosen", "rejected"), s.max_length, None)
    prompt = [c[1] for c, _ in examples if c]
    response = [len(x[0]) - x[1] for pair in examples if pair for x in pair]
    return {"prompt_tokens": _spread(prompt), "response_tokens": _spread(response)}


def _spread(xs: list[int]) -> dict:
    xs = sorted(xs)
    return {"min": xs[0], "median": xs[len(xs) // 2], "max": xs[-1], "mean": sum(xs) / len(xs)}


def score(store, member: MemberModel, pairs: list[dict], s: TrainingConfig, share_prompts: bool) -> torch.Tensor:
    """[pairs, 2] log-probs (chosen, rejected) of `member`'s adapter, one pair per pass (the same for any path)."""
    with HFTrainer(LoraConfig(), 0, store).slot(member) as slot, torch.inference_mode():
        slot.model.set_adapter(slot.adapter)
        slot.model.eval()
        examples, _ = _encode_rows(slot.tokenizer, pairs, ("chosen", "rejected"), s.max_length, None)
        return torch.stack([sequence_logprobs(slot.model, list(e), slot.tokenizer.pad_token_id, slot.device,
                                              share_prompts=share_prompts)[0] for e in examples if e])


def quality(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict:
    loss, rc, rr = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta)
    return {"loss": loss.item(), "reward_margin": (rc - rr).mean().item(),
            "reward_accuracy": (rc > rr).float().mean().item(), "pairs": len(rc)}


def train(store, member: MemberModel, pairs, s: TrainingConfig, out: Path) -> dict:
    with HFTrainer(LoraConfig(), 0, store).slot(member) as slot:
        clock, cpu = time.perf_counter(), time.process_time()
        metrics = train_dpo(slot, member.name, pairs, s, seed=0)
        seconds = {"wall": time.perf_counter() - clock, "cpu": time.process_time() - cpu}
        slot.save(out)
    return {"seconds": seconds, "by_phase": {"wall": metrics["seconds"], "cpu": metrics["cpu_seconds"]},
            "loss_first": metrics["loss_first"], "loss_last": metrics["loss_last"], "after": metrics.get("after"),
            "load_average_1min": os.getloadavg()[0]}


def compare(backend, members, resolved, pairs: list[dict], order: list[str], work: Path) -> dict:
    """Train the same start adapter on `pairs` by each path in `order`, then score the trained adapters."""
    t, store = TrainingConfig(), backend.store
    with HFTrainer(LoraConfig(), 0, store).slot(MemberModel(members[2], resolved, None)) as slot:
        slot.save(work / "start")  # the fresh adapter the pool serves
    start = MemberModel(members[2], resolved, work / "start")
    runs = []
    for k, path in enumerate(order):
        runs.append(train(store, start, pairs, settings(**PATHS[path]), work / str(k)))
        print(f"{path}: {runs[-1]['seconds']}", file=sys.stderr, flush=True)
    s = settings()
    reference = score(store, start, pairs, s, share_prompts=False)
    result = {"pairs": len(pairs), "order": order, "settings": {p: PATHS[p] or "defaults" for p in PATHS},
              # how far a log-prob moves with the layout alone (one row per sequence, or the prompt shared), nats
              "layout_logp_max_abs_diff": (score(store, start, pairs, s, True) - reference).abs().max().item()}
    for path in PATHS:
        mine = [k for k, p in enumerate(order) if p == path]
        policy = score(store, MemberModel(members[2], resolved, work / str(mine[0])), pairs, s, False)
        result[path] = {"runs": [runs[k] for k in mine], "quality": quality(policy, reference, t.beta),
                        "repeats_identical": all(_same(work / str(mine[0]), work / str(k)) for k in mine[1:]),
                        "s_per_pair": {c: _mean([runs[k]["seconds"][c] for k in mine]) / len(pairs)
                                       for c in ("wall", "cpu")},
                        "s_per_pair_by_phase": {c: {ph: _mean([runs[k]["by_phase"][c].get(ph, 0.0) for k in mine])
                                                    / len(pairs) for ph in PHASES} for c in ("wall", "cpu")}}
    old, new = result["old"], result["new"]
    result["speedup"] = {c: old["s_per_pair"][c] / new["s_per_pair"][c] for c in ("wall", "cpu")}
    result["speedup_by_phase"] = {c: {ph: old["s_per_pair_by_phase"][c][ph] / new["s_per_pair_by_phase"][c][ph]
                                      for ph in PHASES if new["s_per_pair_by_phase"][c][ph]} for c in ("wall", "cpu")}
    result["speedup_adjacent"] = _adjacent(order, runs)
    diff = {k: new["quality"][k] - old["quality"][k] for k in ("loss", "reward_margin", "reward_accuracy")}
    result["new_minus_old"] = diff
    result["tolerance"] = {"loss_abs": LOSS_TOLERANCE, "reward_accuracy_abs": 1 / len(pairs),
                           "within": abs(diff["loss"]) <= LOSS_TOLERANCE
                           and abs(diff["reward_accuracy"]) <= 1 / len(pairs) + 1e-9}
    return result


def _adjacent(order: list[str], runs: list[dict]) -> list[dict]:
    """Each old run's time over the new run's next to it in `order` (1st-2nd, 3rd-4th): the same load, near enough."""
    out = []
    for k in range(0, len(order) - 1, 2):
        pair = {order[k]: runs[k], order[k + 1]: runs[k + 1]}
        if len(pair) == 2:
            out.append({c: pair["old"]["seconds"][c] / pair["new"]["seconds"][c] for c in ("wall", "cpu")})
    return out


def _same(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = (load_file(str(d / "adapter_model.safetensors")) for d in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}-dpo.json")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--order", default="old,new,new,old")
    parser.add_argument("--pairs-file", help="reuse (or write) the generated pairs here (JSON)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); on a machine "
                        "others load, fewer threads than cores run steadier (docs/training.md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    clock = time.perf_counter()
    backend, members, tok = _pool(args.model, 3)
    resolved = resolve_model(args.model)
    cached = Path(args.pairs_file) if args.pairs_file else None
    if cached and cached.exists():
        pairs = json.loads(cached.read_text())[:args.pairs]
    else:
        pairs = make_pairs(backend, members, tok, args.pairs)
        if cached:
            cached.write_text(json.dumps(pairs))
    generated = time.perf_counter() - clock
    with tempfile.TemporaryDirectory() as work:
        training = compare(backend, members, resolved, pairs, args.order.split(","), Path(work))
    result = {"machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                          "python": sys.version.split()[0], "bf16_native": native_bf16(),
                          "load_average_at_start": load, "load_average_at_end": os.getloadavg()},
              "versions": package_versions(), "model": args.model, "date": time.strftime("%Y-%m-%d %H:%M"),
              "training": {k: v for k, v in vars(settings()).items()}, "lengths": lengths(tok, pairs, settings()),
              "dpo": training, "pairs_seconds": generated, "wall_s": time.perf_counter() - clock}
    write_result(result, args.out)
    return 0


def native_bf16() -> bool:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


if __name__ == "__main__":
    sys.exit(main())
