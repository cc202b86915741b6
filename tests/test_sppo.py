"""Tests for the SPPO baseline: the loss, the pool's win probabilities, train_sppo on the tiny model, and the
`method: sppo` arm end to end (peer judging, win rates, each member's own samples, kill/resume).

SPPO (Wu et al. 2024, arXiv 2405.00675) regresses each sample's log-ratio log π(y|x) − log π_t(y|x) on
η (P̂(y ≻ π_t | x) − ½); see docs/sppo.md.
"""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from itertools import groupby

import pytest
import torch

from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, LoraShape, ModelStore
from sparta.baselines.samples import Sample
from sparta.baselines.sppo import judge_by_peers
from sparta.config import ConfigError, JudgeConfig, TrainingConfig, load_config
from sparta.models import resolve_model
from sparta.pairs import win_probabilities
from sparta.records import Response, read_jsonl
from sparta.training import (
    SPPOJob,
    encode_example,
    run_job,
    sequence_logprobs,
    sppo_loss,
    train_sppo,
)
from tests.test_baselines import base_snapshot
from tests.test_pipeline import Killed, assert_same, kill_at, run_to_end
from tests.test_training import changed, perturb_adapter, slot, snapshot, trainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return resolve_model("tiny", tmp_path_factory.mktemp("sppo-cache"))


def sample(prompt: str, response: str, win_prob: float | None) -> dict:
    """One SPPO sample in trl's conversational prompt-completion format, with its win rate."""
    return {"prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": response}], "win_prob": win_prob}


# two samples per prompt, one the judges preferred, one they did not
SAMPLES = [
    sample("What is 2+2?", "4", 0.9), sample("What is 2+2?", "five, I think", 0.1),
    sample("Name a colour.", "Blue.", 0.75), sample("Name a colour.", "No.", 0.25),
    sample("Say hi.", "hi", 0.8), sample("Say hi.", "bye bye", 0.2),
]


def targets(samples: list[dict], eta: float) -> list[float]:
    return [eta * (x["win_prob"] - 0.5) for x in samples]


# ------------------------------------------------------------------------------------------------------------------
# 1. the loss


def test_sppo_loss_by_hand():
    """policy = [-10, -12, -5], reference = [-11, -11, -5]: log-ratios [1, -1, 0]. P̂ = [0.9, 0.2, 0.5], η = 2:
    targets η(P̂ − ½) = [0.8, -0.6, 0]; errors [0.2, -0.4, 0]; loss = (0.04 + 0.16 + 0) / 3 = 0.2 / 3.
    Its gradient in the policy log-probs is 2·error / 3 = [0.4/3, -0.8/3, 0]."""
    policy = torch.tensor([-10.0, -12.0, -5.0], requires_grad=True)
    loss, log_ratios = sppo_loss(policy, torch.tensor([-11.0, -11.0, -5.0]), torch.tensor([0.9, 0.2, 0.5]), eta=2.0)
    assert loss.item() == pytest.approx(0.2 / 3, abs=1e-6)
    assert log_ratios.tolist() == [1.0, -1.0, 0.0] and not log_ratios.requires_grad
    loss.backward()
    torch.testing.assert_close(policy.grad, torch.tensor([0.4 / 3, -0.8 / 3, 0.0]))


def test_sppo_loss_is_stationary_at_its_target():
    """log-ratio = η (P̂ − ½) for every sample: the loss is zero and so is its gradient; at log-ratio 0 (the
    first step, θ = θ_t) it is mean (η (P̂ − ½))²."""
    ref = torch.tensor([-3.0, -7.5, -1.25, -4.0])
    win = torch.tensor([0.875, 0.125, 0.5, 0.625])
    eta = 4.0
    policy = (ref + eta * (win - 0.5)).requires_grad_(True)
    loss, _ = sppo_loss(policy, ref, win, eta)
    loss.backward()
    assert loss.item() == 0.0 and policy.grad.abs().max().item() == 0.0
    at_start, _ = sppo_loss(ref.clone(), ref, win, eta)
    assert at_start.item() == pytest.approx(((eta * (win - 0.5)) ** 2).mean().item())  # (2.25+2.25+0+0.25)/4


# ------------------------------------------------------------------------------------------------------------------
# 2. the pool as the preference model


