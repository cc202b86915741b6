"""End to end on the tiny pool: a complete run, the run directory's contents, and kill/resume parity."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sparta.config import ConfigError
from sparta.evaluation import draw_items
from sparta.pipeline import Pipeline
from sparta.records import read_jsonl
from sparta.tasks.catalog import get_task

ARTIFACTS = ["prompts.jsonl", "combat.jsonl", "pairs.jsonl", "reputations.json"]


class Killed(Exception):
    pass


def kill_at(stage_prefix: str, nth: int = 1):
    """A progress hook that raises (like a kill) the nth time a stage starts."""
    seen = []

    def progress(stage, total):
        if stage.startswith(stage_prefix):
            seen.append(stage)
            if len(seen) == nth:
                raise Killed(stage)
        return None

    return progress


def run_to_end(config, progress=None):
    return Pipeline(config, progress=progress).run_all()


def snapshot(root, iterations=2, members="abcd"):
    out = {}
    for t in range(1, iterations + 1):
        it = root / f"iter_{t:02d}"
        for name in ARTIFACTS:
            out[f"{t}/{name}"] = (it / name).read_text()
        for m in members:
            out[f"{t}/adapter/{m}"] = load_file(str(it / "adapters" / m / "adapter_model.safetensors"))
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), f"{key}: {name} differs"
        else:
            assert a[key] == b[key], f"{key} differs after resume"


@pytest.fixture
def reference_run(tiny_config, tmp_path):
    config = tiny_config(run_dir=tmp_path / "reference")
    run = run_to_end(config)
    return config, run.root


def test_complete_run_writes_every_artifact(reference_run):
    config, root = reference_run
    assert json.loads((root / "run.json").read_text())["seed"] == 0
    for t in (1, 2):
        it = root / f"iter_{t:02d}"
        assert (it / "done" / "iteration").exists()
        duels = read_jsonl(it / "combat.jsonl")
        assert len(duels) == 6
        for d in duels:
            assert d["a"] != d["b"]
            judges = {j["judge"] for j in d["judgments"]}
            assert judges == {"a", "b", "c", "d"} - {d["a"], d["b"]}  # every non-contestant judged
            assert len(d["judgments"]) == 4  # 2 judges x 2 responses
        pairs = read_jsonl(it / "pairs.jsonl")
        decided = [d for d in duels if d["outcome"] in ("a", "b")]
        assert len(pairs) == len(decided) > 0
        for p in pairs:
            assert p["score_chosen"] > p["score_rejected"]
            assert p["prompt"][0]["role"] == "user" and p["chosen"][0]["role"] == "assistant"
        metrics = json.loads((it / "metrics.json").read_text())
        assert metrics["judgments"]["total"] == 24 and metrics["judgments"]["unparsed"] == 0
        assert set(metrics["timings_s"]) >= {"generate", "judge", "dpo"}
        for m in "abcd":
            assert (it / "adapters" / m / "adapter_config.json").exists()
    # fresh prompts each iteration
    p1 = {r["id"] for r in read_jsonl(root / "iter_01" / "prompts.jsonl")}
    p2 = {r["id"] for r in read_jsonl(root / "iter_02" / "prompts.jsonl")}
    assert p1.isdisjoint(p2)
    # reputations move and carry over
    rep1 = json.loads((root / "iter_01" / "reputations.json").read_text())
    assert rep1["n_updates"] == sum(d["update"] is not None for d in read_jsonl(root / "iter_01" / "combat.jsonl"))
    rep2 = json.loads((root / "iter_02" / "reputations.json").read_text())
    assert rep2["n_updates"] > rep1["n_updates"]


def test_pairs_load_with_datasets(reference_run):
    datasets = pytest.importorskip("datasets")
    _, root = reference_run
    ds = datasets.load_dataset("json", data_files=str(root / "iter_01" / "pairs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "prompt_id", "chosen_model"} <= set(ds.column_names)


def test_rerun_is_a_no_op(reference_run):
    config, root = reference_run
    before = snapshot(root)
    stages = []
    run_to_end(config, progress=lambda stage, total: stages.append(stage))
    assert stages == []  # nothing was redone
    assert_same(before, snapshot(root))


@pytest.mark.parametrize("stage,nth", [("judge", 2), ("dpo c", 1), ("generate", 4), ("dpo a", 2)])
def test_killed_and_resumed_run_matches(reference_run, tiny_config, tmp_path, stage, nth):
    """Killed mid-combat (after a journaled round) or mid-training, then resumed: identical results."""
    _, reference_root = reference_run
    config = tiny_config(run_dir=tmp_path / "killed")
    with pytest.raises(Killed):
        run_to_end(config, progress=kill_at(stage, nth))
    run_to_end(config)
    assert_same(snapshot(reference_root), snapshot(config_root := tmp_path / "killed"))
    assert config_root.exists()


def test_torn_journal_round_is_redone(reference_run, tiny_config, tmp_path):
    """A kill during the journal write leaves a partial round and a torn line: both are dropped."""
    _, reference_root = reference_run
    config = tiny_config(run_dir=tmp_path / "torn")
    with pytest.raises(Killed):
        run_to_end(config, progress=kill_at("dpo a"))
    journal = tmp_path / "torn" / "iter_01" / "combat.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    (tmp_path / "torn" / "iter_01" / "done" / "combat").unlink()
    (tmp_path / "torn" / "iter_01" / "done" / "pairs").unlink()
    journal.write_text("".join(lines[:5]) + lines[5][:40])  # round 1 has only 1 of its 2 duels + a torn line
    run_to_end(config)
    assert_same(snapshot(reference_root), snapshot(tmp_path / "torn"))


def test_heterogeneous_pool_loads_each_base_once(tiny_config, tmp_path):
    config = tiny_config("pool.members=[{name: a, model: tiny}, {name: b, model: tiny}, {name: c, model: 'tiny:1'}]",
                         "iterations=1", "data.prompts_per_iteration=3", "arena.k=1")
    pipeline = Pipeline(config)
    root = pipeline.run_all().root
    assert pipeline.store.loads == 2  # two distinct bases, three members
    duels = read_jsonl(root / "iter_01" / "combat.jsonl")
    assert len(duels) == 3 and all(len(d["judgments"]) == 2 for d in duels)


@pytest.mark.parametrize("wait_for", ["iter_01/combat.jsonl", "iter_01/done/train-b", "iter_02/done/prompts"])
def test_kill_9_then_resume_matches(reference_run, tiny_config, tmp_path, wait_for):
    """A real SIGKILL of `sparta run` (wherever it lands after `wait_for` appears), then a resume: same results."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from sparta.config import dump_yaml

    _, reference_root = reference_run
    config = tiny_config("threads=1", run_dir=tmp_path / "kill9")
    path = tmp_path / "kill9.yaml"
    path.write_text(dump_yaml(config))
    assert yaml.safe_load(path.read_text())["run_dir"] == str(tmp_path / "kill9")
    proc = subprocess.Popen([sys.executable, "-m", "sparta.cli", "run", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "kill9" / wait_for).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "kill9" / wait_for).exists()
    assert not (tmp_path / "kill9" / "iter_02" / "done" / "iteration").exists()  # it really died mid-run
    run_to_end(config)
    assert_same(snapshot(reference_root), snapshot(tmp_path / "kill9"))


