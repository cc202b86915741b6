"""Whole SPARTA iterations on the demo settings, timed by stage, as the prompts and the pool grow (issue 4).

    .venv/bin/python -m bench.iteration [--grid 4x8,4x16,4x32,8x8] [--out bench/results/NAME.json]

Each grid point (members x prompts) is one fresh run of one iteration of `sparta/configs/ablations/size_4.yaml` (the
demo before it was shortened, kept so that timings compare across sessions): the demo's
experts (8 members = each of the 4 experts twice; cached after the first build), its generation, judging and
DPO settings. The first point also evaluates the pool on `--eval-task` (test split, `--eval-limit` items) to
time that stage. Stage times come from the run's own iter_01/metrics.json, so they are what `sparta run`
measures; the per-unit rates (seconds per response, per judgment, per member-pair of DPO) state the law.
Slow by nature (about 20 minutes here): one 32-prompt demo iteration alone takes ~8 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sparta.config import load_config
from sparta.pipeline import Pipeline
from sparta.records import read_json
from sparta.rundir import package_versions

EXPERTS = ["self_instruct", "math", "com2", "normad"]


def pool(m: int) -> str:
    members = [f"{{name: {EXPERTS[i % 4]}{i // 4 or ''}, expert: {EXPERTS[i % 4]}}}" for i in range(m)]
    return "[" + ", ".join(members) + "]"


def one_iteration(root: Path, m: int, n: int, eval_task: str | None, eval_limit: int, extra: tuple = ()) -> dict:
    """One fresh run of one iteration; `extra` overrides go last (tests shrink the demo with them)."""
    overrides = [f"run_dir={root / f'm{m}-n{n}'}", "iterations=1", f"data.prompts_per_iteration={n}",
                 f"pool.members={pool(m)}"]
    if eval_task:
        overrides += [f"eval.tasks=[{eval_task}]", "eval.splits=[test]", f"eval.limit={eval_limit}"]
    config = load_config(Path(__file__).parents[1] / "sparta/configs/ablations/size_4.yaml", overrides + list(extra))
    clock = time.perf_counter()
    Pipeline(config).run_all()
    wall = time.perf_counter() - clock
    run = Path(config.run_dir)
    metrics = read_json(run / "iter_01" / "metrics.json")
    t = metrics["timings_s"]
    responses = 2 * n
    judgments = metrics["judgments"]["total"]
    pairs = metrics["pairs"]
    out = {"members": m, "prompts": n, "pairs": pairs, "judgments": judgments, "wall_s": wall, "stages_s": t,
           "rates": {"generate_s_per_response": t["generate"] / responses,
                     "judge_s_per_judgment": t["judge"] / judgments,
                     "dpo_s_per_member_pair": t["dpo"] / (m * pairs) if pairs else None}}
    if eval_task:
        evals = {i: read_json(run / "eval" / f"iter_{i:02d}" / f"{eval_task}-test.json") for i in (0, 1)}
        seconds = {i: sum(r["wall_s"] for r in e["results"].values()) for i, e in evals.items()}
        out["eval"] = {"task": eval_task, "items": eval_limit, "seconds_per_pass": seconds,
                       "s_per_member_item": seconds[1] / (m * eval_limit)}
    out["other_s"] = wall - sum(t.values()) - sum(out.get("eval", {}).get("seconds_per_pass", {}).values())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="4x8,4x16,4x32,8x8", help="members x prompts, comma-separated")
    parser.add_argument("--eval-task", default="medqa")
    parser.add_argument("--eval-limit", type=int, default=10)
    parser.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}-iteration.json")
    args = parser.parse_args(argv)
    grid = [tuple(int(x) for x in point.split("x")) for point in args.grid.split(",")]
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (m, n) in enumerate(grid):
            points.append(one_iteration(Path(tmp), m, n, args.eval_task if i == 0 else None, args.eval_limit))
            print(json.dumps(points[-1]), flush=True)
    result = {"versions": package_versions(), "date": time.strftime("%Y-%m-%d %H:%M"), "points": points}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
