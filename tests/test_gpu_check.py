"""The offline GPU check (bench/gpu_check.py) at its small scale on the CPU: every part writes its JSON with sane
fields, so the script a GPU session runs cannot rot unnoticed. Its numbers mean nothing here: no timing is
asserted, only that rates are finite and positive and that each part measured what it says."""

import json
import math

import pytest

from bench import gpu_check

PARTS = ("tests", "combat", "judging", "dpo", "run")


def read(out, part):
    return json.loads((out / f"{part}.json").read_text())


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_the_small_dry_run_writes_every_part(tmp_path, model_cache):
    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out), "--scale", "small", "--cache", str(model_cache),
                           "--budget-s", "900"]) == 0
    env = read(out, "env")
    assert env["device_type"] == "cpu" and env["versions"]["transformers"] and env["scale"] == "small"
    parts = {p: read(out, p) for p in PARTS}
    for name, part in parts.items():
        assert "error" not in part and "skipped" not in part, (name, part)

    tests = parts["tests"]
    assert tests["returncode"] == 0 and tests["counts"]["tests"] >= 1
    assert tests["counts"]["failures"] == tests["counts"]["errors"] == 0

    combat, small = parts["combat"], gpu_check.SCALES["small"]
    assert combat["sparta_mixed"]["new_tokens"] == small.gen_rows * small.new_tokens  # lengths were forced
    assert positive(combat["sparta_mixed"]["tokens_per_s"]) and positive(combat["plain_generate"]["tokens_per_s"])
    check = combat["lora_check"]
    # fp32 on the CPU: a mixed batch gives each row its own member's numbers; the members do differ (random B)
    assert check["finite"] and check["mixed_vs_alone_max_abs"] < 1e-4 < check["mixed_vs_first_member_mean_abs"]

    judging = parts["judging"]
    assert positive(judging["sparta_logprob"]["prompt_tokens_per_s"]) and positive(judging["ratio_to_prefill"])
    assert judging["scores_in_range"]

    variants = parts["dpo"]["variants"]
    assert [v["gradient_checkpointing"] for v in variants] == [True, False]
    for v in variants:
        assert positive(v["s_per_pair"]) and v["steps"] == 1 and v["truncated"] == 0
        assert math.isclose(v["loss_first"], math.log(2), abs_tol=1e-6)  # a fresh adapter: policy = reference
        assert v["loss_after"] < v["loss_first"]  # the step trained the member
        assert "resident set" in v["memory"]["source"] and v["reserved_bytes"] == 0
    assert variants[0]["loss_after"] == pytest.approx(variants[1]["loss_after"], abs=1e-5)  # same step either way
    head = parts["dpo"]["fp32_head"]
    assert positive(head["tf32_s"]) and positive(head["ieee_s"]) and head["tokens"] == 2 * small.dpo_micro_batch * \
        small.dpo_response_tokens
    assert head["max_abs_diff_over_max_abs"] == 0  # on a CPU there is no TF32: the same product

    run = parts["run"]
    assert run["returncode"] == 0 and run["responses"]["total"] == 2 * 2  # 2 prompts, 2 answers each
    assert {"generate", "judge", "dpo"} <= set(run["timings_s"])


def test_a_part_the_budget_cannot_afford_is_skipped_with_why(tmp_path):
    out = tmp_path / "out"
    gpu_check.main(["--out", str(out), "--scale", "small", "--budget-s", "5", "--parts", "dpo,run"])
    for part in ("dpo", "run"):
        assert read(out, part)["skipped"].startswith("budget: ")


def test_a_failing_part_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("no GPU today")

    monkeypatch.setattr(gpu_check, "tests", broken)
    monkeypatch.setattr(gpu_check, "run", lambda *args: {"ran": True})
    gpu_check.main(["--out", str(tmp_path), "--scale", "small", "--parts", "tests,run"])
    assert read(tmp_path, "tests")["error"] == "RuntimeError: no GPU today"
    assert read(tmp_path, "run")["ran"] is True