def test_win_probabilities_on_a_score_table():
    """Judges A, B, C score four samples of one prompt (None or absent: unreadable).

        sample   A     B     C
        0        8     7     None
        1        6     7     5
        2        8     -     9
        3        None  None  None

    P(0≻1): A, B scored both; A 8>6 → 1, B 7=7 → ½: 3/4.   P(0≻2): only A; 8=8 → ½.   Sample 3: nobody.
    P(1≻2): A 6<8, C 5<9 → 0.   So P̂0 = (3/4 + 1/2)/2 = 5/8, P̂1 = (1/4 + 0)/2 = 1/8, P̂2 = (1/2 + 1)/2 = 3/4,
    P̂3 = None. (With j = k in the mean, P̂0 would be 7/12; with an unknown pair as ½, 7/12 too.)"""
    table = [{"A": 8, "B": 7, "C": None}, {"A": 6, "B": 7, "C": 5}, {"A": 8, "C": 9},
             {"A": None, "B": None, "C": None}]
    assert win_probabilities(table) == [float(Fraction(5, 8)), float(Fraction(1, 8)), float(Fraction(3, 4)), None]


def test_win_probabilities_edge_cases():
    assert win_probabilities([]) == []
    assert win_probabilities([{"A": 9}]) == [None]  # nothing to compare with
    assert win_probabilities([{"A": 5}, {"B": 7}]) == [None, None]  # no judge scored both
    assert win_probabilities([{"A": 3, "B": 3}, {"A": 3, "B": 3}]) == [0.5, 0.5]  # ties are ½, not a loss
    # a constant-sum game: for two samples, P̂0 + P̂1 = 1
    assert sum(win_probabilities([{"A": 9, "B": 2, "C": 4}, {"A": 1, "B": 8, "C": 4}])) == 1.0


# ------------------------------------------------------------------------------------------------------------------
# 3. train_sppo on the tiny model


def hand_logps(tiny, samples, adapter_dir=None) -> list[float]:
    """Each sample's response log-prob, one sequence at a time, under a fresh slot (or a saved adapter)."""
    with slot(tiny, adapter_dir=adapter_dir) as s:
        s.model.set_adapter(s.adapter)
        s.model.eval()
        out = []
        with torch.no_grad():
            for x in samples:
                ids, start = encode(s.tokenizer, x)
                out.append(sequence_logprobs(s.model, [(ids, start)], s.tokenizer.pad_token_id, "cpu")[0].item())
    return out


def encode(tok, x: dict):
    return encode_example(tok, x["prompt"][0]["content"], x["completion"][0]["content"], 512)


def test_train_sppo_moves_log_ratios_toward_their_targets(tiny, tmp_path):
    """A whole SPPO job: the first loss is the closed form at θ = θ_t, and after training the samples the judges
    preferred (P̂ > ½) gained log-prob over the reference and the others lost it, closer to η (P̂ − ½)."""
    eta = 1.0
    s = TrainingConfig(lr=1e-2, batch_size=len(SAMPLES), micro_batch_size=2, warmup_ratio=0.0, epochs=12)
    job = SPPOJob(MemberModel("a", tiny, None), SAMPLES, s, None, eta=eta, seed=3, out_dir=tmp_path / "a")
    metrics = run_job(trainer(tiny), job)
    target = torch.tensor(targets(SAMPLES, eta))

    assert metrics["samples"] == 6 and metrics["steps"] == 12 == len(metrics["history"])
    assert metrics["truncated"] == metrics["skipped_prompt_too_long"] == metrics["skipped_no_win_prob"] == 0
    # one batch holds every sample and policy == reference at step one: loss = mean (η (P̂ − ½))²
    assert metrics["history"][0]["log_ratio"] == 0.0
    assert metrics["loss_first"] == pytest.approx((target ** 2).mean().item(), abs=1e-6)

    # measured by hand on the saved adapter against the fresh one (the reference), one sequence at a time
    ratios = torch.tensor(hand_logps(tiny, SAMPLES, tmp_path / "a")) - torch.tensor(hand_logps(tiny, SAMPLES))
    assert (torch.sign(ratios) == torch.sign(target)).all(), (ratios, target)
    error = (ratios - target).abs().mean().item()
    assert error < 0.5 * target.abs().mean().item(), (ratios, target)
    after = metrics["after"]
    assert after["target_error"] == pytest.approx(error, abs=1e-4)
    assert after["loss"] < metrics["loss_first"] and after["correlation"] > 0.8
    assert after["log_ratio_above_half"] > 0 > after["log_ratio_below_half"]


