"""The benchmark's side-by-side code runs end to end (on the tiny model; its timings mean nothing here)."""

import json
from pathlib import Path

import torch

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


class MetaModel(torch.nn.Module):
    """A model on the meta device that records the device of every input it is given: a benchmark that builds its
    tensors on the CPU for a model elsewhere (a GPU) shows up as 'cpu' here."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4, 2, device="meta")
        self.seen: list[str] = []

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, **kwargs):
        self.seen.append(input_ids.device.type)

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.seen += [input_ids.device.type, attention_mask.device.type]
        return torch.zeros(input_ids.shape[0], input_ids.shape[1] + max_new_tokens, dtype=torch.long)


def test_benchmarks_build_their_batches_on_the_models_device(tmp_path):
    from bench.authors import authors_sample
    from bench.run import generate_ceiling, prefill_ceiling

    tok = HFBackend([MemberModel("w", resolve_model("tiny", tmp_path), None)], LoraShape(), seed=0).tokenizer("w")
    model = MetaModel()
    authors_sample(model, tok, [[5, 6, 7], [8, 9]], 2)
    prefill_ceiling(model, tok, (2,), 8)
    generate_ceiling(model, tok, (2,), 8, 2)
    assert model.seen and set(model.seen) == {"meta"}


def test_timed_reads_the_clock_after_the_device_finished(monkeypatch):
    from bench import measure

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: events.append("clock") or float(len(events)))
    assert measure.timed(lambda: events.append("work") or 7, "cuda")[0] == 7
    # work queued before waits out of the measurement; the block's own kernels finish before the clock stops
    assert events == ["sync", "clock", "work", "sync", "clock"]
    events.clear()
    measure.timed(lambda: events.append("work"), "cpu")
    assert events == ["clock", "work", "clock"]  # nothing to wait for on the CPU


def test_peak_memory_on_the_cpu_sees_an_allocation_and_says_what_it_read():
    """In a fresh process: in pytest's, hundreds of tests before leave freed, still resident memory and a high
    lifetime peak, which an allocation can hide in (a 32 and a 64 MiB probe both failed in full-suite runs)."""
    import subprocess
    import sys

    probe = """
import json, torch
from bench.measure import peak_memory
with peak_memory("cpu") as reading:
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written: resident
    del block
print(json.dumps(reading))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    reading = json.loads(out.stdout.strip().splitlines()[-1])
    from bench.measure import RSS_LIFETIME, RSS_PEAK

    assert reading["source"] in (RSS_PEAK, RSS_LIFETIME)
    assert reading["peak_bytes"] - reading["start_bytes"] >= 60 * 2**20, reading


def test_ceiling_model_loads_where_and_in_the_precision_asked(tmp_path):
    from bench.measure import plain_model

    for spec in ("tiny", "random:qwen2.5-mini"):
        model = plain_model(resolve_model(spec, tmp_path), "meta", torch.bfloat16)
        assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}


def test_randomised_b_changes_one_adapter_only(tmp_path):
    from bench.backends import randomise_lora_b

    backend = HFBackend([MemberModel(m, resolve_model("tiny", tmp_path), None) for m in "xy"], LoraShape(), seed=0)
    model, x = backend.adapter("x")
    _, y = backend.adapter("y")
    changed = randomise_lora_b(model, x, seed=0)
    b = {n: p for n, p in model.named_parameters() if ".lora_B." in n}
    assert changed == len(b) // 2 > 0
    assert all(p.abs().sum() > 0 for n, p in b.items() if f".lora_B.{x}." in n)
    assert all(p.abs().sum() == 0 for n, p in b.items() if f".lora_B.{y}." in n)


def test_dpo_benchmark_trains_the_old_and_new_paths_on_the_same_pairs(tmp_path):
    """bench.dpo end to end on the tiny model: pairs of the asked prompt lengths, both paths in ABBA order, each
    path's repeats bit-identical, both adapters scored on every pair (the numbers mean nothing here)."""
    from bench.dpo import compare, make_pairs

    members = ["w", "x", "y"]
    tiny = resolve_model("tiny", tmp_path / "cache")
    backend = HFBackend([MemberModel(m, tiny, None) for m in members], LoraShape(dropout=0.0), seed=0)
    tok = backend.tokenizer("w")
    pairs = make_pairs(backend, members, tok, 3, prompt_tokens=(150, 200), new_tokens=(4, 8))
    prompts = [len(tok(p["prompt"][0]["content"])["input_ids"]) for p in pairs]
    assert len(pairs) == 3 and all(p >= 120 for p in prompts)  # the chat template adds the rest
    result = compare(backend, members, tiny, pairs, ["old", "new", "new", "old"], tmp_path / "work")
    assert result["old"]["repeats_identical"] and result["new"]["repeats_identical"]
    assert set(result["old"]["s_per_pair_by_phase"]["cpu"]) == {"reference", "steps", "after"}
    assert len(result["speedup_adjacent"]) == 2 and result["speedup"]["wall"] > 0
    assert result["layout_logp_max_abs_diff"] < 1e-3
    assert abs(result["new_minus_old"]["loss"]) < 1e-3 and result["tolerance"]["within"]
    assert result["old"]["quality"]["pairs"] == 3 and result["old"]["runs"][0]["loss_first"] > 0


def test_judge_agreement_items_differ_only_where_meant():
    from bench.judge_agreement import corrupt_final_number, gsm8k_items, math_items

    gold, wrong = corrupt_final_number("She has 3 + 4 = <<3+4=7>>7 eggs.\n#### 7", 5)
    assert gold == "She has 3 + 4 = 7 eggs.\nThe answer is 7." and wrong == "She has 3 + 4 = 7 eggs.\nThe answer is 12."
    items = gsm8k_items(4)
    assert len(items) == 4 and all(i.task == "gsm8k" for i in items)
    for it in items:  # the same solution but its final line
        assert it.gold != it.wrong and it.gold.splitlines()[:-1] == it.wrong.splitlines()[:-1]
    maths = math_items(3)
    assert [m.wrong for m in maths] == [maths[1].gold, maths[2].gold, maths[0].gold]  # the next problem's solution


def test_judge_agreement_counts_ties_and_unreadable_as_disagreement_with_wilson_intervals():
    from bench.judge_agreement import agreement, wilson

    result = agreement([0.5, 0.0, None, -1.0, 2.0])
    assert (result["agree"], result["ties"], result["unreadable"], result["rate"]) == (2, 1, 1, 0.4)
    lo, hi = wilson(8, 10)  # the textbook 95% Wilson interval of 8/10
    assert round(lo, 4) == 0.4902 and round(hi, 4) == 0.9433
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0  # the bounds, not a rounding step past them


def test_judge_agreement_judges_the_same_items_three_ways(tmp_path):
    from bench.judge_agreement import JUDGE, Item, evaluate

    backend = HFBackend([MemberModel(JUDGE, resolve_model("tiny", tmp_path / "cache"), None)],
                        LoraShape(dropout=0.0), seed=0)
    items = [Item("t", "2+2?", "4", "5"), Item("t", "3+3?", "6", "7")]
    result = evaluate(backend, items, generate_tokens=4)
    assert set(result) == {"logprob", "generate", "pairwise"}
    assert all(r["agreement"]["items"] == 2 and r["seconds_per_duel"] > 0 for r in result.values())
    assert result["logprob"]["agreement"]["unreadable"] == 0 == result["pairwise"]["agreement"]["unreadable"]
    assert -0.5 <= result["pairwise"]["position_bias_mean"] <= 0.5
