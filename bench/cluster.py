"""Ray's overhead per iteration, and the per-stage rates the scaling law rests on (issue 9).

    .venv/bin/python -m bench.cluster [--members 4] [--prompts 8] [--out bench/results/NAME.json]

Two demo-sized iterations (`sparta/configs/ablations/size_4.yaml`, the demo before it was shortened: SmolLM2-135M
experts) run fresh in each arm, on this machine:

- local-1t: runtime=local, 1 torch thread;
- ray-1w:   runtime=ray, 1 worker of 1 CPU: the same work in one Ray actor, so the difference is Ray's overhead;
- ray-2w:   runtime=ray, 2 workers of 1 CPU each: generation and judging in 2 shards, 2 members trained at once;
- local-2t: runtime=local, 2 torch threads (what a plain run on this machine does).

Stage times are each run's own metrics.json. Iteration 2 is the steady state (workers up, models loaded);
`startup_s` is what the run spent outside its stages (Ray cluster, workers, model loads). The Ray arms must
reproduce local-1t's combat logs and adapters exactly, which is checked. The expert adapters are built (or
found in the cache) before any arm is timed.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
import time
from pathlib import Path

from bench.iteration import pool
from bench.run import _cpu_model, write_result
from sparta.config import load_config
from sparta.pipeline import Pipeline
from sparta.records import read_json
from sparta.rundir import package_versions

DEMO = Path(__file__).parents[1] / "sparta/configs/ablations/size_4.yaml"
ARMS = {"local-1t": ["threads=1"],
        "ray-1w": ["threads=1", "runtime.kind=ray", "runtime.workers=1", "runtime.num_cpus=2"],
        "ray-2w": ["threads=1", "runtime.kind=ray", "runtime.workers=2", "runtime.num_cpus=2"],
        "local-2t": ["threads=2"]}


def arm(root: Path, members: int, prompts: int, overrides: list[str]) -> dict:
    config = load_config(DEMO, [f"run_dir={root}", "iterations=2", f"data.prompts_per_iteration={prompts}",
                                f"pool.members={pool(members)}", *overrides])
    clock = time.perf_counter()
    Pipeline(config).run_all()
    wall = time.perf_counter() - clock
    iterations = [read_json(root / f"iter_{t:02d}" / "metrics.json") for t in (1, 2)]
    stages = [m["timings_s"] for m in iterations]
    steady = iterations[1]
    return {"wall_s": round(wall, 1), "stages_s": stages, "startup_s": round(wall - sum(sum(s.values())
                                                                                   for s in stages), 1),
            "iteration2_s": round(sum(stages[1].values()), 1),
            "rates_iteration2": {
                "generate_s_per_response": stages[1]["generate"] / steady["responses"]["total"],
                "judge_s_per_judgment": stages[1]["judge"] / steady["judgments"]["total"],
                "dpo_s_per_member_pair": stages[1]["dpo"] / (members * steady["pairs"]) if steady["pairs"] else None},
            "counts_iteration2": {"responses": steady["responses"]["total"], "judgments": steady["judgments"]["total"],
                                  "pairs": steady["pairs"]}}


def same_results(a: Path, b: Path) -> bool:
    files = [p.relative_to(a) for p in a.glob("iter_*/*.jsonl")] + \
        [p.relative_to(a) for p in a.glob("iter_*/adapters/*/adapter_model.safetensors")]
    return bool(files) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}-cpu2-cluster.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        warm = load_config(DEMO, [f"run_dir={tmp}/experts", f"pool.members={pool(args.members)}"])
        Pipeline(warm).build_initial_adapters()  # experts built or found in the cache, outside every timing
        arms = {}
        for name, overrides in ARMS.items():
            arms[name] = arm(Path(tmp) / name, args.members, args.prompts, overrides)
            if name.startswith("ray"):
                arms[name]["same_results_as_local_1t"] = same_results(Path(tmp) / "local-1t", Path(tmp) / name)
            print(name, arms[name], flush=True)
    base, one = arms["local-1t"], arms["ray-1w"]
    result = {
        "machine": {"cpu": _cpu_model(), "cores": 2, "python": sys.version.split()[0]},
        "versions": package_versions(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "members": args.members, "prompts": args.prompts, "arms": arms,
        "ray_overhead": {"per_iteration_s": round(one["iteration2_s"] - base["iteration2_s"], 1),
                         "per_iteration_ratio": round(one["iteration2_s"] / base["iteration2_s"], 3),
                         "startup_s": round(one["startup_s"] - base["startup_s"], 1)},
        "ray_2w_vs_1w_iteration2": round(one["iteration2_s"] / arms["ray-2w"]["iteration2_s"], 2),
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
