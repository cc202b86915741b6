"""The benchmark's side-by-side code runs end to end (on the tiny model; its timings mean nothing here)."""

from bench.authors import matches_for, side_by_side
from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, LoraShape
from sparta.models import resolve_model


def test_matches_cycle_through_every_pair():
    matches = matches_for(["w", "x", "y", "z"], 7)
    assert [(m.a, m.b) for m in matches][:6] == [("w", "x"), ("w", "y"), ("w", "z"), ("x", "y"), ("x", "z"),
                                                 ("y", "z")]
    assert len({m.prompt.id for m in matches}) == 7


def test_authors_shape_and_sparta_process_the_same_duels(tmp_path):
    members = ["w", "x", "y", "z"]
    tiny = resolve_model("tiny", tmp_path / "cache")
    backend = HFBackend([MemberModel(m, tiny, None) for m in members], LoraShape(dropout=0.0), seed=0)
    result = side_by_side(backend, members, tiny, tmp_path / "adapters", n_duels=3, new_tokens=6)
    # each judged duel: two responses, judged by the two members that did not fight, once per response
    assert result["judged_duels"] >= 1
    assert result["sparta"]["judgments"] == result["authors"]["judgments"] == result["judged_duels"] * 2 * 2
    assert result["authors"]["loads"] == 8  # every member loaded for generation and again for judging
    assert 0 < result["authors"]["new_tokens"]["generate"] <= 3 * 2 * 6
    assert all(v > 0 for v in result["speedup"].values())


def test_iteration_benchmark_reads_a_real_run(tmp_path):
    from bench.iteration import one_iteration, pool

    assert pool(6).count("expert: math") == 2 and "name: math1" in pool(6)
    small = (f"cache_dir={tmp_path / 'cache'}", "pool.base=tiny", "pool.experts.steps=1", "threads=1",
             "generation.max_new_tokens=6", "generation.max_prompt_tokens=120", "training.max_length=128",
             "judge.max_prompt_tokens=1024")
    point = one_iteration(tmp_path, 4, 2, "medqa", 2, small)
    assert point["judgments"] == 2 * 2 * 2  # 2 duels, 2 responses each, 2 judges
    assert set(point["stages_s"]) >= {"generate", "judge", "reputation", "pairs", "dpo"}
    assert point["eval"]["items"] == 2 and set(point["eval"]["seconds_per_pass"]) == {0, 1}


def test_dpo_section_trains_and_times_both_precisions(tmp_path):
    from bench.run import dpo

    members = ["w", "x", "y", "z"]
    tiny = resolve_model("tiny", tmp_path / "cache")
    backend = HFBackend([MemberModel(m, tiny, None) for m in members], LoraShape(dropout=0.0), seed=0)
    result = dpo(backend, members, backend.tokenizer("w"), tiny, 3, 8)
    assert result["pairs"] >= 1
    for label in ("fp32", "bf16"):
        assert set(result[label]["seconds"]) == {"reference", "steps", "after"}
        assert result[label]["loss_after"] > 0
    # both start from the same adapter (a fresh one: policy = reference), so both first losses are ln 2
    assert abs(result["bf16"]["loss_first"] - result["fp32"]["loss_first"]) < 1e-6


def test_judging_section_scores_the_same_pairs_both_ways(tmp_path):
    from bench.run import judging

    members = ["w", "x", "y", "z"]
    backend = HFBackend([MemberModel(m, resolve_model("tiny", tmp_path / "cache"), None) for m in members],
                        LoraShape(dropout=0.0), seed=0)
    result = judging(backend, members, backend.tokenizer("w"), 3)
    assert result["n"] == 3 and result["authors_generate"]["max_new_tokens"] == 256
    assert 0 <= result["authors_generate"]["parsed"] <= 1 and result["logprob"]["judgments_per_s"] > 0


def test_cluster_benchmark_compares_logs_and_adapters_byte_for_byte(tmp_path):
    from bench.cluster import same_results

    for run in ("a", "b"):
        (tmp_path / run / "iter_01" / "adapters" / "m").mkdir(parents=True)
        (tmp_path / run / "iter_01" / "combat.jsonl").write_text('{"duel": 1}\n')
        (tmp_path / run / "iter_01" / "adapters" / "m" / "adapter_model.safetensors").write_bytes(b"\x00\x01")
    assert same_results(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "iter_01" / "adapters" / "m" / "adapter_model.safetensors").write_bytes(b"\x00\x02")
    assert not same_results(tmp_path / "a", tmp_path / "b")
    assert not same_results(tmp_path / "empty", tmp_path / "b")  # nothing compared is not "the same"
