"""Speed and memory benchmark (issue 4), measured side by side in one process on the default offline model.

    .venv/bin/python -m bench.run [--model packaged:smollm2-135m-instruct] [--out bench/results/NAME.json]

Sections (each a ratio measured in the same run, never a timed assertion):
  ceilings      plain batched forward (prefill) tokens/s per batch size; plain `generate` tokens/s per batch size,
                sampling as combat does (T 0.7, top-p 0.95 by sparta's TopP); the base alone, on the backend's
                device and in its precision
  combat        sparta's generation (mixed-adapter batches across members) vs the plain-generate ceiling, and
                vs PEFT's own mixed-batch path with Hugging Face's top-p (sparta before its mixed_lora/TopP)
  authors       the same duels through the authors' pipeline shape and through sparta's arena (bench/authors.py)
  judging       logprob judge (judgments/s, tokens/s vs the prefill ceiling) and the authors' generative judging
                (sampling T=0.7, top_k 50, top_p 0.95, static batches of 24, regex parsing), their agreement
  dpo           one DPO epoch of one member on real pairs: seconds per pair by phase; fp32 vs bf16 weights
                (bf16 matmuls; the adapter's deltas, the residual stream, the output layer and log-softmax in fp32)
  memory        peak memory of pools of 2, 4 and 8 members on one base (separate processes): the GPU allocator's
                peak on CUDA, the resident set on the CPU (labelled)

Both sides of every ratio run on one device (the backend's: a GPU if there is one) and every clock is read after
the device finished (bench.measure).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.authors import JUDGE_TOKENS, authors_sample, side_by_side
from bench.measure import backend_device, model_device, plain_model, timed
from sparta.arena.judging import ANSWER_PREFIX, ScoreTokens, expected_score, judge_messages, parse_judgment
from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, HFTrainer, ModelStore, TopP
from sparta.chat import encode_chat
from sparta.config import LoraConfig, TrainingConfig
from sparta.models import resolve_model
from sparta.prompts import load_prompts
from sparta.rundir import package_versions
from sparta.training import train_dpo


def prompts_ids(tok, n: int, min_tokens: int) -> list[list[int]]:
    """n GSM8K questions as chat prompts, each padded with more questions to at least `min_tokens` tokens."""
    texts = [p.text for p in load_prompts("gsm8k")]
    out, i = [], 0
    while len(out) < n:
        text = texts[i % len(texts)]
        ids = encode_chat(tok, [("user", "{0}")], [text], max_tokens=4096).ids
        while len(ids) < min_tokens:
            i += 1
            text += "\n" + texts[i % len(texts)]
            ids = encode_chat(tok, [("user", "{0}")], [text], max_tokens=4096).ids
        out.append(ids[:min_tokens])
        i += 1
    return out


@torch.inference_mode()
def prefill_ceiling(model, tok, batch_sizes, length: int) -> dict:
    device = model_device(model)
    out = {}
    for b in batch_sizes:
        ids = torch.tensor(prompts_ids(tok, b, length), device=device)
        model(input_ids=ids, logits_to_keep=1)  # warm-up
        _, s = timed(lambda ids=ids: model(input_ids=ids, logits_to_keep=1), device)
        out[b] = b * length / s
    return out


@torch.inference_mode()
def generate_ceiling(model, tok, batch_sizes, prompt_len: int, new_tokens: int, temperature: float = 0.7,
                     top_p: float = 0.95) -> dict:
    """Plain `generate` tokens/s, every row forced to `new_tokens`, sampling with sparta's own processor as its
    backend does (temperature 0: greedy)."""
    from transformers import LogitsProcessorList

    device = model_device(model)
    sampling = dict(do_sample=True, top_k=0, logits_processor=LogitsProcessorList([TopP(temperature, top_p)])) \
        if temperature > 0 else dict(do_sample=False)
    out = {}
    for b in batch_sizes:
        ids = torch.tensor(prompts_ids(tok, b, prompt_len), device=device)
        torch.manual_seed(0)
        _, s = timed(lambda ids=ids: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                    max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                    pad_token_id=tok.pad_token_id, **sampling), device)
        out[b] = b * new_tokens / s
    return out


def combat_generation(backend, members, tok, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """tokens/s of sparta's generate on a batch mixing every member's adapter, and of the path it replaced."""
    prompts = prompts_ids(tok, batch, prompt_len)
    rows = [members[i % len(members)] for i in range(batch)]
    device = backend_device(backend, members[0])
    _, s = timed(lambda: backend.generate(rows, prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                          temperature=0.7, top_p=0.95, batch_size=batch, seed=0), device)
    _, before = timed(lambda: peft_generate(backend, rows, prompts, new_tokens), device)
    return {"sparta": batch * new_tokens / s, "peft_mixed_batch": batch * new_tokens / before}


@torch.inference_mode()
def peft_generate(backend, rows, prompts, new_tokens: int):
    """Session 1's path: PEFT's `adapter_names` mixed batch and Hugging Face's own top-p warper."""
    base = backend.bases[backend.base_of[rows[0]]]
    ids, mask = backend._left_pad(base, prompts)
    torch.manual_seed(0)
    return base.model.generate(input_ids=ids, attention_mask=mask, adapter_names=[backend.adapter(m)[1] for m in rows],
                               do_sample=True,
                               temperature=0.7, top_p=0.95, top_k=0, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, pad_token_id=base.tokenizer.pad_token_id)


