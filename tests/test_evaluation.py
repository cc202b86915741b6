"""Evaluation: bootstrap intervals by hand, every task kind through the real tiny backend, failures kept apart,
and `sparta eval` on a finished run."""

import json
import math
from collections import Counter

import pytest

from sparta.arena.judging import JUDGE_PROMPT
from sparta.backends import Generated, MemberModel
from sparta.backends.hf import HFBackend
from sparta.cli import main
from sparta.config import EvalConfig, LoraConfig
from sparta.eval_results import EvalFile
from sparta.evaluation import Evaluator, bootstrap_ci, evaluate, summarise
from sparta.models import resolve_model
from sparta.tasks.catalog import Example, get_task


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    """Values 0,0,1,1 (mean 0.5): resampled means are multiples of 1/4 in [0, 1]; the 95% interval of a
    symmetric 4-point sample is [0, 1] or [0.25, 0.75] depending on draws — it must contain 0.5, be
    ordered, and repeat for the same seed. A constant sample has a zero-width interval."""
    lo, hi = bootstrap_ci([0, 0, 1, 1], 1000, seed=3)
    assert 0 <= lo <= 0.5 <= hi <= 1 and lo < hi
    assert bootstrap_ci([0, 0, 1, 1], 1000, seed=3) == (lo, hi)
    assert bootstrap_ci([1.0] * 7, 200, seed=0) == (1.0, 1.0)


def test_summarise_counts_failures_apart():
    m = summarise([1.0, 0.0, None, 1.0], EvalConfig(bootstrap=100), seed=0)
    assert m["value"] == pytest.approx(2 / 3) and m["n"] == 3 and m["failed"] == 1


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    resolved = resolve_model("tiny", tmp_path_factory.mktemp("cache"))
    return HFBackend([MemberModel(n, resolved, None) for n in ("a", "b")], LoraConfig(dropout=0.0), seed=0)


SETTINGS = EvalConfig(max_new_tokens=8, mc_max_new_tokens=4, bootstrap=50)


@pytest.mark.parametrize("task", ["gsm8k", "math_easy", "medqa", "normad_country", "alpaca"])
def test_every_kind_runs_on_a_real_model(backend, task):
    t = get_task(task)
    examples = t.examples("dev")[:3]
    results = evaluate(backend, ["a", "b"], t, examples, SETTINGS, evaluator="b")
    for member in ("a", "b"):
        r = results[member]
        assert r["primary"] in r["metrics"] and len(r["examples"]) == 3
        for m in r["metrics"].values():
            assert m["n"] + m["failed"] == 3 and m["ci95"][0] <= m["value"] <= m["ci95"][1]
    if t.kind == "mc":
        row = results["a"]["examples"][0]
        assert set(row["option_logliks"]) == set(examples[0].choices) and row["loglik_pick"] in examples[0].choices
    if t.kind == "judged":
        assert all(1 <= row["score"] <= 10 for row in results["a"]["examples"])


class Scripted:
    """A real backend with scripted generations, to check grading on known outputs."""

    def __init__(self, inner, outputs):
        self.inner, self.outputs = inner, outputs

    def tokenizer(self, m):
        return self.inner.tokenizer(m)

    def continuation_logprobs(self, *args, **kwargs):
        return self.inner.continuation_logprobs(*args, **kwargs)

    def generate(self, members, prompts, **kw):
        return [self.outputs[i] for i in range(len(prompts))]


def test_grading_and_failures_on_scripted_outputs(backend):
    examples = [Example("x:0", "2+2?", "4"), Example("x:1", "3+3?", "6"), Example("x:2", "1+1?", "2")]
    outputs = [Generated("So 2+2 = 4. The answer is 4."), Generated("It is 5, wait, 6"), Generated(None, error="boom")]
    r = evaluate(Scripted(backend, outputs), ["a"], get_task("gsm8k"), examples, SETTINGS)["a"]
    assert r["metrics"]["flexible"] == {**r["metrics"]["flexible"], "value": 1.0, "n": 2, "failed": 1}
    assert r["metrics"]["strict"]["value"] == 0.5  # only the first states "The answer is"
    assert r["examples"][2]["method"] == "failed" and r["examples"][2]["error"] == "boom"


