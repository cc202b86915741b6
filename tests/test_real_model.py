"""One real iteration on the packaged SmolLM2-135M-Instruct (runs in CI; skip locally with -m 'not slow')."""

import json

import pytest

from sparta.pipeline import Pipeline
from sparta.records import read_jsonl


@pytest.mark.slow
def test_one_iteration_on_smollm2(tiny_config, tmp_path):
    config = tiny_config("pool.base=packaged:smollm2-135m-instruct", "pool.members=[a, b, c]", "iterations=1",
                         "data.prompts=gsm8k", "data.prompts_per_iteration=3", "arena.round_size=3",
                         "generation.max_new_tokens=24", "training.lr=5e-5")
    pipeline = Pipeline(config)
    root = pipeline.run_all().root
    assert pipeline.store.loads == 1  # three members, one loaded base (inference and training share it)
    duels = read_jsonl(root / "iter_01" / "combat.jsonl")
    assert len(duels) == 3
    for d in duels:
        assert d["response_a"]["text"] and d["response_b"]["text"]
        assert all(j["status"] == "ok" and 1 <= j["score"] <= 10 for j in d["judgments"])
    metrics = json.loads((root / "iter_01" / "metrics.json").read_text())
    trained = [t for t in metrics["training"].values() if t["steps"]]
    assert trained and all(t["loss_first"] == pytest.approx(0.6931, abs=1e-3) for t in trained)
