"""`sparta compare`: the tables from hand-built run directories (exact numbers, missing cells, failed counts),
the plan's checks, and two tiny arms end to end through the CLI (written, resumed as a no-op, and as a sweep)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sparta import cli
from sparta.compare import (
    PAPER_TASKS,
    Plan,
    collect,
    make_plan,
    merge,
    read_compares,
    render_markdown,
    render_table,
    with_compare_eval,
    write_comparison,
)
from sparta.config import ConfigError, dump_yaml
from sparta.records import write_json_atomic
from sparta.tasks.catalog import TASKS


def result(value: float, n: int, lo: float, hi: float, failed: int = 0, metric: str = "letter") -> dict:
    return {"primary": metric, "metrics": {metric: {"value": value, "n": n, "failed": failed, "ci95": [lo, hi]}},
            "examples": [], "wall_s": 1.0}


def write_eval(root: Path, t: int, task: str, results: dict, n_examples: int = 10, models: dict | None = None):
    write_json_atomic(root / "eval" / f"iter_{t:02d}" / f"{task}-test.json",
                      {"task": task, "kind": "mc", "split": "test", "iteration": t, "n_examples": n_examples,
                       "evaluator": None, "models": models or {}, "results": results})


def finish(root: Path, t: int, ratings: dict) -> None:
    write_json_atomic(root / f"iter_{t:02d}" / "reputations.json",
                      {"ratings": ratings, "sigmas": dict.fromkeys(ratings, 0.5)})
    (root / f"iter_{t:02d}" / "done").mkdir(parents=True)
    (root / f"iter_{t:02d}" / "done" / "iteration").write_text("")


@pytest.fixture
def table(tmp_path):
    """Three arms: one with a full medqa row and gsm8k only at iteration 0, one with a loss and a zero start,
    one never evaluated."""
    sparta, alpha, empty = tmp_path / "sparta", tmp_path / "alpha1", tmp_path / "empty"
    # c failed every example (NaN mean): it must never be picked as best, even placed first
    write_eval(sparta, 0, "medqa", {"c": result(float("nan"), 0, float("nan"), float("nan"), failed=10),
                                    "a": result(0.5, 10, 0.3, 0.7), "b": result(0.6, 9, 0.4, 0.8, failed=1)})
    # tiny:1 is a model from outside the pool (sparta eval --members SPEC): never the pool's best
    write_eval(sparta, 2, "medqa", {"c": result(0.2, 10, 0.0, 0.4), "a": result(0.75, 10, 0.6, 0.9),
                                    "b": result(0.7, 9, 0.5, 0.85, failed=1), "tiny:1": result(0.9, 10, 0.8, 1.0)},
               models={m: {"member": True} for m in "abc"} | {"tiny:1": {"member": False}})
    write_eval(sparta, 0, "gsm8k", {"a": result(0.3, 10, 0.1, 0.5, metric="flexible")})
    finish(sparta, 1, {"a": 100.0, "b": 100.0, "c": 100.0})
    finish(sparta, 2, {"a": 110.0, "b": 120.0, "c": 70.0})
    write_eval(alpha, 0, "medqa", {"a": result(0.4, 100, 0.35, 0.45)})
    write_eval(alpha, 1, "medqa", {"a": result(0.3, 100, 0.25, 0.34)})
    write_eval(alpha, 0, "gsm8k", {"a": result(0.0, 10, 0.0, 0.0, metric="flexible")})
    write_eval(alpha, 1, "gsm8k", {"a": result(0.2, 5, 0.0, 0.6, metric="flexible")}, n_examples=5)
    finish(alpha, 1, {"a": 100.0})
    return collect({"sparta": (sparta, 2), "alpha1": (alpha, 1), "empty": (empty, 1)}, ("medqa", "gsm8k"), "test")


def test_table_numbers_from_run_directories(table):
    row = table["arms"]["sparta"]["tasks"]["medqa"]
    assert row["metric"] == "letter"
    assert row["best_initial"] == {"member": "b", "value": 0.6, "ci95": [0.4, 0.8], "n": 9, "failed": 1}
    assert row["best"] == {"member": "a", "value": 0.75, "ci95": [0.6, 0.9], "n": 10, "failed": 0}
    assert row["top_reputation"] == {"member": "b", "value": 0.7, "ci95": [0.5, 0.85], "n": 9, "failed": 1,
                                     "reputation": 120.0}
    assert row["relative_gain"] == pytest.approx((0.75 - 0.6) / 0.6) and row["cis_overlap"] is True
    loss = table["arms"]["alpha1"]["tasks"]["medqa"]
    assert loss["relative_gain"] == pytest.approx(-0.25) and loss["cis_overlap"] is False
    assert table["arms"]["sparta"]["mean_relative_gain"] == pytest.approx(0.25)
    assert table["arms"]["sparta"]["tasks_with_gain"] == 1


def test_missing_evaluations_are_said_never_invented(table):
    gsm = table["arms"]["sparta"]["tasks"]["gsm8k"]
    assert gsm["best_initial"]["value"] == 0.3
    assert gsm["best"] == gsm["top_reputation"] == {"missing": "not evaluated after iteration 2"}
    assert gsm["relative_gain"] is None
    empty = table["arms"]["empty"]
    assert empty["tasks"]["medqa"]["best_initial"] == {"missing": "not evaluated at iteration 0"}
    assert empty["tasks"]["medqa"]["best"] == {"missing": "iteration 1 not finished"}
    assert empty["mean_relative_gain"] is None
    zero = table["arms"]["alpha1"]["tasks"]["gsm8k"]
    assert zero["relative_gain"] is None and zero["best"]["value"] == 0.2  # a gain from 0 is undefined
    assert zero["notes"] == ["iteration 0 and 1 were scored on different numbers of examples (10 vs 5)"]


def test_markdown_shows_cells_failed_counts_and_the_noise_rule(table, tmp_path):
    md_path, json_path = write_comparison(tmp_path / "out", table)
    md = md_path.read_text()
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(table))
    assert "the difference between them is noise" in md
    assert ("| sparta | b 0.600 [0.400, 0.800] (n=9, failed 1) | a 0.750 [0.600, 0.900] (n=10, failed 0) | "
            "b 0.700 [0.500, 0.850] (n=9, failed 1) (reputation 120.0) | +25.0% (CIs overlap) |") in md
    assert "| alpha1 | a 0.400 [0.350, 0.450] (n=100, failed 0) | a 0.300 [0.250, 0.340] (n=100, failed 0) | " in md
    assert "(reputation 100.0) | -25.0% |" in md  # no overlap: no noise mark
    assert ("| sparta | a 0.300 [0.100, 0.500] (n=10, failed 0) | not evaluated after iteration 2 | "
            "not evaluated after iteration 2 | - |") in md
    assert "| empty | not evaluated at iteration 0 | iteration 1 not finished | iteration 1 not finished | - |" in md
    assert "- alpha1: iteration 0 and 1 were scored on different numbers of examples (10 vs 5)" in md
    summary = md[md.index("## Summary"):]
    assert "| arm | medqa | gsm8k | mean |" in summary
    assert "| sparta | +25.0% ~ | not evaluated after iteration 2 | +25.0% (1 of 2 tasks) |" in summary
    assert "| alpha1 | -25.0% | undefined (best initial is 0) | -25.0% (1 of 2 tasks) |" in summary
    assert "| empty | not evaluated at iteration 0 | not evaluated at iteration 0 | - |" in summary
    assert render_markdown(table) == md  # the markdown is a function of the table alone


def mc_result(letter: float, circular: float, baseline: float = 0.5) -> dict:
    """An MC result as _mc writes it: letter primary, a circular metric beside it, the majority-letter baseline."""
    return {"primary": "letter", "examples": [], "wall_s": 1.0,
            "metrics": {"letter": {"value": letter, "n": 10, "failed": 0, "ci95": [letter - 0.1, letter + 0.1]},
                        "loglik_circular": {"value": circular, "n": 10, "failed": 0,
                                            "ci95": [circular / 2, circular * 2]}},
            "majority_baseline": {"letter": "A", "value": baseline, "gold": {"A": 5, "B": 3, "C": 2}}}


def test_metric_chooses_the_compared_metric_and_the_baseline_is_shown(tmp_path):
    """Letter: b is best at 0.6, then a at 0.55 -- a gain of -8.3% that beats no baseline (always A: 0.5). On
    loglik_circular the same files say a rose from 0.1 to 0.3, a gain of +200%."""
    root = tmp_path / "run"
    write_eval(root, 0, "medqa", {"a": mc_result(0.5, 0.1), "b": mc_result(0.6, 0.0)})
    write_eval(root, 1, "medqa", {"a": mc_result(0.55, 0.3), "b": mc_result(0.5, 0.2)})
    finish(root, 1, {"a": 110.0, "b": 90.0})
    letter = collect({"x": (root, 1)}, ("medqa",), "test")["arms"]["x"]["tasks"]["medqa"]
    assert (letter["metric"], letter["best"]["member"]) == ("letter", "a")
    assert letter["relative_gain"] == pytest.approx((0.55 - 0.6) / 0.6)
    assert letter["majority_baseline"] == {"letter": "A", "value": 0.5}
    table = collect({"x": (root, 1)}, ("medqa",), "test", metric="loglik_circular")
    circular = table["arms"]["x"]["tasks"]["medqa"]
    assert circular["metric"] == "loglik_circular" and circular["best_initial"]["value"] == 0.1
    assert circular["relative_gain"] == pytest.approx(2.0)
    md = render_markdown(table)
    assert "## medqa (loglik_circular)" in md
    assert ("- x: always answering A (the most frequent gold letter) scores 0.500 (a circular metric's is 0)"
            in md)
    missing = collect({"x": (root, 1)}, ("medqa",), "test", metric="letter_circular")["arms"]["x"]["tasks"]["medqa"]
    assert missing["best"] == {"missing": "not scored on letter_circular"}  # eval.circular_letter was off


def test_files_scored_on_other_items_are_noted(tmp_path):
    root = tmp_path / "run"
    write_eval(root, 0, "medqa", {"a": mc_result(0.5, 0.1)})
    write_eval(root, 1, "medqa", {"a": mc_result(0.6, 0.1)})
    finish(root, 1, {"a": 100.0})
    for t, seed in ((0, 0), (1, 1)):  # the same limit, drawn with two seeds
        path = root / "eval" / f"iter_{t:02d}" / "medqa-test.json"
        write_json_atomic(path, {**json.loads(path.read_text()), "subset": {"seed": seed, "of": 20,
                                                                            "indices": list(range(seed, 10 + seed))}})
    row = collect({"x": (root, 1)}, ("medqa",), "test")["arms"]["x"]["tasks"]["medqa"]
    assert row["notes"] == ["iteration 0 and 1 were scored on different items of the split"]


# ---- the plan ---------------------------------------------------------------------------------------------

def test_compare_eval_overrides(tiny_config):
    plan = Plan((), ("medqa", "gsm8k"), "test", 7)
    c = with_compare_eval(tiny_config("iterations=3", "eval.tasks=[alpaca]", "eval.limit=2"), plan)
    assert (c.eval.tasks, c.eval.splits, c.eval.every, c.eval.limit) == (("medqa", "gsm8k"), ("test",), 3, 7)
    kept = with_compare_eval(tiny_config("eval.limit=2"), Plan((), ("medqa",)))
    assert kept.eval.limit == 2 and not kept.eval.circular_letter  # no --limit: the arm's own
    circular = with_compare_eval(tiny_config(), Plan((), ("medqa",), metric="letter_circular"))
    assert circular.eval.circular_letter  # comparing it needs the rotated generations


@pytest.mark.parametrize("case,message", [
    ("shared run_dir", "share run_dir"), ("arms and sweep", "not both"), ("unknown task", "unknown task 'nope'"),
    ("no tasks", "no tasks to compare on"), ("same name", "arm names must be unique")])
def test_bad_plans_are_config_errors_before_anything_runs(tiny_config, tmp_path, capsys, case, message):
    # small arms and --limit 1: if a check broke, the arms would run, and that should fail fast, not take minutes
    a = write_config(tmp_path / "a.yaml", tiny_config(*SMALL, run_dir=tmp_path / "runs" / "a"))
    b = write_config(tmp_path / "sub" / "a.yaml", tiny_config(*SMALL, "arena.alpha=1", run_dir=tmp_path / "runs" / "a"))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"arms": {"x": {"config": "a.yaml"}}, "tasks": ["medqa"]}))
    args = {"shared run_dir": [str(a), f"other={b}", "--tasks", "medqa"],
            "arms and sweep": [str(a), "--sweep", str(sweep)],
            "unknown task": [str(a), "--tasks", "nope"],
            "no tasks": [str(a)],
            "same name": [str(a), str(b), "--tasks", "medqa"]}[case]
    assert cli.main(["compare", *args, "--limit", "1", "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_sweep_paths_are_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "sweeps").mkdir()
    sweep = tmp_path / "sweeps" / "s.yaml"
    sweep.write_text(yaml.safe_dump({"arms": {"x": {"config": "../c.yaml", "overrides": ["arena.alpha=1"]}},
                                     "tasks": ["gsm8k"], "limit": 3}))
    plan = make_plan([], str(sweep), None, None, None)
    assert plan.arms[0].config.resolve() == (tmp_path / "c.yaml").resolve()
    assert (plan.arms[0].overrides, plan.tasks, plan.split, plan.limit) == (("arena.alpha=1",), ("gsm8k",), "test", 3)
    assert make_plan([], str(sweep), ["medqa"], "dev", 0).tasks == ("medqa",)  # the command line wins
    assert make_plan([], str(sweep), None, None, None, "loglik_circular").metric == "loglik_circular"
    sweep.write_text(yaml.safe_dump({"arms": {"x": {"config": "c.yaml", "override": []}}}))
    with pytest.raises(ConfigError, match="arms.x must be"):
        make_plan([], str(sweep), ["medqa"], None, None)


# ---- end to end -------------------------------------------------------------------------------------------

SMALL = ("iterations=1", "data.prompts_per_iteration=3", "arena.k=1")


def write_config(path: Path, config) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml(config))
    return path


class Recorder:
    """Stands in for the CLI's progress bars: records every stage that starts."""

    stages: list[str] = []

    def __call__(self, stage: str, total: int):
        Recorder.stages.append(stage)

    def close(self) -> None:
        pass