def judging(backend, members, tok, n: int) -> dict:
    """The same (question, response) pairs judged both ways by the same judges."""
    questions = [p.text for p in load_prompts("gsm8k")[:n]]
    responses = [g.text or "" for g in backend.generate(
        [members[i % len(members)] for i in range(n)],
        [encode_chat(tok, [("user", "{0}")], [q], max_tokens=512).ids for q in questions],
        max_new_tokens=96, temperature=0.7, top_p=0.95, batch_size=16, seed=1)]
    judges = [members[(i + 1) % len(members)] for i in range(n)]
    st = ScoreTokens(tok)
    lp_prompts = [encode_chat(tok, judge_messages(), [q, r], max_tokens=1024, assistant_prefix=ANSWER_PREFIX).ids
                  + st.appended for q, r in zip(questions, responses)]
    device = backend_device(backend, judges[0])
    lps, lp_s = timed(lambda: backend.next_token_logprobs(judges, lp_prompts, st.candidates, last=st.positions,
                                                          batch_size=8), device)
    lp_scores = [expected_score(st.distribution(x)) for x in lps]
    gen_prompts = [encode_chat(tok, judge_messages(), [q, r], max_tokens=1024).ids
                   for q, r in zip(questions, responses)]

    base = backend.bases[backend.base_of[judges[0]]]
    torch.manual_seed(0)
    # their settings (sampling, 256 new tokens, static batches of 24), the same judges' adapters row by row
    adapters = [backend.adapter(j)[1] for j in judges]
    (texts, _), gen_s = timed(lambda: authors_sample(base.model, tok, gen_prompts, JUDGE_TOKENS, adapters), device)
    parsed = [parse_judgment(t) for t in texts]
    both = [(a, b) for a, b in zip(lp_scores, parsed) if b is not None]
    tokens = sum(len(p) for p in lp_prompts)
    return {"n": n, "logprob": {"judgments_per_s": n / lp_s, "prompt_tokens_per_s": tokens / lp_s},
            "authors_generate": {"judgments_per_s": n / gen_s, "parsed": sum(p is not None for p in parsed) / n,
                                 "max_new_tokens": JUDGE_TOKENS},
            "speedup_judgments": (n / lp_s) / (n / gen_s),
            "agreement_pearson": _pearson(both) if len(both) > 2 else None, "parsed_pairs": len(both)}


def dpo(backend, members, tok, resolved, n_pairs: int, new_tokens: int) -> dict:
    """Pairs from two members' answers to the same GSM8K questions; the demo's DPO settings; one epoch in fp32 and
    in bf16 (weights in bf16, the output layer and log-softmax in fp32, the reference in the steps' layout)."""
    questions = [p.text for p in load_prompts("gsm8k")[100:100 + n_pairs]]
    enc = [encode_chat(tok, [("user", "{0}")], [q], max_tokens=512).ids for q in questions]
    answers = backend.generate([members[0]] * n_pairs + [members[1]] * n_pairs, enc + enc, max_new_tokens=new_tokens,
                               temperature=0.7, top_p=0.95, batch_size=16, seed=2)

    def turn(role, text):
        return [{"role": role, "content": text}]

    pairs = [{"prompt": turn("user", q), "chosen": turn("assistant", a.text), "rejected": turn("assistant", b.text)}
             for q, a, b in zip(questions, answers[:n_pairs], answers[n_pairs:]) if a.text and b.text]
    settings = TrainingConfig()
    out = {"pairs": len(pairs)}
    member = MemberModel(members[2], resolved, None)
    with tempfile.TemporaryDirectory() as start:  # both precisions train the same member from the same adapter
        with HFTrainer(LoraConfig(), 0, backend.store).slot(member) as slot:
            slot.save(Path(start) / "adapter")
        member = MemberModel(members[2], resolved, Path(start) / "adapter")
        # one device for both precisions: the backend's
        for label, store in (("fp32", backend.store), ("bf16", ModelStore(backend.store.device, dtype="bfloat16"))):
            with HFTrainer(LoraConfig(), 0, store).slot(member) as slot:
                r, s = timed(lambda: train_dpo(slot, members[2], pairs, settings, seed=0),
                             slot.device)
            out[label] = {"s_per_pair": s / len(pairs), "seconds": r["seconds"], "loss_first": r["loss_first"],
                          "loss_after": r["after"]["loss"], "reward_accuracy_after": r["after"]["reward_accuracy"],
                          "reward_margin_after": r["after"]["reward_margin"]}
    for label in ("bf16",):
        out[label]["speedup_over_fp32"] = out["fp32"]["s_per_pair"] / out[label]["s_per_pair"]
        out[label]["minus_fp32"] = {k: out[label][k] - out["fp32"][k] for k in ("loss_first", "loss_after",
                                                                                "reward_accuracy_after")}
    return out


