"""llama.cpp vs sparta's HF backend on the same GGUF, batch 1, same prompt and lengths (issue 4's question:
why does llama.cpp decode faster on this CPU, and would a llama.cpp backend pay off?).

    pip install llama-cpp-python==0.3.36   # into any venv: compiles llama.cpp (~15 min on 2 cores)
    LLAMA_PYTHON=/path/to/that/venv/bin/python .venv/bin/python -m bench.llamacpp

The llama.cpp side runs in that interpreter (a subprocess), the HF side here, one after the other. Greedy
decoding of `--new-tokens` tokens after a `--prompt-tokens` prompt; prefill and decode timed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from sparta.hf_compat import kv_cache, with_cache
from sparta.models import PACKAGED_MODELS, _packaged_gguf_path, resolve_model

LLAMA_SIDE = r"""
import json, sys, time
from llama_cpp import Llama
path, ids, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=2048, n_threads=int(sys.argv[4]), n_batch=512, verbose=False)
t = time.perf_counter(); llm.eval(ids); prefill = time.perf_counter() - t
t = time.perf_counter()
for _ in range(new):
    token = int(llm.scores[llm.n_tokens - 1].argmax())
    llm.eval([token])
decode = time.perf_counter() - t
print(json.dumps({"prefill_tokens_per_s": len(ids) / prefill, "decode_tokens_per_s": new / decode}))
"""


@torch.inference_mode()
def hf_side(source: str, ids: list[int], new: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    model(input_ids=x)  # warm-up
    clock = time.perf_counter()
    out = model(input_ids=x, use_cache=True)
    prefill = time.perf_counter() - clock
    cache, token = kv_cache(out), out.logits[:, -1:].argmax(-1)
    clock = time.perf_counter()
    for _ in range(new):  # the bare decode loop, without generate()'s bookkeeping
        out = model(input_ids=token, use_cache=True, **with_cache(cache))
        cache, token = kv_cache(out), out.logits[:, -1:].argmax(-1)
    decode = time.perf_counter() - clock
    clock = time.perf_counter()
    model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=new,
                   min_new_tokens=new)
    generate = time.perf_counter() - clock
    return {"prefill_tokens_per_s": len(ids) / prefill, "decode_tokens_per_s": new / decode,
            "generate_tokens_per_s": new / generate}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    python = os.environ.get("LLAMA_PYTHON")
    if not python:
        raise SystemExit("set LLAMA_PYTHON to a python that has llama-cpp-python installed (see the docstring)")
    gguf = _packaged_gguf_path("packaged:smollm2-135m-instruct", PACKAGED_MODELS["smollm2-135m-instruct"])
    resolved = resolve_model("packaged:smollm2-135m-instruct")
    from transformers import AutoTokenizer

    from bench.run import prompts_ids

    ids = prompts_ids(AutoTokenizer.from_pretrained(resolved.source), 1, args.prompt_tokens)[0]
    threads = torch.get_num_threads()
    llama = json.loads(subprocess.run([python, "-c", LLAMA_SIDE, str(gguf), json.dumps(ids), str(args.new_tokens),
                                       str(threads)], capture_output=True, text=True, check=True).stdout)
    result = {"gguf": gguf.name, "threads": threads, "prompt_tokens": len(ids), "new_tokens": args.new_tokens,
              "llama_cpp": llama, "hf_fp32": hf_side(resolved.source, ids, args.new_tokens)}
    result["decode_ratio_llama_over_hf"] = llama["decode_tokens_per_s"] / result["hf_fp32"]["decode_tokens_per_s"]
    result["prefill_ratio_llama_over_hf"] = llama["prefill_tokens_per_s"] / result["hf_fp32"]["prefill_tokens_per_s"]
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
