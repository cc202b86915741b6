"""How often does a judge prefer the right answer? Pointwise (logprob, generate) against pairwise judging (issue 18 §2).

    .venv/bin/python -m bench.judge_agreement [--n 40] [--out bench/results/NAME.json]

Each item is a question with a gold answer and a wrong one, judged as a SPARTA duel would be (sparta.arena.judges,
the judge being the base model: a fresh adapter):
- GSM8K (official test set): the reference solution against the same solution with its final number changed;
- MATH (math_easy): the worked solution against the worked solution of the next problem.
Agreement: the share of items where the judge strictly prefers the gold answer (pointwise: a higher score;
pairwise: P(gold better) > ½ from both orders). Ties, and generate mode's unreadable judgments, count as
disagreement and are reported. 95% Wilson intervals. Cost: seconds per duel judged (pointwise: two judgments, one
per response; pairwise: one verdict, two forward passes) on this machine, the model loaded before timing;
generate mode writes up to judge.max_new_tokens (32, the default) tokens, greedily.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sparta.arena.judges import JudgeAsk, PairAsk, judge_asks, judge_pairs
from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, LoraShape, ModelStore
from sparta.config import JudgeConfig
from sparta.models import resolve_model
from sparta.tasks.catalog import get_task
from sparta.tasks.common import DATA, _read_jsonl

from .run import _cpu_model

JUDGE = "judge"
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: not part of a written solution


@dataclass(frozen=True)
class Item:
    task: str
    question: str
    gold: str
    wrong: str


def corrupt_final_number(solution: str, offset: int) -> tuple[str, str]:
    """A GSM8K solution (its '#### N' line) as written prose, and the same with N moved by `offset` (≠ 0)."""
    match = _FINAL.search(solution)
    if match is None or offset == 0:
        raise ValueError(f"corrupt_final_number: no final '#### N' line or a zero offset: {solution[-60:]!r}")
    number = float(match.group(1).replace(",", ""))
    body = _CALCULATOR.sub("", solution[:match.start()]).rstrip()
    return f"{body}\nThe answer is {_spell(number)}.", f"{body}\nThe answer is {_spell(number + offset)}."


def _spell(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def gsm8k_items(n: int) -> list[Item]:
    rows = _read_jsonl(DATA / "gsm8k/test.jsonl")[:n]
    out = []
    for i, row in enumerate(rows):
        gold, wrong = corrupt_final_number(row["answer"], 1 + i % 9)
        out.append(Item("gsm8k", row["question"], gold, wrong))
    return out


def math_items(n: int) -> list[Item]:
    task = get_task("math_easy")
    solutions = task.worked_references()
    prompts = [p for p in task.combat_prompts() if p.id in solutions][:n]
    return [Item("math", p.text, solutions[p.id], solutions[prompts[(i + 1) % len(prompts)].id])
            for i, p in enumerate(prompts)]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        raise ValueError("wilson: no trials")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)  # 0/n and n/n touch the bound: no rounding past it


def agreement(margins: list[float | None]) -> dict:
    """margins: per item, how far the judge favours gold (> 0 agrees), 0 for a tie, None if unreadable."""
    agree = sum(m is not None and m > 0 for m in margins)
    return {"items": len(margins), "agree": agree, "rate": agree / len(margins),
            "wilson95": wilson(agree, len(margins)), "ties": sum(m == 0 for m in margins),
            "unreadable": sum(m is None for m in margins)}


def pointwise(backend, items: list[Item], config: JudgeConfig) -> tuple[list[float | None], float]:
    """Score margins gold − wrong and seconds per duel."""
    asks = [JudgeAsk(JUDGE, it.question, text, i, side) for i, it in enumerate(items)
            for side, text in (("a", it.gold), ("b", it.wrong))]
    clock = time.perf_counter()
    judgments = judge_asks(backend, asks, config, seed=0)
    seconds = time.perf_counter() - clock
    margins = []
    for gold, wrong in zip(judgments[0::2], judgments[1::2]):
        readable = gold.status == "ok" and wrong.status == "ok"
        margins.append(gold.score - wrong.score if readable else None)
    return margins, seconds / len(items)


def pairwise(backend, items: list[Item], config: JudgeConfig) -> tuple[list[float | None], list[float], float]:
    """P(gold better) − ½ margins, position biases and seconds per duel."""
    clock = time.perf_counter()
    verdicts = judge_pairs(backend, [PairAsk(JUDGE, it.question, it.gold, it.wrong) for it in items], config)
    seconds = time.perf_counter() - clock
    raws = [json.loads(a.raw) if a.status == "ok" else None for a, _ in verdicts]
    margins = [r["p_a_better"] - 0.5 if r else None for r in raws]
    return margins, [r["position_bias"] for r in raws if r], seconds / len(items)


def evaluate(backend, items: list[Item], generate_tokens: int = JudgeConfig.max_new_tokens) -> dict:
    pointwise(backend, items[:1], JudgeConfig())  # load the model before any clock starts
    out = {}
    for mode in ("logprob", "generate", "pairwise"):
        config = JudgeConfig(mode, generate_tokens, 0.0, 8, 1024)
        if mode == "pairwise":
            margins, biases, seconds = pairwise(backend, items, config)
            extra = {"position_bias_mean": sum(biases) / len(biases),
                     "position_bias_mean_abs": sum(map(abs, biases)) / len(biases)}
        else:
            (margins, seconds), extra = pointwise(backend, items, config), {}
        out[mode] = {"agreement": agreement(margins), "seconds_per_duel": seconds, **extra}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="packaged:smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=40, help="items per task")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    resolved = resolve_model(args.model)
    backend = HFBackend([MemberModel(JUDGE, resolved, None)], LoraShape(), seed=0, store=ModelStore("cpu"))
    tasks = {"gsm8k": gsm8k_items(args.n), "math": math_items(args.n)}
    out = {"cpu": _cpu_model(), "threads": torch.get_num_threads(), "model": args.model, "torch": torch.__version__,
           "items_per_task": args.n, "date": time.strftime("%Y-%m-%d %H:%M"),
           "tasks": {name: evaluate(backend, items) for name, items in tasks.items()}}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
