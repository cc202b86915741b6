"""The offline GPU check (issue 15): what one GPU without network can tell about sparta, in one command.

    python -m bench.gpu_check --out DIR [--scale paper|small] [--budget-s S] [--parts tests,combat,...]

DIR/env.json comes first (device, versions, settings), then DIR/PART.json as each part finishes, so a run cut
off by a timeout still leaves what it measured; a part the remaining budget cannot afford is written as skipped,
with why, and a part that fails is written with its error (the next part still runs).

  tests    the tests of the HF backend, training and mixed LoRA, on this machine (pytest: counts, failures)
  combat   sparta's generation of one batch mixing every member's adapter (10 members, random B: a fresh LoRA is
           the identity) vs plain `generate` on the same weights with the adapters off: the same prompts,
           device, sampling (T 0.7, top-p 0.95) and forced lengths (random weights rarely stop); tokens/s, the
           ratio. And the mixed batch's log-probs against each member's alone (noise) and against the first
           member's (how far the adapters move them: the signal the noise must stay under)
  judging  logprob judging (next_token_logprobs, judges mixed) vs a plain forward of the same prompts in the same
           batches with the adapters off (the prefill ceiling): prompt tokens/s, the ratio
  dpo      one DPO epoch of one member: seconds per pair and peak memory, gradient checkpointing on and off, with
           --reserve x the GPU's memory held as a co-resident vLLM server holds it (paper.yaml: 0.5); a variant
           that runs out of memory is recorded as such, and then also measured without the reservation; and the
           fp32 output layer on a micro-batch's scored positions with TF32 allowed (sparta's choice on bf16 inputs)
           vs plain fp32 matmuls: seconds, and how far the logits differ
  run      one `sparta run` iteration (HF backend) on a random pool; the stage times of its metrics.json

Scales: paper = Qwen2.5-7B's shape in bf16 (combat, judging, dpo) and a 10-member Qwen2.5-0.5B pool (run), sized
to finish in about 5 minutes on one H100; small = Qwen2.5's architecture and vocabulary at a test's size, a minute
or two on a CPU (tests/test_gpu_check.py runs it). Models are `random:` specs (sparta.models): real shapes, random
weights, nothing downloaded. Times are wall seconds read after the device finished (bench.measure); memory is
torch.cuda's allocator peak on a GPU and the resident set on the CPU, each labelled.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.backends import randomise_lora_b
from bench.measure import peak_memory, synchronize, timed
from bench.run import device_name, generate_ceiling, prompts_ids
from sparta.arena.judging import ScoreTokens, expected_score
from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, HFTrainer, LoraShape, ModelStore
from sparta.config import TrainingConfig
from sparta.models import resolve_model
from sparta.precision import tf32_matmuls
from sparta.rundir import package_versions
from sparta.training import train_dpo

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
PARTS = ("tests", "combat", "judging", "dpo", "run")
# the tests whose code paths a GPU changes (the HF backend, mixed LoRA, training); they skip what needs vLLM,
# Ray, trl or datasets
GPU_TESTS = ("tests/test_backend_hf.py", "tests/test_mixed_lora.py", "tests/test_training.py")


@dataclass(frozen=True)
class Scale:
    model: str  # combat, judging, dpo: one process, one copy of the base
    run_model: str
    members: int
    gen_rows: int
    prompt_tokens: int
    new_tokens: int
    judge_rows: int
    judge_tokens: int
    judge_batch: int
    dpo_pairs: int
    dpo_prompt_tokens: int
    dpo_response_tokens: int
    dpo_micro_batch: int
    run_members: int
    run_overrides: tuple[str, ...]
    tests: tuple[str, ...]
    # about the most each part takes at this scale on its machine (paper: an H100; small: a shared 2-core CPU),
    # to skip a part that can no longer finish in the budget
    needs_s: dict = field(default_factory=dict)
    budget_s: float = 480


SCALES = {
    # paper.yaml's lengths where they fit the budget: 512-token prompts and responses in DPO (micro-batches of 4
    # pairs), judge prompts of ~1k tokens, combat rows of 256 + 128 tokens
    "paper": Scale(
        model="random:qwen2.5-7b", run_model="random:qwen2.5-0.5b", members=10,
        gen_rows=80, prompt_tokens=256, new_tokens=128, judge_rows=96, judge_tokens=1024, judge_batch=32,
        dpo_pairs=8, dpo_prompt_tokens=512, dpo_response_tokens=512, dpo_micro_batch=4, run_members=10,
        run_overrides=("model.dtype=bfloat16", "data.prompts_per_iteration=16", "arena.round_size=16", "arena.k=3",
                       "generation.max_new_tokens=128", "generation.batch_size=32", "judge.batch_size=32",
                       "training.lr=1e-6", "training.batch_size=16", "training.micro_batch_size=4"),
        tests=GPU_TESTS, needs_s={"tests": 90, "combat": 90, "judging": 45, "dpo": 90, "run": 150}, budget_s=480),
    # the same code paths at a CPU test's size (3 members: every step over the 152k vocabulary costs here)
    "small": Scale(
        model="random:qwen2.5-mini", run_model="random:qwen2.5-mini", members=3,
        gen_rows=6, prompt_tokens=24, new_tokens=3, judge_rows=6, judge_tokens=40, judge_batch=3,
        dpo_pairs=2, dpo_prompt_tokens=12, dpo_response_tokens=12, dpo_micro_batch=1, run_members=4,
        run_overrides=("data.prompts_per_iteration=2", "arena.round_size=2", "generation.max_new_tokens=4",
                       "generation.max_prompt_tokens=128", "judge.max_prompt_tokens=512", "training.max_length=256",
                       "threads=1"),
        tests=("tests/test_bench.py::test_matches_cycle_through_every_pair",),
        needs_s={"tests": 30, "combat": 20, "judging": 10, "dpo": 20, "run": 60}, budget_s=300),
}


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def write(out: Path, name: str, data: dict) -> None:
    """One part's JSON, written whole (temp file + rename): a reader never sees half of it."""
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, out / f"{name}.json")
    print(f"[gpu_check] {name}: {json.dumps(data, default=str)[:400]}", flush=True)