def device_name(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {_cpu_model()}"


def main_peak(device) -> dict:
    """This process's peak memory over its whole life, labelled: the GPU allocator's on CUDA, else the resident set."""
    if torch.device(device).type == "cuda":
        return {"mb": torch.cuda.max_memory_allocated(device) / 2**20, "source": "torch.cuda.max_memory_allocated"}
    return {"mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "source": "ru_maxrss"}


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _pearson(pairs):
    from sparta.report import pearson

    return pearson([a for a, _ in pairs], [b for _, b in pairs])


def memory(model: str, sizes=(2, 4, 8)) -> dict:
    """Memory of a fresh process holding a pool of k members on one base, after one judging forward pass: on a GPU
    the allocator's peak (the weights and adapters live there, not in the resident set), on the CPU its resident
    set (VmRSS; not ru_maxrss: a child started by fork+exec reports at least its parent's peak)."""
    steady, source = {}, None
    for k in sizes:
        code = (f"from bench.run import _pool_memory; print(_pool_memory({model!r}, {k}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        mb, source = json.loads(out.strip().splitlines()[-1])
        steady[k] = mb
    per_member = (steady[sizes[-1]] - steady[sizes[0]]) / (sizes[-1] - sizes[0])
    return {"mb": steady, "source": source, "mb_per_extra_member": per_member}


def _pool_memory(model: str, k: int) -> str:
    be, m, tok = _pool(model, k)
    ids = [tok("hello world")["input_ids"]] * len(m)
    be.next_token_logprobs(m, ids, [1, 2], last=1, batch_size=8)
    if backend_device(be, m[0]).type == "cuda":
        return json.dumps([torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"])
    rss = next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]
    return json.dumps([int(rss) / 1024, "VmRSS"])


def _pool(model: str, k: int):
    resolved = resolve_model(model)
    members = [f"m{i}" for i in range(k)]
    backend = HFBackend([MemberModel(m, resolved, None) for m in members], LoraConfig(), seed=0)
    return backend, members, backend.tokenizer(members[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}.json")
    parser.add_argument("--judgments", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--duels", type=int, default=8, help="authors' shape vs sparta: duels (4 members)")
    parser.add_argument("--duel-tokens", type=int, default=96, help="max_new_tokens of those duels' responses")
    parser.add_argument("--dpo-pairs", type=int, default=8)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    resolved = resolve_model(args.model)
    backend, members, tok = _pool(args.model, 4)
    # the ceilings' model: the same base on the backend's device, in its precision
    plain = plain_model(resolved, backend.store.device, backend.store.dtype)
    prefill = prefill_ceiling(plain, tok, (1, 4, 8, 16), 256)
    gen = generate_ceiling(plain, tok, (8, 16), 128, args.new_tokens)
    del plain
    combat = {b: combat_generation(backend, members, tok, b, 128, args.new_tokens) for b in (8, 16)}
    judge = judging(backend, members, tok, args.judgments)
    with tempfile.TemporaryDirectory() as adapters:
        authors = side_by_side(backend, members, resolved, Path(adapters), args.duels, args.duel_tokens)
    training = dpo(backend, members, tok, resolved, args.dpo_pairs, args.duel_tokens)
    result = {
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "threads": torch.get_num_threads(),
                    "python": sys.version.split()[0], "device": device_name(backend.store.device),
                    "dtype": str(backend.store.dtype)},
        "versions": package_versions(), "model": args.model, "date": time.strftime("%Y-%m-%d %H:%M"),
        "ceilings": {"prefill_tokens_per_s": prefill, "generate_tokens_per_s": gen},
        "combat_generation": {"tokens_per_s": combat,
                              "ratio_to_generate_ceiling": {b: combat[b]["sparta"] / gen[b] for b in combat},
                              "speedup_over_peft_mixed_batch": {b: combat[b]["sparta"] / combat[b]["peft_mixed_batch"]
                                                                for b in combat}},
        "judging": judge,
        "logprob_judging_ratio_to_best_prefill": judge["logprob"]["prompt_tokens_per_s"] / max(prefill.values()),
        "authors_shape": authors,
        "dpo": training,
        "memory": memory(args.model),
    }
    result["wall_s"] = time.perf_counter() - start
    result["peak_memory_main"] = main_peak(backend.store.device)
    write_result(result, args.out)
    return 0


def write_result(result: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
