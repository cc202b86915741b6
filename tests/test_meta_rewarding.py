"""Meta-rewarding (Wu et al. 2024, arXiv 2407.19594; docs/baselines.md): the pair rules on crafted samples, the
meta-judge's round robin by hand and on the tiny model, and the `method: meta_rewarding` arm end to end."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace

import pytest

import sparta.pipeline
from sparta.arena.judging import JUDGE_PROMPT
from sparta.backends import Failure, Generated, MemberModel
from sparta.backends.hf import HFBackend, LoraShape
from sparta.baselines.meta_rewarding import (
    META_PREFIX,
    actor_pair,
    disputed,
    judge_own_n,
    judge_pair,
    judge_prompt,
    meta_judge,
    meta_rewarding_pairs,
    round_robin,
)
from sparta.baselines.samples import Sample
from sparta.chat import encode_chat
from sparta.config import ConfigError, JudgeConfig, load_config
from sparta.models import resolve_model
from sparta.records import Judgment, Response, read_jsonl
from sparta.training import _encode_rows
from tests.test_baselines import base_snapshot
from tests.test_pipeline import Killed, assert_same, kill_at, run_to_end
from tests.test_sppo import GroupRecorder

# training.max_length: the tiny tokenizer spends a token per character of the judge prompt
ARM = ("method=meta_rewarding", "judge.mode=generate", "judge.temperature=1.0", "baseline.samples=3",
       "baseline.judgments=3", "data.prompts_per_iteration=2", "training.max_length=1200")
JUDGE = JudgeConfig("generate", 16, 1.0, 8, 400)


def judged(member: str, prompt: str, k: int, scores: list[float | None], n_tokens: int = 5) -> Sample:
    """A crafted sample with one own judgment per score (None: unparsed), its raw text naming its score."""
    judgments = [Judgment(member, "self", x, "ok" if x is not None else "unparsed", f'{{"score": {x}}} #{i}')
                 for i, x in enumerate(scores)]
    status = "scored" if any(x is not None for x in scores) else "judgment_unparsed"
    return Sample(member, prompt, f"question {prompt}", k, Response(member, f"{member}{prompt}{k}", n_tokens=n_tokens),
                  status=status, judgments=judgments)


# ---- the actor pair: mean score, length control --------------------------------------------------------------

def test_actor_pair_is_the_best_mean_over_the_worst():
    group = [judged("a", "p", 0, [6, 8]), judged("a", "p", 1, [9, 10, None]), judged("a", "p", 2, [2, 3])]
    pair, _ = actor_pair(group, 1, 0.0, 0.0)
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == ("ap1", "ap2")
    assert (pair["score_chosen"], pair["score_rejected"], pair["role"]) == (9.5, 2.5, "actor")  # unparsed left out


def test_actor_pair_length_control_takes_the_shortest_near_the_top():
    group = [judged("a", "p", 0, [9], n_tokens=50), judged("a", "p", 1, [8], n_tokens=10),
             judged("a", "p", 2, [9], n_tokens=30), judged("a", "p", 3, [1], n_tokens=5)]
    chosen = [actor_pair(group, 1, 0.0, rho)[0]["chosen_sample"] for rho in (0.0, 0.1, 0.2)]
    # rho 0: the shortest of the two 9s; 0.1 x (9 - 1) = 0.8 still excludes the 8; 0.2 admits it (1.6)
    assert chosen == [2, 2, 1]


def test_actor_pair_skips():
    assert actor_pair([judged("a", "p", 0, [7])], 1, 0, 0) == (None, "fewer_than_2_scored")
    assert actor_pair([judged("a", "p", 0, [7]), judged("a", "p", 1, [7])], 1, 0, 0) == (None, "tie")
    assert actor_pair([judged("a", "p", 0, [7]), judged("a", "p", 1, [7.5])], 1, 1.0, 0) == (None, "below_margin")


# ---- the meta-judge: which answer, the round robin, the judge pair --------------------------------------------

def test_disputed_is_the_answer_its_judgments_disagree_on_most():
    group = [judged("a", "p", 0, [5, 6]), judged("a", "p", 1, [2, 9, None]), judged("a", "p", 2, [9])]
    assert disputed(group) == (1, "")
    assert disputed([judged("a", "p", 0, [7, 7]), judged("a", "p", 1, [4, 4])]) == (None, "judgments_agree")
    assert disputed([judged("a", "p", 0, [7, None])]) == (None, "fewer_than_2_readable_judgments")


def lp(p_a: float) -> list[list[float]]:
    """A logprob row (one position, candidates A and B) that gives P(A better) = p_a."""
    import math

    return [[math.log(p_a), math.log(1 - p_a)]]


def test_round_robin_by_hand():
    battles = [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]
    # judgment 0 wins every battle in either position, 2 loses every one, 1 beats 2
    p = {(0, 1): 0.9, (1, 0): 0.2, (0, 2): 0.8, (2, 0): 0.3, (1, 2): 0.6, (2, 1): 0.4}
    meta = round_robin(battles, [lp(p[b]) for b in battles], 3)
    # P(0 > 1) = (0.9 + 0.8) / 2, P(0 > 2) = (0.8 + 0.7) / 2: strength 0 = their mean
    assert meta["status"] == "ok"
    assert meta["strength"] == pytest.approx([(0.85 + 0.75) / 2, (0.15 + 0.6) / 2, (0.25 + 0.4) / 2])
    assert [b["p_a"] for b in meta["battles"]] == pytest.approx([p[b] for b in battles])


def test_round_robin_cancels_a_position_bias_and_fails_loudly():
    battles = [(0, 1), (1, 0)]
    biased = round_robin(battles, [lp(0.8), lp(0.8)], 2)  # always "A": no judgment is better
    assert biased["strength"] == pytest.approx([0.5, 0.5])
    failed = round_robin(battles, [lp(0.8), Failure("server said no")], 2)
    assert failed["status"] == "failed" and failed["strength"] is None
    assert failed["battles"][1] == {"a": 1, "b": 0, "p_a": None, "error": "server said no"}


def with_meta(s: Sample, strength: list[float | None]) -> Sample:
    return replace(s, meta={"status": "ok", "battles": [], "strength": strength})


def test_judge_pair_is_the_strongest_judgment_over_the_weakest_on_the_judge_prompt():
    group = [judged("a", "p", 0, [5, 6]), with_meta(judged("a", "p", 1, [2, None, 9]), [0.3, None, 0.7])]
    pair, _ = judge_pair(group, 1, 400)
    assert pair["prompt"][0]["content"] == JUDGE_PROMPT.replace("{0}", "question p").replace("{1}", "ap1")
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == ('{"score": 9} #2', '{"score": 2} #0')
    assert (pair["role"], pair["member"], pair["judged_sample"], pair["max_prompt_tokens"]) == ("judge", "a", 1, 400)


def test_judge_pair_skips():
    tie = with_meta(judged("a", "p", 0, [2, 9]), [0.5, 0.5])
    assert judge_pair([tie], 1, 400) == (None, "meta_tie")
    same = with_meta(judged("a", "p", 0, [2, 2, 9]), [0.9, 0.1, 0.5])  # the strongest and weakest both say 2
    assert judge_pair([same], 1, 400) == (None, "same_score")
    assert judge_pair([judged("a", "p", 0, [2, 9])], 1, 400) == (None, "meta_failed")  # never meta-judged
    pairs, skipped = meta_rewarding_pairs([judged("b", "p", 0, [4, 4]), judged("b", "p", 1, [4, 4])], 1, 0, 0, 400)
    assert pairs == [] and skipped["tie"] == 1 and skipped["judgments_agree"] == 1


def test_judge_prompt_fills_in_one_pass():
    text = judge_prompt("what does {1} mean?", "it is a slot")
    assert "Question: what does {1} mean?\n" in text and "evaluated: it is a slot\n" in text


# ---- on the tiny model ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return resolve_model("tiny", tmp_path_factory.mktemp("meta-cache"))


def test_judge_own_n_samples_n_judgments_by_the_author(tiny):
    backend = HFBackend([MemberModel(n, tiny, None) for n in "ab"], LoraShape(), seed=0)
    samples = [Sample(m, "p", "question p", k, Response(m, f"answer {m}{k}"), status="generated")
               for m in "ab" for k in range(2)]
    samples[1] = replace(samples[1], response=Response("a", None, error="boom"), status="generation_failed")
    out = judge_own_n(backend, samples, JUDGE, 3, seed=0)
    assert out[1].judgments == [] and out[1].status == "generation_failed"
    for s in out[:1] + out[2:]:
        assert [(j.judge, j.target) for j in s.judgments] == [(s.member, "self")] * 3
        assert s.status == ("scored" if any(j.status == "ok" for j in s.judgments) else "judgment_unparsed")
    # sampled (judge.temperature 1): the tiny model's three judgments of one answer are not all the same text
    assert any(len({j.raw for j in s.judgments}) > 1 for s in out[:1] + out[2:])


def test_meta_judge_reads_each_battle_as_one_ungrouped_call_would(tiny):
    """One group per disputed answer holding its N (N - 1) battles; each P(A) equals the same prompt read on its
    own through next_token_logprobs (the grouped shared-prefix path changes nothing)."""
    backend = GroupRecorder(HFBackend([MemberModel(n, tiny, None) for n in "ab"], LoraShape(), seed=0))
    samples = [judged("a", "p", 0, [3, 8, 5]), judged("a", "p", 1, [6, 6]), judged("b", "p", 0, [2, None, 7])]
    out = meta_judge(backend, samples, JUDGE)
    assert sorted(backend.groups) == [("a", 6), ("b", 2)] and out[1].meta is None
    tok = backend.tokenizer("a")
    letters = [tok(META_PREFIX + x, add_special_tokens=False)["input_ids"][-1] for x in "AB"]
    for s in (out[0], out[2]):
        assert s.meta["status"] == "ok" and len(s.meta["battles"]) == len([j for j in s.judgments if j.score]) * (
            len([j for j in s.judgments if j.score]) - 1)
        for b in s.meta["battles"]:
            from sparta.baselines.meta_rewarding import META_JUDGE_PROMPT

            enc = encode_chat(tok, [("user", META_JUDGE_PROMPT)], [s.prompt, s.response.text,
                                                                    s.judgments[b["a"]].raw, s.judgments[b["b"]].raw],
                              max_tokens=10_000, assistant_prefix=META_PREFIX)
            (la, lb), = backend.next_token_logprobs([s.member], [enc.ids], letters, last=1, batch_size=1)[0]
            import math

            assert b["p_a"] == pytest.approx(1 / (1 + math.exp(lb - la)), abs=1e-5)
    assert out[2].meta["strength"][1] is None  # the unparsed judgment never plays


def test_training_keeps_a_rows_own_prompt_budget(tiny):
    from sparta.backends import load_tokenizer

    tok = load_tokenizer(tiny.source)
    long = "x" * 300  # the tiny tokenizer is one token per character
    rows = [{"prompt": [{"role": "user", "content": long}], "chosen": [{"role": "assistant", "content": "y"}],
             "rejected": [{"role": "assistant", "content": "z"}]}]
    assert _encode_rows(tok, rows, ("chosen", "rejected"), 600, 100)[1]["prompt_shortened"] == 1
    rows[0]["max_prompt_tokens"] = 400
    assert _encode_rows(tok, rows, ("chosen", "rejected"), 600, 100)[1]["prompt_shortened"] == 0


# ---- config ---------------------------------------------------------------------------------------------------

def test_meta_rewarding_config():
    arm = [a for a in ARM if not a.startswith("training.max_length")]  # the defaults' lengths: 736 tokens
    ok = load_config(None, arm)
    assert (ok.baseline.judgments, ok.baseline.length_tolerance) == (3, 0.0)
    for bad, message in [("judge.mode=logprob", "needs judge.mode=generate"),
                         ("judge.temperature=0", "needs judge.temperature > 0"),
                         ("baseline.judgments=1", "baseline.judgments must be >= 2"),
                         ("baseline.length_tolerance=2", "length_tolerance must lie in"),
                         ("training.max_length=700", "a judge pair's prompt and judgment")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, arm + [bad])


# ---- the arm end to end ---------------------------------------------------------------------------------------

class ScriptedJudge:
    """The tiny model writes no readable judgment, so its judge prompts are answered with a score a hash of the
    prompt and its row gives ('{"score": N} ...'): everything else (answers, meta-judge, DPO) is the real tiny
    model. Deterministic, so a resumed run gets the same judgments."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, members, prompts, **kwargs):
        texts = [self.backend.tokenizer(m).decode(p) for m, p in zip(members, prompts)]
        if not any("Please judge the following response" in t for t in texts):
            return self.backend.generate(members, prompts, **kwargs)
        assert all("Please judge the following response" in t for t in texts)
        return [Generated(f'{{"score": {1 + zlib.crc32(f"{t}#{i}".encode()) % 10}}} because #{i}', 8, "stop")
                for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def scripted():
    with pytest.MonkeyPatch.context() as mp:
        build = sparta.pipeline.build_backend
        mp.setattr(sparta.pipeline, "build_backend", lambda *a, **k: ScriptedJudge(build(*a, **k)))
        yield


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory, scripted):
    from tests.conftest import tiny as tiny_run

    config = tiny_run(tmp_path_factory.mktemp("meta") / "run", tmp_path_factory.mktemp("meta-run-cache"), *ARM)
    return config, run_to_end(config).root