def _dev_results(root, metrics: dict[str, dict[str, float]]) -> None:
    """RUN/eval/iter_00/medqa-dev.json as if already evaluated, `metrics` = {metric: {member: value}} (a whole file:
    reading it checks every key the pipeline writes); the first metric is the primary one."""
    from sparta.records import write_json_atomic

    members = next(iter(metrics.values()))
    write_json_atomic(root / "eval" / "iter_00" / "medqa-dev.json", {
        "task": "medqa", "kind": "mc", "split": "dev", "iteration": 0, "n_examples": 3, "results": {
            m: {"metrics": {name: {"value": values[m], "n": 3, "failed": 0, "ci95": [0.0, 1.0]}
                            for name, values in metrics.items()},
                "primary": next(iter(metrics)), "examples": [], "wall_s": 1.0} for m in members}})


def test_initial_reputations_from_dev_scores(tiny_config, tmp_path):
    """reputation.initial=TASK: the members' dev scores, z-scored to mean 100 / std 20, start iteration 1, and
    are kept, so a resumed run starts from the same ratings even if the eval file changes."""
    config = tiny_config("iterations=1", "reputation.initial=medqa", "eval.limit=3")
    pipeline = Pipeline(config)
    pipeline.prepare()
    root = pipeline.run.root
    # a, b, c, d score .1, .2, .3, .6 by the primary metric
    _dev_results(root, {"letter": {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.6}})
    state = pipeline.start_state(1)
    # mean .3, population std sqrt(.035) = .18708: d = 100 + 20 * .3 / .18708 = 132.07
    assert state.ratings["d"] == pytest.approx(132.0713, abs=1e-3)
    assert state.ratings["a"] == pytest.approx(100 - 20 * 0.2 / 0.035 ** 0.5, abs=1e-6)
    assert sum(state.ratings.values()) == pytest.approx(400)
    (root / "eval" / "iter_00" / "medqa-dev.json").unlink()
    again = Pipeline(config)
    again.prepare()
    assert again.start_state(1).ratings == state.ratings  # kept, not recomputed
    run_to_end(config)
    rep = json.loads((root / "iter_01" / "reputations.json").read_text())
    assert rep["ratings"]["d"] > rep["ratings"]["a"] + 50  # a few tiny duels cannot undo a 64-point head start
    report = (root / "report.md").read_text()
    assert "| member | start (medqa dev) | iter 1 |" in report and "| d | 132.071 |" in report
    # at a glance: start, now and the change of each member, from the files
    assert "Reputations started from the members' dev scores on medqa (letter" in report
    for m in "abcd":
        start, now = state.ratings[m], rep["ratings"][m]
        assert f"| {m} | {start:.3f} | {now:.3f} | {now - start:+.3f} |" in report


