"""The self-alignment baselines (docs/baselines.md): the pair rules on crafted samples, tiny end-to-end runs of
self_rewarding and spin, and kill/resume parity."""

import json

import pytest
from safetensors.torch import load_file

from sparta.baselines.samples import Sample, own_pairs
from sparta.baselines.self_rewarding import best_vs_worst
from sparta.baselines.spin import reference_vs_own
from sparta.config import ConfigError, load_config
from sparta.pipeline import Pipeline
from sparta.prompts import load_references
from sparta.records import Judgment, Response, read_jsonl
from sparta.rundir import RunDir
from tests.test_pipeline import Killed, assert_same, kill_at, run_to_end

ARTIFACTS = ["prompts.jsonl", "samples.jsonl", "pairs.jsonl", "metrics.json", "reputations.json"]
COUNTS = ("method", "samples", "failed", "pairs", "skipped", "responses", "judgments")


def sample(member: str, prompt: str, k: int, score: float | None, status: str = "scored") -> Sample:
    """A crafted sample: `score` None with a status saying why (failed generation, unreadable judgment)."""
    text = None if status == "generation_failed" else f"{member}-{prompt}-{k}"
    judgment = None if status == "generation_failed" else Judgment(member, "self", score, status.removeprefix(
        "judgment_").replace("scored", "ok"))
    return Sample(member, prompt, f"question {prompt}", k, Response(member, text), judgment, status)


# ---- the pair rules ------------------------------------------------------------------------------------------

def test_self_rewarding_pairs_the_highest_over_the_lowest_score():
    samples = [sample("a", "p", 0, 5.0), sample("a", "p", 1, 8.5), sample("a", "p", 2, 2.0), sample("a", "p", 3, 6.0)]
    pairs, skipped = best_vs_worst(samples, 1, 0.0)
    assert len(pairs) == 1 and sum(skipped.values()) == 0
    p = pairs[0]
    assert (p["chosen"][0]["content"], p["rejected"][0]["content"]) == ("a-p-1", "a-p-2")
    assert (p["score_chosen"], p["score_rejected"], p["margin"]) == (8.5, 2.0, 6.5)
    assert (p["member"], p["method"], p["prompt_id"]) == ("a", "self_rewarding", "p")


def test_self_rewarding_skips_ties_and_gaps_below_the_margin():
    tie = [sample("a", "p", k, 7.0) for k in range(3)]
    close = [sample("b", "p", 0, 7.0), sample("b", "p", 1, 7.4)]
    wide = [sample("c", "p", 0, 3.0), sample("c", "p", 1, 7.0)]
    pairs, skipped = best_vs_worst(tie + close + wide, 1, 0.5)
    assert [p["member"] for p in pairs] == ["c"]
    assert skipped == {"fewer_than_2_scored": 0, "tie": 1, "below_margin": 1}
    assert len(best_vs_worst(close, 1, 0.0)[0]) == 1  # no margin: any gap makes a pair
    assert best_vs_worst(tie, 1, 0.0) == ([], {"fewer_than_2_scored": 0, "tie": 1, "below_margin": 0})


def test_self_rewarding_never_pairs_failed_or_unreadable_samples():
    # the failed generation and the unparsed / failed judgments carry no score: the pair is 6 over 4, and a
    # prompt left with one scored sample makes no pair
    # (the status is the gate: a judgment that is not ok never counts, whatever score it carries)
    samples = [sample("a", "p", 0, None, "generation_failed"), sample("a", "p", 1, 6.0),
               sample("a", "p", 2, 9.5, "judgment_unparsed"), sample("a", "p", 3, 4.0),
               sample("b", "p", 0, 9.0), sample("b", "p", 1, 1.0, "judgment_failed")]
    pairs, skipped = best_vs_worst(samples, 1, 0.0)
    assert [(p["chosen_sample"], p["rejected_sample"]) for p in pairs] == [(1, 3)]
    assert skipped["fewer_than_2_scored"] == 1


