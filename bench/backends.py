"""Backends and precision, side by side in one run (issue 8):

    .venv/bin/python -m bench.backends [--out bench/results/NAME.json] [--skip-vllm]

  vllm_vs_hf   the same pool (the base and two adapters) on the HF backend and on a vLLM server (.venv-vllm),
               fp32 both, on one device (a GPU if there is one: the server uses it, so the HF side does too):
               combat generation (sampling, every row forced to the same length, adapters mixed in one
               call) in tokens/s, and logprob judging in judgments/s
  dpo          one DPO epoch of one member on the same pairs from the same adapter, fp32 vs bf16 (bf16 weights,
               the output layer and log-softmax in fp32, the reference computed in the steps' own micro-batches):
               loss and reward accuracy after the epoch, seconds per pair
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.measure import timed
from bench.run import _cpu_model, device_name, dpo, prompts_ids, write_result
from sparta.arena.judging import ANSWER_PREFIX, ScoreTokens, judge_messages
from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, HFTrainer, LoraShape, ModelStore
from sparta.chat import encode_chat
from sparta.config import HTTPConfig, ModelConfig, VLLMConfig
from sparta.models import resolve_model
from sparta.prompts import load_prompts
from sparta.rundir import package_versions


def randomise_lora_b(model, adapter: str, seed: int, scale: float = 0.1) -> int:
    """Give `adapter`'s B matrices (zero in a fresh LoRA: the adapter is then the identity) random values, scale x
    N(0, 1), drawn on the CPU from `seed` (the same on every device). Scale 0.1: 0.02 left a 135M model's greedy
    tokens unchanged. Returns how many matrices changed."""
    g = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n and n.split(".lora_B.")[1].split(".")[0] == adapter:
                p.copy_(scale * torch.randn(p.shape, generator=g))
                changed += 1
    return changed


def adapters(resolved, root: Path, store: ModelStore | None = None, names=("x", "y")) -> dict[str, Path]:
    """Adapters with random B, written to root/NAME: they change the outputs, as trained experts do."""
    trainer = HFTrainer(LoraShape(dropout=0.0), 0, store or ModelStore())
    out = {}
    for k, name in enumerate(names):
        with trainer.slot(MemberModel(name, resolved, None)) as slot:
            randomise_lora_b(slot.model, slot.adapter, seed=k)
            slot.save(root / name)
        out[name] = root / name
    return out


def throughput(backend, members, tok, n_gen: int, new_tokens: int, n_judge: int, device) -> dict:
    """`device`: where this process runs the backend's work (a server's replies arrive finished: "cpu")."""
    prompts = prompts_ids(tok, n_gen, 128)
    rows = [members[i % len(members)] for i in range(n_gen)]
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.7, top_p=0.95, batch_size=n_gen,
              seed=0)
    backend.generate(rows[:2], prompts[:2], **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    out, gen_s = timed(lambda: backend.generate(rows, prompts, **kw), device)
    st = ScoreTokens(tok)
    questions = [p.text for p in load_prompts("gsm8k")[:n_judge]]
    judge_prompts = [encode_chat(tok, judge_messages(), [q, "Let me think. The answer is 12."], max_tokens=1024,
                                 assistant_prefix=ANSWER_PREFIX).ids + st.appended for q in questions]
    judges = [members[i % len(members)] for i in range(n_judge)]
    _, judge_s = timed(lambda: backend.next_token_logprobs(judges, judge_prompts, st.candidates, last=st.positions,
                                                           batch_size=16), device)
    return {"generate_tokens_per_s": sum(g.n_tokens for g in out) / gen_s, "generate_s": gen_s,
            "failed": sum(g.text is None for g in out), "judgments_per_s": n_judge / judge_s, "judge_s": judge_s}


def vllm_vs_hf(resolved, root: Path, n_gen: int, new_tokens: int, n_judge: int, device: str) -> dict:
    from sparta.backends.vllm import VLLMBackend

    store = ModelStore(device, dtype="float32")  # the server's device and precision
    ad = adapters(resolved, root, store)
    members = [MemberModel("plain", resolved, None), MemberModel("x", resolved, ad["x"]),
               MemberModel("y", resolved, ad["y"])]
    names = [m.name for m in members]
    hf = HFBackend(members, LoraShape(), 0, store=store)
    result = {"hf": throughput(hf, names, hf.tokenizer("x"), n_gen, new_tokens, n_judge, store.device)}
    del hf, store
    clock = time.perf_counter()
    vllm = VLLMBackend(members, VLLMConfig(python=".venv-vllm/bin/python", max_model_len=2048, max_loras=2,
                                           max_lora_rank=8, extra_args=("--max-num-seqs", str(n_gen))),
                       HTTPConfig(max_concurrency=n_gen), ModelConfig(dtype="float32"), root / "vllm.log")
    try:
        result["vllm_startup_s"] = time.perf_counter() - clock
        result["vllm"] = throughput(vllm, names, vllm.tokenizer("x"), n_gen, new_tokens, n_judge, "cpu")
    finally:
        vllm.close()
    result["vllm_over_hf"] = {k: result["vllm"][k] / result["hf"][k] for k in ("generate_tokens_per_s",
                                                                               "judgments_per_s")}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}-backends.json")
    parser.add_argument("--gen", type=int, default=16, help="combat rows (3 members mixed)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--judgments", type=int, default=24)
    parser.add_argument("--dpo-pairs", type=int, default=16)
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the HF side runs; vLLM's CPU build runs on the CPU, its CUDA build on the GPU")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    resolved = resolve_model(args.model)
    result = {"machine": {"cpu": _cpu_model(), "threads": torch.get_num_threads(), "python": sys.version.split()[0],
                          "device": device_name(args.device)},
              "versions": package_versions(), "model": args.model, "date": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory() as root:
        if not args.skip_vllm:
            result["vllm_vs_hf"] = vllm_vs_hf(resolved, Path(root), args.gen, args.new_tokens, args.judgments,
                                              args.device)
        members = ["w", "x", "y", "z"]
        backend = HFBackend([MemberModel(m, resolved, None) for m in members], LoraShape(), 0,
                            store=ModelStore(args.device))
        result["dpo"] = dpo(backend, members, backend.tokenizer("w"), resolved, args.dpo_pairs, 96)
    result["wall_s"] = time.perf_counter() - start
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
