"""Backends and precision, side by side in one run (issue 8):

    .venv/bin/python -m bench.backends [--out bench/results/NAME.json] [--skip-vllm]

  vllm_vs_hf   the same pool (the base and two adapters) on the HF backend and on a vLLM server (.venv-vllm),
               fp32 both: combat generation (sampling, every row forced to the same length, adapters mixed in one
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

from bench.run import _cpu_model, dpo, prompts_ids, timed, write_result
from sparta.arena.judging import ANSWER_PREFIX, ScoreTokens, judge_messages
from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, HFTrainer, LoraShape, ModelStore
from sparta.chat import encode_chat
from sparta.config import HTTPConfig, ModelConfig, VLLMConfig
from sparta.models import resolve_model
from sparta.prompts import load_prompts
from sparta.rundir import package_versions


def adapters(resolved, root: Path) -> dict[str, Path]:
    """Adapters x and y with random B (scale 0.1; 0.02 left greedy tokens unchanged): they change the outputs,
    as trained experts do."""
    trainer = HFTrainer(LoraShape(dropout=0.0), 0, ModelStore("cpu"))
    out = {}
    for k, name in enumerate(("x", "y")):
        with trainer.slot(MemberModel(name, resolved, None)) as slot:
            g = torch.Generator().manual_seed(k)
            with torch.no_grad():
                for n, p in slot.model.named_parameters():
                    if "lora_B" in n and any(p is q for q in slot.parameters()):
                        p.copy_(0.1 * torch.randn(p.shape, generator=g))
            slot.save(root / name)
        out[name] = root / name
    return out


def throughput(backend, members, tok, n_gen: int, new_tokens: int, n_judge: int) -> dict:
    prompts = prompts_ids(tok, n_gen, 128)
    rows = [members[i % len(members)] for i in range(n_gen)]
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.7, top_p=0.95, batch_size=n_gen,
              seed=0)
    backend.generate(rows[:2], prompts[:2], **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    out, gen_s = timed(lambda: backend.generate(rows, prompts, **kw))
    st = ScoreTokens(tok)
    questions = [p.text for p in load_prompts("gsm8k")[:n_judge]]
    judge_prompts = [encode_chat(tok, judge_messages(), [q, "Let me think. The answer is 12."], max_tokens=1024,
                                 assistant_prefix=ANSWER_PREFIX).ids + st.appended for q in questions]
    judges = [members[i % len(members)] for i in range(n_judge)]
    _, judge_s = timed(lambda: backend.next_token_logprobs(judges, judge_prompts, st.candidates, last=st.positions,
                                                           batch_size=16))
    return {"generate_tokens_per_s": sum(g.n_tokens for g in out) / gen_s, "generate_s": gen_s,
            "failed": sum(g.text is None for g in out), "judgments_per_s": n_judge / judge_s, "judge_s": judge_s}


def vllm_vs_hf(resolved, root: Path, n_gen: int, new_tokens: int, n_judge: int) -> dict:
    from sparta.backends.vllm import VLLMBackend

    ad = adapters(resolved, root)
    members = [MemberModel("plain", resolved, None), MemberModel("x", resolved, ad["x"]),
               MemberModel("y", resolved, ad["y"])]
    names = [m.name for m in members]
    hf = HFBackend(members, LoraShape(), 0, store=ModelStore("cpu", dtype="float32"))
    result = {"hf": throughput(hf, names, hf.tokenizer("x"), n_gen, new_tokens, n_judge)}
    del hf
    clock = time.perf_counter()
    vllm = VLLMBackend(members, VLLMConfig(python=".venv-vllm/bin/python", max_model_len=2048, max_loras=2,
                                           max_lora_rank=8, extra_args=("--max-num-seqs", str(n_gen))),
                       HTTPConfig(max_concurrency=n_gen), ModelConfig(dtype="float32"), root / "vllm.log")
    try:
        result["vllm_startup_s"] = time.perf_counter() - clock
        result["vllm"] = throughput(vllm, names, vllm.tokenizer("x"), n_gen, new_tokens, n_judge)
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
    args = parser.parse_args(argv)
    start = time.perf_counter()
    resolved = resolve_model(args.model)
    result = {"machine": {"cpu": _cpu_model(), "threads": torch.get_num_threads(), "python": sys.version.split()[0]},
              "versions": package_versions(), "model": args.model, "date": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory() as root:
        if not args.skip_vllm:
            result["vllm_vs_hf"] = vllm_vs_hf(resolved, Path(root), args.gen, args.new_tokens, args.judgments)
        members = ["w", "x", "y", "z"]
        backend = HFBackend([MemberModel(m, resolved, None) for m in members], LoraShape(), 0)
        result["dpo"] = dpo(backend, members, backend.tokenizer("w"), resolved, args.dpo_pairs, 96)
    result["wall_s"] = time.perf_counter() - start
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