def test_meta_rewarding_run_trains_each_member_on_its_actor_and_judge_pairs(meta_run):
    _, root = meta_run
    for t in (1, 2):
        it = root / f"iter_{t:02d}"
        samples = [Sample.from_dict(s) for s in read_jsonl(it / "samples.jsonl")]
        assert len(samples) == 2 * 4 * 3
        for s in samples:
            if s.status == "generation_failed":
                assert s.judgments == [] and s.meta is None
                continue
            assert s.status == "scored" and [(j.judge, j.target, j.status) for j in s.judgments] == [
                (s.member, "self", "ok")] * 3
        pairs = read_jsonl(it / "pairs.jsonl")
        # the pairs are the pair rule applied to the logged samples
        assert pairs == json.loads(json.dumps(meta_rewarding_pairs(samples, t, 0.0, 0.0, 1024)[0]))
        judge_pairs = [p for p in pairs if p["role"] == "judge"]
        assert judge_pairs and any(p["role"] == "actor" for p in pairs)
        for p in judge_pairs:
            s = next(s for s in samples if (s.member, s.prompt_id, s.sample) == (p["member"], p["prompt_id"],
                                                                                  p["judged_sample"]))
            assert s.meta["status"] == "ok" and len(s.meta["battles"]) == 6
            assert p["prompt"][0]["content"] == judge_prompt(s.prompt, s.response.text)
            assert p["chosen"][0]["content"] == s.judgments[p["chosen_judgment"]].raw
            assert p["strength_chosen"] > p["strength_rejected"]
        metrics = json.loads((it / "metrics.json").read_text())
        assert metrics["pairs_by_role"] == {"actor": len(pairs) - len(judge_pairs), "judge": len(judge_pairs)}
        assert metrics["meta_judgments"]["battles"] == 6 * metrics["meta_judgments"]["samples"]
        assert metrics["pairs"] + sum(metrics["skipped"].values()) == 2 * 2 * 4  # two rules per member and prompt
        for m in "abcd":
            trained = json.loads((it / "training" / f"{m}.json").read_text())
            assert trained["pairs"] == sum(p["member"] == m for p in pairs)
            # judge pairs keep the judge's window, and the tiny run's lengths fit them whole
            assert (trained["prompt_shortened"], trained["truncated"], trained["skipped_prompt_too_long"]) == (0, 0, 0)
    assert "Method: meta_rewarding" in (root / "report.md").read_text()


def test_meta_rewarding_killed_and_resumed_matches(meta_run, tiny_config, tmp_path):
    _, reference = meta_run
    killed = tiny_config(*ARM, run_dir=tmp_path / "killed")
    # each invocation is killed once, later than the last: judging, meta-judging and DPO of iteration 1, then
    # meta-judging of iteration 2
    for stage in ("judge", "meta-judge", "dpo b", "meta-judge"):
        with pytest.raises(Killed):
            run_to_end(killed, progress=kill_at(stage))
    run_to_end(killed)
    assert_same(base_snapshot(reference), base_snapshot(tmp_path / "killed"))