def test_train_sppo_first_step_is_the_closed_form_in_bfloat16(tiny):
    """In bf16 a log-prob moves with its batch's padding; the reference is computed in the steps' micro-batches,
    so at step one the log-ratios are exactly 0 even for a trained adapter with LoRA dropout configured."""
    with slot(tiny, store=ModelStore("cpu", dtype="bfloat16")) as sl:
        perturb_adapter(sl, seed=0)
        s = TrainingConfig(lr=1e-2, batch_size=len(SAMPLES), micro_batch_size=4, warmup_ratio=0.0)
        metrics = train_sppo(sl, "a", SAMPLES, s, eta=2.0, seed=3)
    assert metrics["history"][0]["log_ratio"] == 0.0
    expected = (torch.tensor(targets(SAMPLES, 2.0)) ** 2).mean().item()
    assert metrics["loss_first"] == pytest.approx(expected, abs=1e-6)


def test_train_sppo_leaves_out_and_counts_what_it_cannot_train_on(tiny):
    """A sample nobody could compare (win_prob None), one whose prompt fills max_length, one cut short."""
    samples = [sample("Tell me a story.", "Once upon a time " * 40, 0.7), sample("x" * 300, "a", 0.6),
               sample("Say hi.", "hi", None), *SAMPLES[:2]]
    s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=2, max_length=120)
    with slot(tiny) as sl:
        metrics = train_sppo(sl, "a", samples, s, eta=1.0, seed=3, prompt_tokens=200)
        before = snapshot(sl)
        nothing = train_sppo(sl, "a", [sample("Say hi.", "hi", None)], s, eta=1.0, seed=3, prompt_tokens=200)
        assert not changed(sl, before)
    assert metrics["samples"] == 3 and metrics["steps"] == 2
    assert metrics["skipped_no_win_prob"] == 1 and metrics["skipped_prompt_too_long"] == 1
    assert metrics["truncated"] == 1
    assert nothing["samples"] == 0 and nothing["steps"] == 0 and nothing["skipped_no_win_prob"] == 1


# ------------------------------------------------------------------------------------------------------------------
# 4. method: sppo, the whole arm on the tiny pool

# batch_size 8 >= a member's 2 x 3 samples: its first step sees all of them, so the first loss names what it trained on
ARM = ("method=sppo", "baseline.samples=3", "data.prompts_per_iteration=2", "training.batch_size=8")
ETA = 10.0  # baseline.sppo_eta's default


def test_sppo_config():
    c = load_config(None, ["method=sppo"])
    assert (c.baseline.samples, c.baseline.sppo_eta) == (4, ETA)
    with pytest.raises(ConfigError, match="baseline.sppo_eta must be > 0"):
        load_config(None, ["method=sppo", "baseline.sppo_eta=0"])


class GroupRecorder:
    """An inference backend that records the groups of each grouped logprob call (one list of sizes per judge)."""

    def __init__(self, backend):
        self.backend, self.groups = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def grouped_next_token_logprobs(self, members, groups, *args, **kwargs):
        self.groups += [(m, len(g)) for m, g in zip(members, groups)]
        return self.backend.grouped_next_token_logprobs(members, groups, *args, **kwargs)


def test_peers_judge_each_prompt_in_one_group_per_judge(tiny):
    """3 members x 2 samples of 2 prompts: each judge scores the other two members' 4 samples of a prompt in one
    group (the judge prompt's prefix runs once), never its own; a failed generation is not judged."""
    backend = GroupRecorder(HFBackend([MemberModel(n, tiny, None) for n in "abc"], LoraShape(), seed=0))
    samples = [Sample(m, p, f"question {p}", k, Response(m, f"{m}{p}{k}"), status="generated")
               for p in ("p", "q") for m in "abc" for k in range(2)]
    samples[0] = replace(samples[0], response=Response("a", None, error="boom"), status="generation_failed")
    judged = judge_by_peers(backend, samples, list("abc"), JudgeConfig("logprob", 8, 0.0, 8, 400), seed=0)
    assert sorted(backend.groups) == sorted([("a", 4), ("b", 3), ("c", 3)] + [(j, 4) for j in "abc"])
    assert judged[0].judgments == [] and judged[0].win_prob is None
    for s in judged[1:]:
        assert s.status == "judged" and [j.judge for j in s.judgments] == [m for m in "abc" if m != s.member]
        assert all(j.target == "peer" and j.status == "ok" for j in s.judgments)
    assert judged[1].win_prob is None  # a's only other sample of p failed: nothing to compare with
    assert all(s.win_prob is not None for s in judged[2:])