def test_spin_chooses_the_reference_over_the_members_own_answer():
    samples = [sample("a", "p", 0, None, "generated"), sample("b", "q", 0, None, "generation_failed")]
    pairs, skipped = reference_vs_own(samples, {"p": "the reference of p", "q": "the reference of q"}, 2)
    assert len(pairs) == 1 and skipped == {"generation_failed": 1}
    p = pairs[0]
    assert p["chosen"] == [{"role": "assistant", "content": "the reference of p"}]
    assert p["rejected"] == [{"role": "assistant", "content": "a-p-0"}]
    assert (p["member"], p["method"], p["iteration"], p["rejected_model"]) == ("a", "spin", 2, "a")


def test_own_pairs_select_the_members_pairs():
    pairs = [{"member": "a", "i": 0}, {"member": "b", "i": 1}, {"member": "a", "i": 2}]
    assert [p["i"] for p in own_pairs("a", pairs)] == [0, 2]


# ---- config and checks ---------------------------------------------------------------------------------------

def test_method_is_validated():
    assert load_config(None).method == "sparta"
    with pytest.raises(ConfigError, match="method must be one of sparta, self_rewarding, meta_rewarding, spin, sppo"):
        load_config(None, ["method=self_rewrding"])
    with pytest.raises(ConfigError, match="baseline.samples must be >= 2"):
        load_config(None, ["baseline.samples=1"])


def test_spin_without_references_fails_at_check(tiny_config):
    # GSM8K's train questions ship without their solutions
    with pytest.raises(ValueError, match="method=spin needs a reference answer for every prompt.*gsm8k:0"):
        Pipeline(tiny_config("method=spin", "data.prompts=gsm8k")).check()


def test_spin_references_are_math_worked_solutions():
    """MATH ships worked solutions: SPIN's chosen answer is the solution, whose last box is the task's gold."""
    from sparta.tasks.catalog import get_task
    from sparta.tasks.graders import math_gold

    worked, gold = load_references("math_medium"), get_task("math_medium").combat_references()
    assert worked.keys() == gold.keys() and len(worked) == 1592
    assert all(math_gold(worked[k]) == gold[k] for k in list(worked)[:200])
    assert sum(len(worked[k]) > len(gold[k]) + 20 for k in worked) > 0.95 * len(worked)  # demonstrations
    assert load_references("medqa") == get_task("medqa").combat_references()  # no demonstrations: the gold


def test_file_pool_references_are_the_rows_output(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "z"}\n')
    assert load_references(str(path)) == {"mine:0": "y"}


# ---- tiny runs -----------------------------------------------------------------------------------------------

def base_snapshot(root, iterations=2):
    """Every file a baseline iteration writes (of metrics.json its counts: seconds and memory vary), and every
    adapter's weights."""
    out = {}
    for t in range(1, iterations + 1):
        it = root / f"iter_{t:02d}"
        for name in ARTIFACTS:
            text = (it / name).read_text()
            out[f"{t}/{name}"] = json.dumps({k: v for k, v in json.loads(text).items() if k in COUNTS}) \
                if name == "metrics.json" else text
        for m in "abcd":
            out[f"{t}/adapter/{m}"] = load_file(str(it / "adapters" / m / "adapter_model.safetensors"))
    return out


@pytest.fixture(scope="module")
def self_rewarding_run(tmp_path_factory, model_cache):
    from tests.conftest import tiny

    config = tiny(tmp_path_factory.mktemp("sr") / "run", model_cache, "method=self_rewarding", "baseline.samples=3",
                  "data.prompts_per_iteration=3")
    return config, run_to_end(config).root


