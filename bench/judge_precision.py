"""Does a bf16 output layer move the logprob judge's scores? (issue 15 §2: judging read bf16 logits on a bf16
base, while DPO applies the output layer in fp32.)

    .venv/bin/python -m bench.judge_precision [--n 48] [--out bench/results/NAME.json]

The same judges (SmolLM2-135M with two adapters whose B matrices are random) score the same (question, response)
items three ways: an fp32 model; a bf16 model as the backend scores now (its output layer in fp32 on the bf16
hidden states); and the same bf16 model with the bf16 output layer it scored with before. Responses are MATH
worked solutions and the same solutions with another problem's solution swapped in, so the scores spread.
Reported: mean and max |difference| of the expected score (1-10) against fp32, and how often the sign of a
duel's score gap (item i vs item i+1) flips. bf16 matmuls on a CPU accumulate in fp32 as on a GPU, so the
rounding measured here is the GPU's. Slow on a CPU without native bf16 (~1 minute per item on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sparta.arena.judging import ANSWER_PREFIX, ScoreTokens, expected_score, judge_messages
from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, LoraShape, ModelStore
from sparta.chat import encode_chat
from sparta.models import resolve_model
from sparta.tasks.catalog import get_task

from .backends import adapters
from .run import _cpu_model


def items(n: int) -> list[tuple[str, str]]:
    task = get_task("math_easy")
    prompts, solutions = task.combat_prompts()[:n], task.worked_references()
    right = [(p.text, solutions[p.id]) for p in prompts[: n // 2]]
    wrong = [(p.text, solutions[prompts[(i + 1) % len(prompts)].id]) for i, p in enumerate(prompts[n // 2:])]
    return right + wrong


def scores(backend, judges: list[str], prompts: list[list[int]], st: ScoreTokens) -> list[float]:
    lps = backend.next_token_logprobs(judges, prompts, st.candidates, last=st.positions, batch_size=8)
    return [expected_score(st.distribution(x)) for x in lps]


def compare(a: list[float], b: list[float]) -> dict:
    diff = [abs(x - y) for x, y in zip(a, b)]
    flips = sum((a[i] - a[i + 1]) * (b[i] - b[i + 1]) < 0 for i in range(0, len(a) - 1, 2))
    return {"mean_abs": sum(diff) / len(diff), "max_abs": max(diff), "duel_sign_flips": flips,
            "duels": len(a) // 2}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="packaged:smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        resolved = resolve_model(args.model)
        found = adapters(resolved, Path(tmp))
        members = [MemberModel(name, resolved, path) for name, path in found.items()]
        judged = items(args.n)
        results = {}
        for dtype in ("float32", "bfloat16"):
            backend = HFBackend(members, LoraShape(), seed=0, store=ModelStore("cpu", dtype=dtype))
            tok = backend.tokenizer(members[0].name)
            st = ScoreTokens(tok)
            prompts = [encode_chat(tok, judge_messages(), [q, r], max_tokens=1024, assistant_prefix=ANSWER_PREFIX).ids
                       + st.appended for q, r in judged]
            judges = [members[i % len(members)].name for i in range(len(prompts))]
            results[dtype] = scores(backend, judges, prompts, st)  # a bf16 base scores with an fp32 head
            if dtype == "bfloat16":
                base = backend.bases[resolved.fingerprint]
                base.fp32_head = False  # as the backend scored before: the bf16 output layer
                results["bfloat16, bf16 head"] = scores(backend, judges, prompts, st)
    out = {"cpu": _cpu_model(), "model": args.model, "items": len(judged), "torch": torch.__version__,
           "score_spread_fp32": max(results["float32"]) - min(results["float32"]),
           "bf16_head_vs_fp32": compare(results["bfloat16, bf16 head"], results["float32"]),
           "bf16_fp32_head_vs_fp32": compare(results["bfloat16"], results["float32"])}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