def run_files(runs: Path) -> dict[Path, int]:
    """The mtime of every stage output and evaluation (report.md, ratings.json, plots are rewritten each run)."""
    return {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and
            any(part.startswith(("iter_", "eval")) for part in p.relative_to(runs).parts)}


def test_two_tiny_arms_end_to_end_resume_and_sweep(tiny_config, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    base = write_config(tmp_path / "sparta.yaml", tiny_config(*SMALL, run_dir=runs / "sparta"))
    alpha = write_config(tmp_path / "alpha1.yaml", tiny_config(*SMALL, "arena.alpha=1", run_dir=runs / "alpha1"))
    monkeypatch.setattr(cli, "Bars", Recorder)
    monkeypatch.setattr(Recorder, "stages", [])
    out = tmp_path / "out"
    assert cli.main(["compare", str(base), f"alpha1={alpha}", "--tasks", "medqa", "--limit", "2",
                     "--out", str(out)]) == 0
    assert "eval a" in Recorder.stages and "dpo d" in Recorder.stages  # both arms ran: evaluated and trained
    printed = capsys.readouterr().out
    assert "=== arm sparta" in printed and "=== arm alpha1" in printed and "## Summary" in printed
    table = json.loads((out / "compare.json").read_text())
    assert list(table["arms"]) == ["sparta", "alpha1"] and table["split"] == "test"
    for name in ("sparta", "alpha1"):
        root = runs / name
        assert not (root / "eval" / "iter_00" / "medqa-dev.json").exists()  # the compared split only
        after = json.loads((root / "eval" / "iter_01" / "medqa-test.json").read_text())
        assert after["n_examples"] == 2 and set(after["results"]) == set("abcd")
        row = table["arms"][name]["tasks"]["medqa"]
        assert row["metric"] == "letter" and row["best"]["n"] + row["best"]["failed"] == 2
        assert row["best"]["value"] == max(r["metrics"]["letter"]["value"] for r in after["results"].values())
        ratings = json.loads((root / "iter_01" / "reputations.json").read_text())["ratings"]
        assert row["top_reputation"]["member"] == max(ratings, key=ratings.get)
    assert yaml.safe_load((runs / "alpha1" / "config.yaml").read_text())["arena"]["alpha"] == 1.0
    md = (out / "compare.md").read_text()
    assert "## medqa (letter)" in md and "| sparta | " in md and "| alpha1 | " in md

    stamps, first = run_files(runs), (out / "compare.json").read_text()
    Recorder.stages.clear()
    assert cli.main(["compare", str(base), f"alpha1={alpha}", "--tasks", "medqa", "--limit", "2",
                     "--out", str(out)]) == 0
    assert Recorder.stages == [] and run_files(runs) == stamps  # resumed: nothing evaluated or trained again
    assert (out / "compare.json").read_text() == first

    # the same two arms as a sweep: one config plus overrides, paths relative to the sweep file
    (tmp_path / "sweeps").mkdir()
    sweep = tmp_path / "sweeps" / "paper.yaml"
    sweep.write_text(yaml.safe_dump({"arms": {
        "sparta": {"config": "../sparta.yaml"},
        "alpha1": {"config": "../sparta.yaml", "overrides": ["arena.alpha=1", f"run_dir={runs / 'alpha1'}"]}},
        "tasks": ["medqa"], "limit": 2}, sort_keys=False))
    assert cli.main(["compare", "--sweep", str(sweep), "--out", str(tmp_path / "out2")]) == 0
    assert Recorder.stages == [] and run_files(runs) == stamps  # the sweep's arms are the runs already made
    assert (tmp_path / "out2" / "compare.json").read_text() == first


# ---- merging per-task compares ----------------------------------------------------------------------------

def one_task_compare(out: Path, task: str, arms: dict[str, tuple[float | None, float | None]]) -> Path:
    """OUT/compare.json of one task, written by collect() from real run directories: each arm's one member scores
    v0 at iteration 0 and v1 after iteration 1 (None: not evaluated then), on 100 examples, CI ±0.05."""
    runs = {}
    for name, scores in arms.items():
        run = out / "runs" / name
        for t, v in enumerate(scores):
            if v is not None:
                write_eval(run, t, task, {"a": result(v, 100, v - 0.05, v + 0.05)}, n_examples=100)
        finish(run, 1, {"a": 100.0})
        runs[name] = (run, 1)
    write_comparison(out, collect(runs, (task,), "test"))
    return out


@pytest.fixture
def compares(tmp_path) -> list[Path]:
    """Four per-task compares, given out of the paper's order; my_task is not a paper task."""
    root = tmp_path / "compare"
    return [one_task_compare(root / "truthfulqa", "truthfulqa", {"sparta": (0.41, None)}),
            one_task_compare(root / "my_task", "my_task", {"spin": (0.5, 0.3), "sparta": (0.5, 0.55)}),
            one_task_compare(root / "gsm8k", "gsm8k", {"sparta": (None, 0.81), "alpha1": (0.78, 0.8)}),
            one_task_compare(root / "medqa", "medqa", {"sparta": (0.6, 0.72), "alpha1": (0.59, 0.58)})]


def merged(paths: list[Path]) -> dict:
    return merge(read_compares([str(p) for p in paths]))


def test_merge_columns_in_the_papers_order_rows_in_first_seen_order(compares):
    table = merged(compares)
    assert table["tasks"] == ["medqa", "gsm8k", "truthfulqa", "my_task"]
    assert list(table["arms"]) == ["sparta", "spin", "alpha1"]
    assert table["split"] == "test" and table["inputs"] == [str(p / "compare.json") for p in compares]
    md = render_table(table)
    assert "| method | medqa (letter) | gsm8k (letter) | truthfulqa (letter) | my_task (letter) | mean gain |" in md
    assert set(PAPER_TASKS) == set(TASKS)  # every task of the catalog has its column


def test_merge_cells_and_missing_cells_say_why(compares):
    table = merged(compares)
    sparta, spin = table["arms"]["sparta"]["tasks"], table["arms"]["spin"]["tasks"]
    assert spin["medqa"] == {"missing": "not compared on medqa"}
    assert sparta["truthfulqa"]["best"] == {"missing": "not evaluated after iteration 1"}
    assert sparta["medqa"]["best"]["value"] == 0.72 and sparta["medqa"]["source"] == str(compares[3] / "compare.json")
    lines = render_table(table).splitlines()
    # a best after without a best initial has no gain; a cell without a best after shows no number at all
    assert ("| sparta | 0.720 [0.670, 0.770] +20.0% | 0.810 [0.760, 0.860] (no gain; best initial: not evaluated "
            "at iteration 0) | not evaluated after iteration 1 | 0.550 [0.500, 0.600] +10.0% ~ | "
            "+15.0% (2 of 4 tasks) |") in lines
    assert ("| spin | not compared on medqa | not compared on gsm8k | not compared on truthfulqa | "
            "0.300 [0.250, 0.350] -40.0% | -40.0% (1 of 4 tasks) |") in lines


def test_merge_best_initial_row_from_the_first_arm_that_has_it(compares):
    table = merged(compares)
    assert table["best_initial"]["gsm8k"]["arm"] == "alpha1"  # sparta has no iteration-0 score on gsm8k
    assert table["best_initial"]["medqa"]["arm"] == "sparta"
    assert "| best initial | 0.600 [0.550, 0.650] | 0.780 [0.730, 0.830] | 0.410 [0.360, 0.460] | " \
           "0.500 [0.450, 0.550] | |" in render_table(table)
    # medqa's two arms disagree on it, my_task's agree
    assert table["notes"] == ["medqa: the arms' best initial members differ (sparta a 0.600 (n=100), "
                              "alpha1 a 0.590 (n=100)); the row shows sparta's"]


def test_merge_mean_relative_gain_over_the_tasks_that_have_one(compares):
    arms = merged(compares)["arms"]
    assert arms["sparta"]["mean_relative_gain"] == pytest.approx((0.2 + 0.1) / 2)
    assert arms["sparta"]["tasks_with_gain"] == 2
    assert arms["alpha1"]["mean_relative_gain"] == pytest.approx(((0.58 - 0.59) / 0.59 + (0.8 - 0.78) / 0.78) / 2)
    assert arms["spin"]["tasks_with_gain"] == 1


def test_merge_refuses_a_task_of_an_arm_twice_and_mixed_splits(compares, tmp_path):
    again = one_task_compare(tmp_path / "medqa2", "medqa", {"other": (0.6, 0.6), "sparta": (0.6, 0.7)})
    with pytest.raises(ValueError, match=f"arm 'sparta' has medqa in both {compares[3] / 'compare.json'} and "
                                         f"{again / 'compare.json'}"):
        merged([*compares, again])
    dev = json.loads((compares[0] / "compare.json").read_text()) | {"split": "dev"}
    (tmp_path / "dev.json").write_text(json.dumps(dev))
    with pytest.raises(ValueError, match="different splits: .*medqa/compare.json \\(test\\), .*dev.json \\(dev\\)"):
        merged([compares[3], tmp_path / "dev.json"])


def test_merge_cli_writes_the_table_from_json_alone(compares, tmp_path, capsys):
    for runs in (p / "runs" for p in compares):  # no run directory is read
        for f in sorted(runs.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    out = tmp_path / "table"
    inputs = [str(compares[0] / "compare.json"), *map(str, compares[1:])]  # a file, or its directory
    assert cli.main(["compare", "--merge", *inputs, "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    assert table == json.loads(json.dumps(merged(compares)))
    assert (out / "table.md").read_text() == render_table(table)
    assert "| sparta | 0.720 [0.670, 0.770] +20.0% |" in capsys.readouterr().out
    assert cli.main(["compare", "--merge", *inputs, str(compares[3]), "--out", str(tmp_path / "bad")]) == 2
    assert "has medqa in both" in capsys.readouterr().err
    assert cli.main(["compare", "--merge", *inputs, "--tasks", "medqa", "--out", str(tmp_path / "bad")]) == 2
    assert "drop --tasks" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert cli.main(["compare", "--merge", *inputs, str(out / "table.json"), "--out", str(tmp_path / "bad")]) == 2
    assert "table.json is not a compare.json" in capsys.readouterr().err  # its own output is not an input
    (tmp_path / "empty").mkdir()  # a directory means DIR/compare.json
    assert cli.main(["compare", "--merge", str(tmp_path / "empty"), "--out", str(tmp_path / "bad")]) == 2
    assert "empty/compare.json does not exist" in capsys.readouterr().err and not (tmp_path / "bad").exists()