def logged_win_probabilities(samples: list[dict]) -> list[float | None]:
    """P̂ recomputed from the judgments samples.jsonl logged, per (member, prompt); only ok scores count."""
    out = []
    for _, group in groupby(samples, key=lambda s: (s["member"], s["prompt_id"])):
        group = list(group)
        judged = [s for s in group if s["status"] == "judged"]
        won = iter(win_probabilities([{j["judge"]: j["score"] if j["status"] == "ok" else None
                                       for j in s["judgments"]} for s in judged]))
        out += [next(won) if s["status"] == "judged" else None for s in group]
    return out


@pytest.fixture(scope="module")
def sppo_run(tmp_path_factory):
    from tests.conftest import tiny as tiny_run

    cache = tmp_path_factory.mktemp("sppo-run-cache")
    config = tiny_run(tmp_path_factory.mktemp("sppo") / "run", cache, *ARM)
    return config, run_to_end(config).root


def test_sppo_run_judges_by_peers_and_trains_each_member_on_its_own_samples(sppo_run):
    _, root = sppo_run
    for t in (1, 2):
        it = root / f"iter_{t:02d}"
        samples = read_jsonl(it / "samples.jsonl")
        assert len(samples) == 2 * 4 * 3  # prompts x members x K
        for s in samples:
            if s["status"] == "generation_failed":  # the tiny model's empty answers: never judged
                assert s["judgments"] == [] and s["win_prob"] is None and s["response"]["text"] is None
                continue
            assert s["status"] == "judged" and s["judgment"] is None
            assert [j["judge"] for j in s["judgments"]] == [m for m in "abcd" if m != s["member"]]
            assert all(j["target"] == "peer" and 1 <= j["score"] <= 10 for j in s["judgments"])
        assert [s["win_prob"] for s in samples] == logged_win_probabilities(samples)
        assert len({s["win_prob"] for s in samples} - {None}) > 2  # the check has something to check

        rows = read_jsonl(it / "pairs.jsonl")  # the training rows: every generated sample, with its P̂
        generated = [s for s in samples if s["response"]["text"] is not None]
        assert [(r["member"], r["prompt_id"], r["sample"], r["completion"][0]["content"], r["win_prob"])
                for r in rows] == [(s["member"], s["prompt_id"], s["sample"], s["response"]["text"], s["win_prob"])
                                   for s in generated]
        metrics = json.loads((it / "metrics.json").read_text())
        assert (metrics["method"], metrics["samples"], metrics["pairs"]) == ("sppo", 24, len(rows))
        assert metrics["judgments"]["total"] == 3 * len(generated)  # m - 1 judges per generated sample
        assert metrics["skipped"] == {"generation_failed": 24 - len(generated),
                                      "no_win_prob": sum(s["win_prob"] is None for s in generated)}
        for m in "abcd":
            own = [s["win_prob"] for s in generated if s["member"] == m]
            known = torch.tensor([p for p in own if p is not None])
            trained = json.loads((it / "training" / f"{m}.json").read_text())
            assert (trained["samples"], trained["skipped_no_win_prob"]) == (len(known), len(own) - len(known))
            # one step over all its own samples, at log-ratio 0: the loss is mean (η (P̂ − ½))² of exactly those
            assert trained["loss_first"] == pytest.approx((ETA * (known - 0.5)).pow(2).mean().item(), abs=1e-5)
    assert "Method: sppo" in (root / "report.md").read_text()


def test_sppo_killed_and_resumed_matches(sppo_run, tiny_config, tmp_path):
    config, reference = sppo_run
    killed = tiny_config(*ARM, run_dir=tmp_path / "killed")
    # killed once per invocation, each later than the last: peer judging and SPPO of iteration 1, then sampling
    # and SPPO of iteration 2; the last run resumes from there
    for stage in ("judge", "sppo b", "generate", "sppo c"):
        with pytest.raises(Killed):
            run_to_end(killed, progress=kill_at(stage))
    run_to_end(killed)
    assert_same(base_snapshot(reference), base_snapshot(tmp_path / "killed"))


def test_sppo_summary_prints(sppo_run, capsys):
    """`sparta run` prints a summary after each iteration: SPPO's metrics have no reward accuracy."""
    from sparta.cli import print_summary
    from sparta.pipeline import Pipeline
    from sparta.rundir import RunDir

    config, root = sppo_run
    pipeline = Pipeline(config)
    pipeline.run = RunDir(root)
    print_summary(pipeline.summary(2))
    out = capsys.readouterr().out
    assert "(sppo): 24 samples" in out
    rows = [line for line in out.splitlines() if line.split()[:1] in (["a"], ["b"], ["c"], ["d"])]
    assert len(rows) == 4 and all("target error" in row for row in rows)  # one line per member