def test_self_rewarding_run_writes_its_files(self_rewarding_run):
    config, root = self_rewarding_run
    for t in (1, 2):
        it = root / f"iter_{t:02d}"
        assert not (it / "combat.jsonl").exists()
        samples = read_jsonl(it / "samples.jsonl")
        assert len(samples) == 3 * 4 * 3  # prompts x members x samples
        for s in samples:
            j = s["judgment"]
            if s["response"]["text"] is None:  # the tiny model's empty answers: failed, never judged
                assert s["status"] == "generation_failed" and j is None and s["response"]["error"]
                continue
            assert j["judge"] == s["member"] and j["target"] == "self"  # the member judged its own answer
            assert s["status"] == "scored" and 1 <= j["score"] <= 10
        by_text = {(s["member"], s["prompt_id"], s["response"]["text"]) for s in samples}
        pairs = read_jsonl(it / "pairs.jsonl")
        assert pairs
        for p in pairs:  # each member's pairs come from its own samples of that prompt
            for side in ("chosen", "rejected"):
                assert (p["member"], p["prompt_id"], p[side][0]["content"]) in by_text
            assert p["score_chosen"] > p["score_rejected"]
        metrics = json.loads((it / "metrics.json").read_text())
        assert metrics["samples"] == 36 and metrics["pairs"] == len(pairs)
        assert metrics["failed"] == sum(s["status"] == "generation_failed" for s in samples)
        assert metrics["pairs"] + sum(metrics["skipped"].values()) == 3 * 4
        assert json.loads((it / "reputations.json").read_text())["ratings"] == dict.fromkeys("abcd", 100.0)
        for m in "abcd":
            trained = json.loads((it / "training" / f"{m}.json").read_text())
            assert trained["pairs"] == sum(p["member"] == m for p in pairs)
    report = (root / "report.md").read_text()
    assert "Method: self_rewarding" in report and "has no combat and no reputations" in report
    pipeline = Pipeline(config)
    pipeline.run = RunDir(root)
    board = pipeline.summary(2)["leaderboard"]  # `sparta run` prints it after each iteration
    assert {r["member"]: r["chosen"] for r in board} == {m: sum(p["member"] == m for p in pairs) for m in "abcd"}


def test_self_rewarding_killed_and_resumed_matches(self_rewarding_run, tiny_config, tmp_path):
    config, reference = self_rewarding_run
    killed = tiny_config("method=self_rewarding", "baseline.samples=3", "data.prompts_per_iteration=3",
                         run_dir=tmp_path / "killed")
    # each invocation is killed once, in a later stage than the last: judging and DPO of iteration 1, then
    # sampling and DPO of iteration 2; the last run resumes from there
    for stage in ("judge", "dpo b", "generate", "dpo c"):
        with pytest.raises(Killed):
            run_to_end(killed, progress=kill_at(stage))
    run_to_end(killed)
    assert_same(base_snapshot(reference), base_snapshot(tmp_path / "killed"))


def test_spin_run_trains_each_member_on_reference_pairs(tiny_config):
    config = tiny_config("method=spin", "data.prompts_per_iteration=3")
    root = run_to_end(config).root
    references = load_references("self_instruct")
    for t in (1, 2):
        it = root / f"iter_{t:02d}"
        samples = read_jsonl(it / "samples.jsonl")
        assert len(samples) == 3 * 4 and all(s["judgment"] is None for s in samples)
        own = {(s["member"], s["prompt_id"], s["response"]["text"]) for s in samples}
        pairs = read_jsonl(it / "pairs.jsonl")
        assert len(pairs) == 12
        for p in pairs:
            assert p["chosen"][0]["content"] == references[p["prompt_id"]]
            assert (p["member"], p["prompt_id"], p["rejected"][0]["content"]) in own
        for m in "abcd":
            assert json.loads((it / "training" / f"{m}.json").read_text())["pairs"] == 3
    assert "Method: spin" in (root / "report.md").read_text()


def test_compare_reads_a_baseline_arm_without_a_top_reputation(self_rewarding_run):
    from sparta.compare import task_row
    from tests.test_compare import result, write_eval

    _, root = self_rewarding_run
    write_eval(root, 0, "medqa", {"a": result(0.5, 10, 0.3, 0.7), "b": result(0.4, 10, 0.2, 0.6)})
    write_eval(root, 2, "medqa", {"a": result(0.5, 10, 0.3, 0.7), "b": result(0.6, 10, 0.4, 0.8)})
    row = task_row(root, 2, "medqa", "test")
    assert row["top_reputation"] == {"missing": "method self_rewarding has no reputations"}
    assert row["best"]["member"] == "b" and row["relative_gain"] == pytest.approx(0.2)