def environment(device: str, scale_name: str, scale: Scale, budget_s: float, reserve: float) -> dict:
    env = {"device": device_name(device), "device_type": torch.device(device).type,
           "versions": {**package_versions(), "accelerate": _version("accelerate")},
           "torch_cuda": torch.version.cuda, "python": sys.version.split()[0], "scale": scale_name,
           "settings": asdict(scale), "budget_s": budget_s, "reserve_fraction": reserve,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_threads": torch.get_num_threads()}
    if env["device_type"] == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(total_memory_gib=props.total_memory / GIB, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
    return env


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------------
# the pool that combat, judging and dpo share: one base on the device, every member's adapter on it


class Pool:
    def __init__(self, spec: str, members: int, device: str, cache: Path):
        self.device = torch.device(device)
        self.resolved = resolve_model(spec, cache)
        self.names = [f"m{i}" for i in range(members)]
        store = ModelStore(device, dtype="auto")  # bf16 on a GPU, fp32 on the CPU, as sparta runs
        self.backend, load_s = timed(lambda: HFBackend([MemberModel(n, self.resolved, None) for n in self.names],
                                                       LoraShape(), seed=0, store=store), device)
        for k, name in enumerate(self.names):  # fresh adapters are the identity: make each member its own
            model, adapter = self.backend.adapter(name)
            randomise_lora_b(model, adapter, seed=k)
        self.model, _ = self.backend.adapter(self.names[0])  # the PeftModel every member's adapter lives on
        self.tok = self.backend.tokenizer(self.names[0])
        self.setup = {"model": spec, "dtype": str(store.dtype), "members": members, "load_and_adapters_s": load_s}
        if self.device.type == "cuda":
            self.setup["resident_gib"] = torch.cuda.memory_allocated(device) / GIB


def combat(pool: Pool, sc: Scale) -> dict:
    rows = [pool.names[i % len(pool.names)] for i in range(sc.gen_rows)]
    prompts = prompts_ids(pool.tok, sc.gen_rows, sc.prompt_tokens)  # what generate_ceiling builds too
    kw = dict(temperature=0.7, top_p=0.95, batch_size=sc.gen_rows, seed=0)
    pool.backend.generate(rows[:2], prompts[:2], max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
    out, seconds = timed(lambda: pool.backend.generate(rows, prompts, max_new_tokens=sc.new_tokens,
                                                       min_new_tokens=sc.new_tokens, **kw), pool.device)
    made = sum(g.n_tokens for g in out)
    with pool.model.disable_adapter():  # the same weights without LoRA: the ceiling
        generate_ceiling(pool.model, pool.tok, (2,), sc.prompt_tokens, 2)  # warm-up
        plain = generate_ceiling(pool.model, pool.tok, (sc.gen_rows,), sc.prompt_tokens, sc.new_tokens)[sc.gen_rows]
    sparta = made / seconds
    return {"rows": sc.gen_rows, "members": len(pool.names), "prompt_tokens": sc.prompt_tokens,
            "new_tokens_per_row": sc.new_tokens, "setup": pool.setup,
            "sparta_mixed": {"seconds": seconds, "new_tokens": made, "tokens_per_s": sparta,
                             "empty_or_failed_rows": sum(g.text is None for g in out)},
            "plain_generate": {"tokens_per_s": plain, "how": "the same base, PEFT's adapters disabled, same sampling"},
            "ratio_to_plain": sparta / plain, "lora_check": lora_check(pool, rows, prompts)}


def lora_check(pool: Pool, rows: list[str], prompts: list[list[int]]) -> dict:
    """Mixed batch vs each member alone (the prompts have one length: no padding differs, only batch sizes)."""
    candidates = list(range(32))

    def logprobs(members, ids):
        return torch.tensor(pool.backend.next_token_logprobs(members, ids, candidates, last=1, batch_size=len(ids)))

    mixed = logprobs(rows, prompts)
    alone = torch.empty_like(mixed)
    for name in pool.names:
        index = [i for i, r in enumerate(rows) if r == name]
        alone[index] = logprobs([name] * len(index), [prompts[i] for i in index])
    first = logprobs([pool.names[0]] * len(rows), prompts)
    others = [i for i, r in enumerate(rows) if r != pool.names[0]]
    return {"mixed_vs_alone_max_abs": (mixed - alone).abs().max().item(),
            "mixed_vs_first_member_mean_abs": (mixed[others] - first[others]).abs().mean().item(),
            "finite": bool(torch.isfinite(mixed).all()), "candidates": len(candidates)}


def judging(pool: Pool, sc: Scale) -> dict:
    st = ScoreTokens(pool.tok)
    prompts = [p + st.appended for p in prompts_ids(pool.tok, sc.judge_rows, sc.judge_tokens)]
    judges = [pool.names[(i + 1) % len(pool.names)] for i in range(sc.judge_rows)]

    def judge(n):
        return pool.backend.next_token_logprobs(judges[:n], prompts[:n], st.candidates, last=st.positions,
                                                batch_size=sc.judge_batch)

    judge(2)  # warm-up
    out, seconds = timed(lambda: judge(sc.judge_rows), pool.device)
    tokens = sum(len(p) for p in prompts)
    with pool.model.disable_adapter():
        prefill(pool.model, prompts[:2], sc.judge_batch, pool.device)  # warm-up
        plain_s = prefill(pool.model, prompts, sc.judge_batch, pool.device)
    scores = [expected_score(st.distribution(x)) for x in out]
    return {"judgments": sc.judge_rows, "prompt_tokens": tokens, "batch_size": sc.judge_batch,
            "sparta_logprob": {"seconds": seconds, "prompt_tokens_per_s": tokens / seconds,
                               "judgments_per_s": sc.judge_rows / seconds},
            "plain_prefill": {"seconds": plain_s, "prompt_tokens_per_s": tokens / plain_s,
                              "how": "the same prompts and batches, PEFT's adapters disabled, logits_to_keep=1"},
            "ratio_to_prefill": plain_s / seconds,
            "scores_in_range": all(1 <= s <= 10 for s in scores) and all(map(math.isfinite, scores))}


@torch.inference_mode()
def prefill(model, prompts: list[list[int]], batch: int, device) -> float:
    """Seconds for a plain forward of every prompt (one length each batch), in batches of `batch`."""
    batches = [torch.tensor(prompts[i:i + batch], device=device) for i in range(0, len(prompts), batch)]

    def run():
        for ids in batches:
            model(input_ids=ids, logits_to_keep=1)

    return timed(run, device)[1]


def dpo(pool: Pool, sc: Scale, reserve: float) -> dict:
    pairs = random_pairs(pool.tok, sc.dpo_pairs, sc.dpo_prompt_tokens, sc.dpo_response_tokens)
    # one step over all the pairs; lr 1e-4, not the paper's 1e-6, so that the one step visibly moves the loss (the
    # speed does not depend on it); room for the chat template around the texts, so that nothing is cut
    settings = TrainingConfig(lr=1e-4, batch_size=sc.dpo_pairs, micro_batch_size=sc.dpo_micro_batch,
                              max_length=sc.dpo_prompt_tokens + sc.dpo_response_tokens + 64)
    prompt_tokens = sc.dpo_prompt_tokens + 32
    variants = [dpo_variant(pool, pairs, settings, prompt_tokens, checkpointing, reserve)
                for checkpointing in (True, False)]
    if variants[-1].get("out_of_memory") and variants[-1]["reserved_bytes"]:
        variants.append(dpo_variant(pool, pairs, settings, prompt_tokens, False, 0.0))
    head = pool.model.get_base_model().get_output_embeddings()
    return {"pairs": len(pairs), "prompt_tokens": sc.dpo_prompt_tokens, "response_tokens": sc.dpo_response_tokens,
            "micro_batch_pairs": sc.dpo_micro_batch, "setup": pool.setup, "variants": variants,
            "fp32_head": head_precision(head, 2 * sc.dpo_micro_batch * sc.dpo_response_tokens, pool.device)}


def head_precision(head, tokens: int, device) -> dict:
    """The fp32 output layer DPO applies to a micro-batch's scored positions (sparta.precision), forward and
    backward, with TF32 allowed (what sparta asks for on bf16 inputs) and with full fp32 matmuls: seconds, and the
    largest difference in the logits, relative to the largest logit (TF32 holds bf16 inputs exactly: only the
    order of fp32 sums should differ)."""
    hidden = torch.randn(tokens, head.in_features, device=device, dtype=head.weight.dtype, requires_grad=True)
    out = {"tokens": tokens, "input_dtype": str(hidden.dtype)}
    logits = {}
    for name, on in (("tf32", True), ("ieee", False)):
        def step(on=on):
            with tf32_matmuls(on), torch.autocast(hidden.device.type, enabled=False):
                y = torch.nn.functional.linear(hidden.float(), head.weight.float())
                y.logsumexp(-1).sum().backward()
            return y.detach()
        step()  # warm-up (cuBLAS heuristics, allocator)
        logits[name], out[f"{name}_s"] = timed(step, device)
    out["ieee_over_tf32"] = out["ieee_s"] / out["tf32_s"]
    out["max_abs_diff_over_max_abs"] = ((logits["tf32"] - logits["ieee"]).abs().max()
                                        / logits["ieee"].abs().max()).item()
    return out


def random_pairs(tok, n: int, prompt_tokens: int, response_tokens: int, seed: int = 0) -> list[dict]:
    """Preference pairs of random tokens, decoded (random: models' tokenizers give the same count back)."""
    rng = random.Random(seed)
    special = set(tok.all_special_ids)
    regular = [t for t in range(len(tok)) if t not in special]

    def text(length):
        return tok.decode([rng.choice(regular) for _ in range(length)])

    def turn(role, length):
        return [{"role": role, "content": text(length)}]

    return [{"prompt": turn("user", prompt_tokens), "chosen": turn("assistant", response_tokens),
             "rejected": turn("assistant", response_tokens)} for _ in range(n)]


def dpo_variant(pool: Pool, pairs: list[dict], settings: TrainingConfig, prompt_tokens: int, checkpointing: bool,
                reserve: float) -> dict:
    out = {"gradient_checkpointing": checkpointing, "reserved_fraction": reserve}
    held = None
    if pool.device.type == "cuda" and reserve > 0:  # what a vLLM server at gpu_memory_utilization=reserve holds
        total = torch.cuda.get_device_properties(pool.device).total_memory
        held = torch.empty(int(reserve * total), dtype=torch.uint8, device=pool.device)
    elif reserve > 0:
        out["reserve_note"] = "not a CUDA device: nothing reserved"
    out["reserved_bytes"] = held.numel() if held is not None else 0
    trainer = HFTrainer(LoraShape(), 0, pool.backend.store, gradient_checkpointing=checkpointing)
    member = MemberModel(pool.names[0], pool.resolved, None)
    try:
        with peak_memory(pool.device) as memory:
            with trainer.slot(member) as slot:
                metrics, seconds = timed(lambda: train_dpo(slot, member.name, pairs, settings, seed=0,
                                                           prompt_tokens=prompt_tokens), pool.device)
        out.update(seconds=seconds, s_per_pair=seconds / len(pairs), steps=metrics["steps"],
                   phases_s=metrics["seconds"], truncated=metrics["truncated"],
                   loss_first=metrics["loss_first"], loss_last=metrics["loss_last"],
                   loss_after=metrics["after"]["loss"])
    except torch.OutOfMemoryError as e:
        out.update(out_of_memory=True, error=str(e).splitlines()[0][:400])
    out["memory"] = {"source": memory["source"], "peak_gib": memory["peak_bytes"] / GIB,
                     "start_gib": memory["start_bytes"] / GIB,
                     "peak_above_start_gib": (memory["peak_bytes"] - memory["start_bytes"]) / GIB}
    del held
    _release(pool.device)
    return out


def _release(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# subprocess parts: the tests, and `sparta run`


def tests(sc: Scale, timeout: float, work: Path) -> dict:
    junit = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *sc.tests]
    proc, seconds = _subprocess(cmd, timeout)
    out = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "wall_s": seconds,
           "output_tail": (proc.stdout + proc.stderr)[-3000:]}
    if junit.exists():
        root = ET.parse(junit).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        out["counts"] = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        out["not_passed"] = [{"test": f"{case.get('classname')}::{case.get('name')}", "kind": child.tag,
                              "message": (child.get("message") or "")[:300]}
                             for case in root.iter("testcase") for child in case
                             if child.tag in ("failure", "error", "skipped")]
    return out


def run(sc: Scale, timeout: float, work: Path, cache: Path) -> dict:
    run_dir = work / "run"
    members = ", ".join(f"m{i}" for i in range(sc.run_members))
    overrides = [f"run_dir={run_dir}", f"cache_dir={cache}", "iterations=1", f"pool.base={sc.run_model}",
                 f"pool.members=[{members}]", "backend.kind=hf", *sc.run_overrides]
    cmd = [sys.executable, "-m", "sparta.cli", "run", str(ROOT / "sparta/configs/ablations/size_4.yaml"),
           *overrides]
    proc, seconds = _subprocess(cmd, timeout)
    out = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "wall_s": seconds}
    metrics_path = run_dir / "iter_01" / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        out.update({k: metrics.get(k) for k in ("timings_s", "pairs", "responses", "judgments", "peak_rss_mb")})
        out["dpo_seconds_by_member"] = {m: t.get("seconds") for m, t in (metrics.get("training") or {}).items()}
    if proc.returncode != 0 or not metrics_path.exists():
        out["output_tail"] = (proc.stdout + proc.stderr)[-3000:]
    return out


def _subprocess(cmd: list[str], timeout: float):
    clock = time.perf_counter()
    try:
        # no network there: the hub must fail at once rather than wait
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired as e:
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        proc = subprocess.CompletedProcess(cmd, returncode=-9, stdout=text(e.stdout),
                                           stderr=text(e.stderr) + f"\n[gpu_check] killed after {timeout:.0f} s")
    return proc, time.perf_counter() - clock


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for env.json and one PART.json per part")
    parser.add_argument("--scale", choices=sorted(SCALES), default="paper")
    parser.add_argument("--budget-s", type=float, help="wall budget for all parts (default: the scale's)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--tests", nargs="*", help="pytest arguments for the tests part (default: the scale's)")
    parser.add_argument("--model", help="model spec for combat, judging and dpo (default: the scale's random one)")
    parser.add_argument("--run-model", help="model spec of the run's pool (default: the scale's random one)")
    parser.add_argument("--reserve", type=float, default=0.5,
                        help="fraction of the GPU's memory held during DPO, as a vLLM server at that "
                             "gpu_memory_utilization would (paper.yaml: 0.5); 0: none")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", help="model cache (config + tokenizer of the random models); default: a temp dir")
    args = parser.parse_args(argv)
    sc = SCALES[args.scale]
    changes = {"tests": tuple(args.tests or ()), "model": args.model, "run_model": args.run_model}
    sc = Scale(**{**asdict(sc), **{k: v for k, v in changes.items() if v}})
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    budget = Budget(args.budget_s or sc.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sparta-gpu-check-"))
    cache = Path(args.cache) if args.cache else work / "cache"
    write(out, "env", environment(args.device, args.scale, sc, budget.seconds, args.reserve))
    pool = None
    try:
        for part in parts:
            needs = sc.needs_s[part]
            if budget.left() < needs:
                write(out, part, {"skipped": f"budget: {budget.left():.0f} s left of {budget.seconds:.0f}, "
                                             f"this part needs about {needs} s"})
                continue
            clock = time.perf_counter()
            try:
                if part in ("combat", "judging", "dpo"):
                    pool = pool or Pool(sc.model, sc.members, args.device, cache)
                    result = dpo(pool, sc, args.reserve) if part == "dpo" else \
                        {"combat": combat, "judging": judging}[part](pool, sc)
                else:
                    if pool is not None:  # give the GPU to the subprocess
                        pool = None
                        _release(args.device)
                    timeout = max(10.0, budget.left() - 5)
                    result = tests(sc, timeout, work) if part == "tests" else run(sc, timeout, work, cache)
            except Exception as e:  # record it, go on: the next part may still tell something
                result = {"error": f"{type(e).__name__}: {e}"[:1000], "traceback": traceback.format_exc()[-3000:]}
            result["part_wall_s"] = time.perf_counter() - clock
            result["device"] = device_name(args.device)
            write(out, part, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
