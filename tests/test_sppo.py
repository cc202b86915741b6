"""Tests for the SPPO baseline's training half: the loss, the pool's win probabilities, train_sppo on the tiny model.

SPPO (Wu et al. 2024, arXiv 2405.00675) regresses each sample's log-ratio log π(y|x) − log π_t(y|x) on
η (P̂(y ≻ π_t | x) − ½); see docs/sppo.md.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from sparta.backends import MemberModel
from sparta.backends.hf import ModelStore
from sparta.models import resolve_model
from sparta.pairs import win_probabilities
from sparta.training import (
    OptimSettings,
    SPPOJob,
    encode_example,
    run_sppo_job,
    sequence_logprobs,
    sppo_loss,
    train_sppo,
)
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
    s = OptimSettings(lr=1e-2, batch_size=len(SAMPLES), micro_batch_size=2, warmup_ratio=0.0)
    job = SPPOJob(MemberModel("a", tiny, None), SAMPLES, s, eta=eta, epochs=12, seed=3, out_dir=tmp_path / "a")
    metrics = run_sppo_job(trainer(tiny), job)
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
        s = OptimSettings(lr=1e-2, batch_size=len(SAMPLES), micro_batch_size=4, warmup_ratio=0.0)
        metrics = train_sppo(sl, "a", SAMPLES, s, eta=2.0, epochs=1, seed=3)
    assert metrics["history"][0]["log_ratio"] == 0.0
    expected = (torch.tensor(targets(SAMPLES, 2.0)) ** 2).mean().item()
    assert metrics["loss_first"] == pytest.approx(expected, abs=1e-6)


def test_train_sppo_leaves_out_and_counts_what_it_cannot_train_on(tiny):
    """A sample nobody could compare (win_prob None), one whose prompt fills max_length, one cut short."""
    samples = [sample("Tell me a story.", "Once upon a time " * 40, 0.7), sample("x" * 300, "a", 0.6),
               sample("Say hi.", "hi", None), *SAMPLES[:2]]
    s = OptimSettings(lr=1e-2, batch_size=2, micro_batch_size=2, max_length=120, max_prompt_tokens=200)
    with slot(tiny) as sl:
        metrics = train_sppo(sl, "a", samples, s, eta=1.0, epochs=1, seed=3)
        before = snapshot(sl)
        nothing = train_sppo(sl, "a", [sample("Say hi.", "hi", None)], s, eta=1.0, epochs=1, seed=3)
        assert not changed(sl, before)
    assert metrics["samples"] == 3 and metrics["steps"] == 2
    assert metrics["skipped_no_win_prob"] == 1 and metrics["skipped_prompt_too_long"] == 1
    assert metrics["truncated"] == 1
    assert nothing["samples"] == 0 and nothing["steps"] == 0 and nothing["skipped_no_win_prob"] == 1