def test_initial_reputations_from_a_chosen_metric(tiny_config, tmp_path):
    """reputation.initial_metric picks which dev metric ranks the start (the demo: loglik, which no letter bias
    moves); a metric the results lack fails naming the ones they have; without a task it is a config error."""
    config = tiny_config("iterations=1", "reputation.initial=medqa", "reputation.initial_metric=loglik")
    pipeline = Pipeline(config)
    pipeline.prepare()
    # the two metrics rank the members in opposite orders
    _dev_results(pipeline.run.root, {"letter": {"a": 0.6, "b": 0.3, "c": 0.2, "d": 0.1},
                                     "loglik": {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.6}})
    ratings = pipeline.start_state(1).ratings
    assert ratings["d"] == pytest.approx(132.0713, abs=1e-3) and max(ratings, key=ratings.get) == "d"
    kept = json.loads(pipeline.run.initial_reputations.read_text())
    assert kept["metric"] == dict.fromkeys("abcd", "loglik") and kept["scores"]["d"] == 0.6

    wrong = Pipeline(tiny_config("iterations=1", "reputation.initial=medqa", "reputation.initial_metric=circular",
                                 run_dir=tmp_path / "wrong"))
    wrong.prepare()
    _dev_results(wrong.run.root, {"letter": dict.fromkeys("abcd", 0.5)})
    with pytest.raises(RuntimeError, match=r"initial_metric='circular'.*have \['letter'\]"):
        wrong.start_state(1)
    with pytest.raises(ConfigError, match="initial_metric='loglik' needs reputation.initial = a task"):
        tiny_config("reputation.initial_metric=loglik")


def test_initial_reputations_evaluate_dev_when_missing(tiny_config):
    config = tiny_config("iterations=1", "reputation.initial=gsm8k", "eval.limit=2", "eval.max_new_tokens=4")
    pipeline = Pipeline(config)
    pipeline.prepare()
    state = pipeline.start_state(1)
    kept = json.loads((pipeline.run.root / "initial_reputations.json").read_text())
    assert kept["task"] == "gsm8k" and set(kept["scores"]) == set("abcd")
    assert (pipeline.run.root / "eval" / "iter_00" / "gsm8k-dev.json").exists()
    assert state.ratings == kept["state"]["ratings"]
    # scored on eval.limit items drawn as every evaluation of the run draws them (run seed, task, split)
    dev = json.loads((pipeline.run.root / "eval" / "iter_00" / "gsm8k-dev.json").read_text())
    n_dev = len(get_task("gsm8k").examples("dev"))
    assert dev["subset"] == {"seed": config.seed, "of": n_dev, "indices": draw_items(n_dev, 2, config.seed, "gsm8k",
                                                                                      "dev")}


@pytest.mark.parametrize("value,message", [("alpaca", "scored by an evaluator"), ("nope", "nope")])
def test_initial_reputations_reject_bad_tasks(tiny_config, value, message):
    with pytest.raises((ValueError, KeyError), match=message):
        Pipeline(tiny_config(f"reputation.initial={value}")).check()


