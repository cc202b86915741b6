"""`sparta view` at the paper's size: a synthetic run (no models) of 8 iterations x 1000 duels with ~2 KB responses,
written with the records classes; then the page's size, its largest file, the time to write it, and the time a
headless Chromium takes to show a filtered list with one duel open (from the DOM's data-loaded-ms).

    python -m bench.view [--iterations 8] [--duels 1000] [--chars 2000] [--out bench/results/DATE-view.json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparta.config import load_config
from sparta.pairs import preference_pairs
from sparta.records import Duel, Judgment, Response, append_jsonl, to_json, write_json_atomic, write_jsonl_atomic
from sparta.rundir import RunDir

MEMBERS = [f"expert_{i}" for i in range(10)]
WORDS = "the a model answer because therefore step value result first then so we compute total each".split()


def text_of(rng: random.Random, chars: int) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def synthetic_run(root: Path, iterations: int, duels: int, chars: int, members: list[str] = MEMBERS,
                  seed: int = 0, texts: dict[tuple[int, int], tuple[str, str]] | None = None) -> Path:
    """A run directory with `duels` logprob-judged duels per iteration (every other member judges), their pairs
    and reputations; `texts` sets the responses of chosen (iteration, index) duels."""
    rng = random.Random(seed)
    config = load_config(None, [f"run_dir={root}", "pool.base=tiny", f"pool.members=[{', '.join(members)}]",
                                f"iterations={iterations}"])
    run = RunDir.open(config)
    ratings = {m: 1.0 for m in members}
    for t in range(1, iterations + 1):
        rows = []
        for i in range(duels):
            a, b = rng.sample(members, 2)
            ta, tb = (texts or {}).get((t, i), (text_of(rng, chars), text_of(rng, chars)))
            judges = [m for m in members if m not in (a, b)]
            judgments = []
            for j in judges:
                for side in "ab":
                    probs = [rng.random() for _ in range(10)]
                    total = sum(probs)
                    probs = [p / total for p in probs]
                    judgments.append(Judgment(j, side, sum((k + 1) * p for k, p in enumerate(probs)), "ok",
                                              " ".join(f"{p:.4f}" for p in probs)))
            weights = {j: ratings[j] for j in judges}
            total = sum(weights.values())
            score = {side: sum(weights[x.judge] * x.score for x in judgments if x.target == side) / total
                     for side in "ab"}
            outcome = "tie" if abs(score["a"] - score["b"]) < 0.01 else ("a" if score["a"] > score["b"] else "b")
            before = (ratings[a], ratings[b])
            if outcome in "ab":
                win, lose = (a, b) if outcome == "a" else (b, a)
                ratings[win] += 0.01
                ratings[lose] -= 0.01
            update = {"a": a, "b": b, "rating_a_before": before[0], "rating_b_before": before[1],
                      "rating_a_after": ratings[a], "rating_b_after": ratings[b]}
            rows.append(Duel(t, i // 100, i, f"synthetic:{t}:{i}", f"Question {t}.{i}: " + text_of(rng, 300), a, b,
                             Response(a, ta, finish_reason="stop", n_tokens=len(ta) // 4),
                             Response(b, tb, finish_reason="stop", n_tokens=len(tb) // 4),
                             judgments, weights, score["a"], score["b"], outcome, update))
        append_jsonl(run.journal(t), [to_json(d) for d in rows])
        write_jsonl_atomic(run.pairs(t), preference_pairs(rows))
        write_json_atomic(run.reputations(t), {"ratings": dict(ratings), "sigmas": {m: 0.1 for m in members}})
        run.mark_done(t, "iteration")
    return run.root


def chromium_load(page: Path, state: str) -> dict:
    """Headless Chromium on page#state: the wall time of the whole command and the page's own clocks."""
    profile = tempfile.mkdtemp(prefix="sparta-view-chromium-")
    try:
        clock = time.perf_counter()
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--virtual-time-budget=10000", "--dump-dom", f"{page.resolve().as_uri()}#{state}"],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        wall = time.perf_counter() - clock
    finally:
        shutil.rmtree(profile, ignore_errors=True)

    def attribute(name: str) -> int | None:
        at = dom.find(f'{name}="')
        return int(dom[at + len(name) + 2:dom.index('"', at + len(name) + 2)]) if at >= 0 else None

    return {"state": state, "chromium_wall_s": round(wall, 2), "rendered_ms": attribute("data-rendered-ms"),
            "duel_loaded_ms": attribute("data-loaded-ms"), "dom_bytes": len(dom)}


def main(argv: list[str] | None = None) -> int:
    from sparta.viewer import write_view

    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--duels", type=int, default=1000)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--out", help="a JSON file for the numbers")
    parser.add_argument("--run", help="keep the synthetic run here, and reuse it if it is there (same sizes)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clock = time.perf_counter()
        root = Path(args.run or Path(tmp) / "run")
        reused = (root / "run.json").exists()
        if not reused:
            synthetic_run(root, args.iterations, args.duels, args.chars)
        made = None if reused else round(time.perf_counter() - clock, 1)
        journal = sum(p.stat().st_size for p in root.glob("iter_*/combat.jsonl"))
        clock = time.perf_counter()
        page = write_view(root)
        written = time.perf_counter() - clock
        files = [p for p in page.parent.rglob("*") if p.is_file()]
        largest = max(files, key=lambda p: p.stat().st_size)
        result = {
            "iterations": args.iterations, "duels_per_iteration": args.duels, "response_chars": args.chars,
            "synthetic_run_s": made, "combat_jsonl_bytes": journal, "write_view_s": round(written, 2),
            "view_bytes": sum(p.stat().st_size for p in files), "view_files": len(files),
            "largest_file": str(largest.relative_to(page.parent)), "largest_bytes": largest.stat().st_size,
            "index_bytes": (page.parent / "data" / "index.js").stat().st_size}
        if shutil.which("chromium"):
            member = MEMBERS[3]
            result["chromium"] = [chromium_load(page, "view=duels"),
                                  chromium_load(page, f"iter={args.iterations}&member={member}&outcome=won&page=1"
                                                f"&duel={args.iterations}:{args.duels - 1}")]
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