def test_mc_letter_grader_on_scripted_outputs(backend):
    ex = Example("m:0", "Capital of France?", "B", {"A": "Rome", "B": "Paris", "C": "Oslo"})
    outputs = [Generated("The answer is (B)."), Generated("I think Rome is right.")]
    r = evaluate(Scripted(backend, outputs), ["a"], get_task("medqa"), [ex, ex], SETTINGS)["a"]
    assert [row["letter_correct"] for row in r["examples"]] == [True, False]
    assert r["examples"][1]["letter"] == "A" and r["examples"][1]["letter_method"] == "option_text"


def same_text(path) -> bool:
    """The typed file gives back the JSON text the writer wrote (sparta.eval_results)."""
    return json.dumps(EvalFile.read(path).to_dict(), indent=2) + "\n" == path.read_text()


def test_sparta_eval_on_a_run_directory(tiny_config, tmp_path, capsys):
    from sparta.pipeline import Pipeline

    config = tiny_config("iterations=1", "data.prompts_per_iteration=3", "arena.k=1")
    Pipeline(config).run_all()
    assert main(["eval", config.run_dir, "--task", "medqa", "--limit", "3", "--iteration", "0"]) == 0
    assert main(["eval", config.run_dir, "--task", "medqa", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "letter*" in out and "loglik " in out and "loglik_norm " in out  # letter is MC's primary
    assert "loglik_circular " in out and "picked: letter " in out and "majority-letter baseline (always " in out
    assert "medqa (dev, 3 of 636 items, drawn with seed 0)" in out
    before = json.loads((tmp_path / "run" / "eval" / "iter_00" / "medqa-dev.json").read_text())
    after = json.loads((tmp_path / "run" / "eval" / "iter_01" / "medqa-dev.json").read_text())
    assert before["iteration"] == 0 and after["iteration"] == 1 and set(after["results"]) == set("abcd")
    # --limit 3 drew three items with the run seed, not the first three: the same for every member and both files
    dev = get_task("medqa").examples("dev")
    assert before["subset"] == after["subset"] == {"seed": 0, "of": 636, "indices": before["subset"]["indices"]}
    drawn = [dev[i].id for i in before["subset"]["indices"]]
    assert drawn != [e.id for e in dev[:3]]
    assert {tuple(row["id"] for row in r["examples"]) for data in (before, after)
            for r in data["results"].values()} == {tuple(drawn)}
    assert before["results"]["a"]["majority_baseline"]["gold"] == dict(Counter(dev[i].answer for i in
                                                                               before["subset"]["indices"]))
    # DPO changed the adapters (lr 0.01 on the tiny model), so option log-likelihoods moved
    assert before["results"]["a"]["examples"][0]["option_logliks"] != after["results"]["a"]["examples"][0][
        "option_logliks"]
    assert main(["eval", config.run_dir, "--task", "medqa", "--iteration", "5"]) == 1  # not finished: clear error
    assert "has not finished" in capsys.readouterr().err


def test_run_with_evaluation_writes_report_and_plots(tiny_config, tmp_path):
    from sparta.pipeline import Pipeline

    config = tiny_config("eval.tasks=[medqa, gsm8k]", "eval.limit=4", "eval.max_new_tokens=8", "arena.k=1")
    root = Pipeline(config).run_all().root
    for t in (0, 1, 2):
        for task in ("medqa", "gsm8k"):
            for split in ("dev", "test"):
                path = root / "eval" / f"iter_{t:02d}" / f"{task}-{split}.json"
                data = json.loads(path.read_text())
                assert data["n_examples"] == 4 and set(data["results"]) == set("abcd")
                assert same_text(path)
    report = (root / "report.md").read_text()
    assert "### medqa (test, n=4): letter (primary)" in report and "after iter 2" in report
    assert "### medqa (test, n=4): loglik_norm" in report and "### gsm8k (dev, n=4): strict" in report
    assert "Best initial member (chosen on dev)" in report
    # the letter-bias checks of the last MC file: its majority-letter baseline and each member's picks
    last = json.loads((root / "eval" / "iter_02" / "medqa-test.json").read_text())
    baseline = last["results"]["a"]["majority_baseline"]
    assert (f"Majority-letter baseline: always answering **{baseline['letter']}** scores {baseline['value']:.3f} "
            "on these 4 items") in report
    picks = last["results"]["a"]["metrics"]["loglik_circular"]["picks"]
    assert "| member | letter | loglik | loglik_norm | loglik_listed | loglik_circular |" in report
    assert ", ".join(f"{k} {v}" for k, v in picks.items()) + " |\n| b |" in report
    assert "### gsm8k (dev, n=4): strict" in report and "always answering" not in report.split("### gsm8k")[1]
    assert (root / "reputations.png").stat().st_size > 1000
    assert (root / "reputation_vs_medqa.png").exists() and (root / "reputation_vs_gsm8k.png").exists()
    # rerunning redoes nothing: evaluation files are done once
    stamps = {p: p.stat().st_mtime_ns for p in (root / "eval").rglob("*.json")}
    Pipeline(config).run_all()
    assert {p: p.stat().st_mtime_ns for p in (root / "eval").rglob("*.json")} == stamps


def test_pearson_by_hand():
    """xs = 1,2,3 ; ys = 2,4,7: means 2 and 13/3; Σdxdy = (-1)(-7/3) + 0 + (1)(8/3) = 5;
    Σdx² = 2; Σdy² = 49/9 + 1/9 + 64/9 = 114/9; r = 5 / sqrt(2 · 114/9) = 5 / 5.0332 = 0.99340."""
    from sparta.report import pearson

    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(0.99340, abs=1e-5)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def _duel(pid, text_a, text_b, outcome, scores):
    judgments = [{"judge": j, "target": side, "score": s, "status": "ok"}
                 for j, pair in scores.items() for side, s in zip("ab", pair)]
    return {"prompt_id": pid, "prompt": "", "response_a": {"text": text_a}, "response_b": {"text": text_b},
            "outcome": outcome, "score_a": 1.0, "score_b": 0.0, "judgments": judgments}


def test_judge_agreement_counts_only_duels_with_one_correct_answer():
    """p1: a correct (72), verdict a, judge x agrees (7 > 3), judge y disagrees (2 < 6).
    p2: both correct → skipped. p3: b correct (5), verdict a → aggregate wrong; x agrees (4 > 1), y agrees (9 > 8).
    Aggregate 1/2; x 2/2; y 1/2."""
    from sparta.report import judge_agreement

    refs = {"p1": "72", "p2": "3", "p3": "5"}
    duels = [_duel("p1", "The answer is 72.", "It is 70.", "a", {"x": (7, 3), "y": (2, 6)}),
             _duel("p2", "3", "so 3", "b", {"x": (1, 2)}),
             _duel("p3", "I get 6", "5", "a", {"x": (1, 4), "y": (8, 9)}),
             _duel("p4", "1", "2", "a", {"x": (1, 2)})]  # no reference: skipped
    a = judge_agreement(duels, refs, "gsm8k")
    assert a["duels"] == 2 and a["aggregate"] == 0.5
    assert a["per_judge"] == {"x": {"agree": 2, "of": 2, "rate": 1.0}, "y": {"agree": 1, "of": 2, "rate": 0.5}}


def test_report_has_judge_agreement_for_math_prompts(tiny_config):
    from sparta.pipeline import Pipeline

    config = tiny_config("data.prompts=math_easy", "iterations=1", "arena.k=1")
    root = Pipeline(config).run_all().root
    report = (root / "report.md").read_text()
    assert "## Judge agreement with reference answers" in report and "| 1 |" in report
    # ratings.json's judge diagnostics carry the same per-judge agreement with the references
    from sparta.judge_diagnostics import gold_references, judge_agreement
    from sparta.records import read_json, read_jsonl

    references, grader = gold_references("math_easy", None)
    expected = judge_agreement(read_jsonl(root / "iter_01" / "combat.jsonl"), references, grader)
    assert read_json(root / "ratings.json")["per_iteration"]["1"]["judges"]["gold"] == expected


def test_shared_prefix_option_scores_equal_full_sequence_scores(backend):
    """Scoring options on a cached prefix must give the same numbers as scoring each whole sequence."""
    import torch

    from sparta.training import encode_example, sequence_logprobs

    tok = backend.tokenizer("a")
    questions = {"Which is a fruit?": ["apple", "a red car", "stone"], "2+2?": ["4", "five hundred"]}
    prefixes, conts, full = [], [], []
    for q, options in questions.items():
        enc = [encode_example(tok, q, o, 512) for o in options]
        start = enc[0][1]
        prefixes.append(enc[0][0][:start])
        conts.append([ids[start:] for ids, _ in enc])
        full += enc
    shared = backend.continuation_logprobs("a", prefixes, conts, batch_size=2)
    model, adapter = backend.adapter("a")
    model.set_adapter(adapter)  # score the whole sequences with member a's adapter active
    with torch.inference_mode():
        # share_prompts=False: each sequence whole in its own row, not on the prompt cache it is checked against
        whole, _ = sequence_logprobs(model, full, tok.pad_token_id, "cpu", share_prompts=False)
    assert [x for row in shared for x in row] == pytest.approx(whole.tolist(), abs=1e-4)


def test_judge_agreement_on_multiple_choice_prompts():
    """The options are read from the prompt's "A. text" lines; the reference is a letter. p1: a says (B) = gold,
    b says Rome (A): a correct, verdict b → aggregate 0/1; judge x scored a higher → 1/1."""
    from sparta.report import judge_agreement
    from sparta.tasks.catalog import format_mc

    prompt = format_mc("Capital of France?", {"A": "Rome", "B": "Paris"})
    d = _duel("p1", "The answer is (B).", "It is Rome.", "b", {"x": (6, 2)})
    d["prompt"] = prompt
    a = judge_agreement([d], {"p1": "B"}, "mc")
    assert a["duels"] == 1 and a["aggregate"] == 0.0 and a["per_judge"]["x"]["rate"] == 1.0


def test_loglik_norm_divides_by_option_length(backend):
    """A "Rome" (4 chars) sums -8 → -2.0 per char; B "Paris, the city of light" (24 chars) sums -12 → -0.5.
    The plain sum picks A, the per-character rule picks B (the gold)."""
    ex = Example("m:0", "Capital of France?", "B", {"A": "Rome", "B": "Paris, the city of light"})

    class Fixed(Scripted):
        def continuation_logprobs(self, member, prefixes, continuations, batch_size):
            # by option text, whichever letter shows it (the listed prompts rotate the options)
            tok = backend.tokenizer("a")
            return [[-12.0 if "Paris" in tok.decode(ids) else -8.0 for ids in row] for row in continuations]

    r = evaluate(Fixed(backend, [Generated("B")]), ["a"], get_task("medqa"), [ex], SETTINGS)["a"]
    assert r["examples"][0]["loglik_pick"] == "A" and r["examples"][0]["loglik_norm_pick"] == "B"
    assert r["metrics"]["loglik"]["value"] == 0.0 and r["metrics"]["loglik_norm"]["value"] == 1.0


class Sequenced(Scripted):
    """Scripted generations, one list per generate call, and the prompts each call was given."""

    def __init__(self, inner, *calls):
        super().__init__(inner, None)
        self.calls, self.prompts = list(calls), []

    def generate(self, members, prompts, **kw):
        self.prompts.append(prompts)
        return self.calls.pop(0)


class Watched:
    """A real backend as an evaluator, keeping the prompts its judge reads."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def tokenizer(self, m):
        return self.inner.tokenizer(m)

    def next_token_logprobs(self, members, prompts, *args, **kw):
        self.seen += prompts
        return self.inner.next_token_logprobs(members, prompts, *args, **kw)


def test_com2_judged_free_text_beside_the_mc_metrics(backend):
    """Two COM2 items with a reference and one whose right option is "None of the answers are correct". The MC
    pass covers all three; the free-text pass asks the two usable ones: one answer is scored, one generation
    failed (counted failed, never scored), the third item is excluded. judged_score is primary."""
    dev = get_task("com2").examples("dev")
    usable = [e for e in dev if not e.meta["none_of_the_above"]][:2]
    nota = next(e for e in dev if e.meta["none_of_the_above"])
    free = [Generated("Gianna feels relieved."), Generated(None, error="boom")]
    member = Sequenced(backend, [Generated("A")] * 3, free)
    judge = Watched(backend)
    evaluator = Evaluator(judge, "b", {"name": "b", "spec": "tiny"})
    r = evaluate(member, ["a"], get_task("com2"), usable + [nota], SETTINGS, evaluator)["a"]
    assert r["primary"] == "judged_score"
    assert list(r["metrics"]) == ["judged_score", "letter", "loglik", "loglik_norm", "loglik_listed", "loglik_circular"]
    judged = r["metrics"]["judged_score"]
    assert (judged["n"], judged["failed"], judged["excluded"]) == (1, 1, 1) and 1 <= judged["value"] <= 10
    assert r["metrics"]["letter"]["n"] == 3 and r["evaluator"] == {"name": "b", "spec": "tiny"}
    assert r["judge_prompt"] == JUDGE_PROMPT
    rows = {row["id"]: row["free_text"] for row in r["examples"]}
    scored, failed = rows[usable[0].id], rows[usable[1].id]
    assert scored["output"] == "Gianna feels relieved." and scored["reference"] == "Gianna plan the solution"
    assert judged["value"] == scored["score"]
    assert failed["score"] is None and failed["error"] == "boom" and rows[nota.id] is None
    tok = backend.tokenizer("a")
    assert [usable[0].meta["free_text_question"] in tok.decode(ids) for ids in member.prompts[1]] == [True, False]
    # the judge read the free-text question and the answer (authors' prompt), not the reference
    (seen,) = [tok.decode(ids) for ids in judge.seen]
    assert usable[0].meta["free_text_question"] in seen and "Gianna feels relieved." in seen
    assert "Gianna plan the solution" not in seen

    alone = evaluate(Sequenced(backend, [Generated("A")] * 3), ["a"], get_task("com2"), usable + [nota], SETTINGS)["a"]
    assert alone["primary"] == "letter" and "judged_score" not in alone["metrics"]  # no evaluator: MC only


def test_free_text_task_needs_its_meta(backend):
    ex = Example("com2:dev:x", "Context: c\nQuestion: q?", "A", {"A": "x", "B": "y"})
    with pytest.raises(ValueError, match="com2:dev:x.*free_text_question"):
        evaluate(Sequenced(backend, [Generated("A")], []), ["a"], get_task("com2"), [ex], SETTINGS, "b")


def test_outside_evaluator_in_a_run_shares_the_loaded_base(tiny_config):
    """eval.evaluator = the pool's own base spec: it joins the pool's backend (one load), it is the base model
    itself (its next-token distribution equals the plain transformers model's), and the eval files record
    it and the judge prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from sparta.pipeline import Pipeline

    config = tiny_config("iterations=1", "data.prompts_per_iteration=3", "arena.k=1", "eval.tasks=[com2]",
                         "eval.splits=[dev]", "eval.limit=3", "eval.max_new_tokens=6", "eval.evaluator=tiny")
    pipeline = Pipeline(config)
    root = pipeline.run_all().root
    assert pipeline.store.loads == 1
    for t in (0, 1):
        path = root / "eval" / f"iter_{t:02d}" / "com2-dev.json"
        data = json.loads(path.read_text())
        assert same_text(path)
        assert data["evaluator"]["name"] == "tiny" and data["evaluator"]["member"] is False
        assert data["evaluator"]["spec"] == "tiny" and data["judge_prompt"] == JUDGE_PROMPT
        assert {r["primary"] for r in data["results"].values()} == {"judged_score"}
        assert data["models"]["a"]["member"] and data["models"]["a"]["iteration"] == t
    assert "### com2 (dev, n=3): judged_score (primary)" in (root / "report.md").read_text()
    name = pipeline.outside["tiny"].name
    backend = pipeline.backend_at(2)  # the run closed its backend; a new one serves from the same store
    ids = backend.tokenizer(name)("Is this fine?", add_special_tokens=False)["input_ids"]
    got = backend.next_token_logprobs([name], [ids], [5, 6, 7], last=1, batch_size=1)[0][0]
    assert pipeline.store.loads == 1
    plain = AutoModelForCausalLM.from_pretrained(pipeline.outside["tiny"].base.source, dtype=torch.float32)
    with torch.inference_mode():
        want = torch.log_softmax(plain(torch.tensor([ids])).logits[0, -1].float(), -1)[[5, 6, 7]].tolist()
    assert got == pytest.approx(want, abs=1e-5)


def test_sparta_eval_scores_and_judges_with_model_specs(tiny_config, tmp_path, capsys):
    """--members may name a model outside the pool (scored without an adapter); --evaluator a member; the
    file then holds only those models, and the report still builds. A name that is neither a member nor a
    spec is a clear error, before any model loads."""
    from sparta.pipeline import Pipeline

    config = tiny_config("iterations=1", "data.prompts_per_iteration=3", "arena.k=1")
    Pipeline(config).run_all()
    args = ["eval", config.run_dir, "--task", "alpaca", "--limit", "2", "--members", "a", "tiny:1", "--evaluator", "b"]
    assert main(args) == 0
    assert "scored 1-10 by 'b' (tiny)" in capsys.readouterr().out
    path = tmp_path / "run" / "eval" / "iter_01" / "alpaca-dev.json"
    data = json.loads(path.read_text())
    assert same_text(path)
    assert list(data["results"]) == ["a", "tiny:1"]
    assert data["models"]["tiny:1"] == {**data["models"]["tiny:1"], "member": False, "spec": "tiny:1", "adapter": None}
    assert data["evaluator"] == {**data["evaluator"], "name": "b", "member": True, "iteration": 1}
    assert all(1 <= row["score"] <= 10 for row in data["results"]["tiny:1"]["examples"])
    assert main(["report", config.run_dir]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| tiny:1 |" in report and "| c | - |" in report
    assert main(["eval", config.run_dir, "--task", "alpaca", "--evaluator", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert "'nosuch' is neither a pool member (a, b, c, d) nor a model spec" in err


def test_outside_model_named_after_the_pool_is_loaded_shares_its_base(tiny_config):
    """A spec named once the pool is loaded joins it through set_pool: the pool's base is not loaded again."""
    from sparta.pipeline import Pipeline

    pipeline = Pipeline(tiny_config())
    pipeline.prepare()
    backend = pipeline.backend_at(1)
    name = pipeline.outside_model("tiny").name  # pool.base
    assert pipeline.backend_at(1) is backend and backend.loads == 1
    assert name in backend.base_of
    assert pipeline.evaluation._backend_name("b") == "b" and len(pipeline.outside) == 1  # a member joins nothing