def test_resume_with_new_eval_keys_reads_each_iterations_own_adapters(tiny_config, tmp_path):
    """A finished run resumed with `eval` changed (allowed) and one more iteration: every stage must load the pool
    as it stands at its own iteration. References that cannot share a stale-pool bug: each iteration run by a
    fresh Pipeline (its first load is at that iteration), each evaluation by a fresh Pipeline."""
    evals = ["eval.tasks=[medqa]", "eval.splits=[dev]", "eval.limit=2"]
    reference = tmp_path / "reference"
    for n in (1, 2, 3):
        run_to_end(tiny_config(f"iterations={n}", run_dir=reference))
    resumed = tmp_path / "resumed"
    run_to_end(tiny_config(run_dir=resumed))  # two iterations, no evaluation
    run_to_end(tiny_config("iterations=3", *evals, run_dir=resumed))  # evaluates 0..3, fights and trains 3
    assert_same(snapshot(reference, iterations=3), snapshot(resumed, iterations=3))
    for t in range(4):
        path = Pipeline(tiny_config("iterations=3", run_dir=reference)).evaluate("medqa", "dev", t, limit=2)
        fresh = json.loads(path.read_text())["results"]
        got = json.loads((resumed / f"eval/iter_{t:02d}/medqa-dev.json").read_text())["results"]
        for m in "abcd":
            assert got[m]["examples"] == fresh[m]["examples"], (t, m)


def test_out_of_memory_stops_the_run_and_keeps_finished_rounds(reference_run, tiny_config, tmp_path, monkeypatch):
    """OOM is not a failed duel: the run stops with the error, the journaled rounds stay, and a resume completes
    with the results of an uninterrupted run."""
    from sparta.backends.hf import HFBackend

    _, reference_root = reference_run
    config = tiny_config(run_dir=tmp_path / "oom")
    real, calls = HFBackend._generate_batch, []

    def second_batch_ooms(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HFBackend, "_generate_batch", second_batch_ooms)
    with pytest.raises(torch.OutOfMemoryError):
        run_to_end(config)
    it = tmp_path / "oom" / "iter_01"
    assert len(read_jsonl(it / "combat.jsonl")) == 4  # round 0 (4 duels) journaled; round 1 died
    assert not (it / "done" / "combat").exists()
    monkeypatch.setattr(HFBackend, "_generate_batch", real)
    run_to_end(config)
    assert_same(snapshot(reference_root), snapshot(tmp_path / "oom"))


def test_an_iteration_whose_every_generation_failed_stops_loudly(tiny_config, tmp_path):
    from sparta.backends import BackendError

    config = tiny_config("generation.max_new_tokens=2100", "training.max_length=2400",
                         "judge.max_prompt_tokens=2400", run_dir=tmp_path / "allfail")
    with pytest.raises(BackendError, match="all 12 generations of the iteration failed .*context window"):
        run_to_end(config)
    assert not (tmp_path / "allfail" / "iter_01" / "done" / "combat").exists()


def test_a_run_without_the_after_pass_reports_and_summarises(tiny_config, tmp_path, capsys):
    """training.after_limit=0: no "after" metrics in the training files; the report and the summary show "-"."""
    from sparta.cli import print_summary

    config = tiny_config("iterations=1", "training.after_limit=0")
    pipeline = Pipeline(config)
    root = pipeline.run_all().root
    training = [json.loads(p.read_text()) for p in sorted((root / "iter_01" / "training").glob("*.json"))]
    assert len(training) == 4 and all(t["steps"] > 0 and "after" not in t for t in training)
    assert all(set(t["seconds"]) == {"reference", "steps"} for t in training)
    report = (root / "report.md").read_text().split("## Reputations after each iteration")[1]
    assert all(f"| {m} |" in report and report.split(f"| {m} |")[1].split("\n")[0].endswith("| - |") for m in "abcd")
    print_summary(pipeline.summary(1))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(tuple("abcd"))]
    assert len(rows) == 4 and all(row.rstrip().endswith("  -") for row in rows)


def test_the_report_and_summary_say_how_many_pairs_the_after_pass_scored(reference_run, capsys):
    """The after-pass scores a sample (training.after_limit): its numbers are labelled with its size."""
    from sparta.cli import print_summary

    config, root = reference_run
    training = {m: json.loads((root / "iter_02" / "training" / f"{m}.json").read_text()) for m in "abcd"}
    report = (root / "report.md").read_text().split("## Reputations after each iteration")[1]
    for m, t in training.items():
        row = report.split(f"| {m} |")[1].split("\n")[0]
        assert row.endswith(f"({t['after']['pairs']} pairs) |") and t["after"]["pairs"] > 0
    pipeline = Pipeline(config)
    pipeline.prepare()  # reopens the finished run
    print_summary(pipeline.summary(2))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(tuple("abcd"))]
    assert len(rows) == 4 and all(line.endswith(f"({training[line[0]]['after']['pairs']} pairs)") for line in rows)
