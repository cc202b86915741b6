"""Preference losses that expect noisy labels (training.loss: dpo, cdpo, rdpo, margin; docs/training.md): each loss
against numbers worked by hand, the flip-rate estimator on constructed pairs, margin weights, one real train_dpo
per loss on the tiny model, two tiny iterations end to end, the config's checks, and a compare plan with a loss arm."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from sparta.compare import arm_configs, make_plan
from sparta.config import ConfigError, TrainingConfig, dump_yaml
from sparta.pairs import judge_disagreement, margin_weights, pairs_for
from sparta.pipeline import Pipeline
from sparta.records import read_jsonl
from sparta.rundir import RunDir, RunDirError
from sparta.seeding import derive_seed
from sparta.training import Objective, _batches, dpo_loss, pair_losses, train_dpo
from tests.test_training import PAIRS, changed, lora_names, slot, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sparta.models import resolve_model

    return resolve_model("tiny", tmp_path_factory.mktemp("losses-cache"))


def nll(h: float) -> float:
    """-log σ(h) = log(1 + e^-h), by hand."""
    return math.log(1 + math.exp(-h))


# three pairs at β = 0.1: margins h = 0.1·(1) − 0.1·(−1) = 0.2, 0.1·(1) − 0.1·(2) = −0.1, and 0
POLICY_C, POLICY_R = torch.tensor([-10.0, -8.0, -5.0]), torch.tensor([-12.0, -7.0, -5.0])
REF_C, REF_R = torch.tensor([-11.0, -9.0, -5.0]), torch.tensor([-11.0, -9.0, -5.0])
H = (0.2, -0.1, 0.0)


def test_each_loss_by_hand():
    """With l(h) = log(1 + e^-h) and l(−h) = l(h) + h:
    cdpo = (1−ε) l(h) + ε l(−h) = l(h) + ε h; at h = 0.2, ε = 0.1: 0.5981388693 + 0.02 = 0.6181388693;
    rdpo = [(1−ε) l(h) − ε l(−h)] / (1−2ε) = l(h) − ε h / (1−2ε); at h = 0.2, ε = 0.1: 0.5981388693 − 0.025;
    margin with weights (2, ½, ½): (2 l(0.2) + ½ l(−0.1) + ½ l(0)) / 3."""
    args = (POLICY_C[:1], POLICY_R[:1], REF_C[:1], REF_R[:1], 0.1)
    assert dpo_loss(*args)[0].item() == pytest.approx(0.5981388693, abs=1e-6)
    assert dpo_loss(*args, "cdpo", 0.1)[0].item() == pytest.approx(0.6181388693, abs=1e-6)
    assert dpo_loss(*args, "rdpo", 0.1)[0].item() == pytest.approx(0.5731388693, abs=1e-6)

    every = (POLICY_C, POLICY_R, REF_C, REF_R, 0.1)
    cdpo = sum(0.8 * nll(h) + 0.2 * nll(-h) for h in H) / 3
    rdpo = sum((0.8 * nll(h) - 0.2 * nll(-h)) / 0.6 for h in H) / 3
    margin = (2 * nll(0.2) + 0.5 * nll(-0.1) + 0.5 * nll(0.0)) / 3
    assert dpo_loss(*every, "cdpo", 0.2)[0].item() == pytest.approx(cdpo, abs=1e-6)
    assert dpo_loss(*every, "rdpo", 0.2)[0].item() == pytest.approx(rdpo, abs=1e-6)
    assert dpo_loss(*every, "margin", weights=torch.tensor([2.0, 0.5, 0.5]))[0].item() == pytest.approx(margin,
                                                                                                    abs=1e-6)
    with pytest.raises(ValueError, match="unknown preference loss 'ipo'"):
        dpo_loss(*every, "ipo")


def test_rdpo_is_unbiased_under_its_flip_rate():
    """Chowdhury et al.'s defining property: a label flipped with probability ε, rdpo's expected loss is DPO's on
    the true label, (1−ε) L(h) + ε L(−h) = l(h), for every margin."""
    h = torch.tensor([-3.0, -0.1, 0.0, 0.2, 2.5], dtype=torch.float64)
    for eps in (0.05, 0.2, 0.45):
        expected = (1 - eps) * pair_losses(h, "rdpo", eps) + eps * pair_losses(-h, "rdpo", eps)
        assert torch.allclose(expected, pair_losses(h, "dpo"), atol=1e-12)


def test_zero_eps_and_equal_margins_are_dpo_exactly():
    h = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3
    dpo = pair_losses(h, "dpo")
    assert torch.equal(pair_losses(h, "cdpo", 0.0), dpo)
    assert torch.equal(pair_losses(h, "rdpo", 0.0), dpo)
    # equal score gaps (gaps that do not sum exactly in floats) give weights of exactly 1
    pairs = [{"score_chosen": 1.7, "score_rejected": 1.0}] * 3  # in floats (0.7 + 0.7 + 0.7) / 3 != 0.7
    weights = margin_weights(pairs)
    assert weights == [1.0, 1.0, 1.0]
    assert torch.equal(pair_losses(h[:3], "margin", weights=torch.tensor(weights)), dpo[:3])


def test_margin_weights_are_gaps_over_their_mean():
    """Gaps 3, 1 and 0.5 (mean 1.5): weights 2, 2/3, 1/3, which average 1."""
    pairs = [{"score_chosen": 8.0, "score_rejected": 5.0}, {"score_chosen": 6.5, "score_rejected": 5.5},
             {"score_chosen": 4.5, "score_rejected": 4.0}]
    assert margin_weights(pairs) == pytest.approx([2.0, 2 / 3, 1 / 3], abs=1e-15)
    with pytest.raises(ValueError, match=r"pair 1 .* needs score_chosen > score_rejected, got None"):
        margin_weights([pairs[0], {"score_chosen": None, "score_rejected": 3.0}])
    with pytest.raises(ValueError, match="pair 0"):
        margin_weights([{"score_chosen": 5.0, "score_rejected": 5.0}])


def judged(scores: dict[str, tuple[float, float]], weights: dict[str, float]) -> dict:
    """A pair's judge columns as preference_pairs writes them: judge -> (score of chosen, score of rejected)."""
    return {"judge_scores": {j: {"chosen": c, "rejected": r} for j, (c, r) in scores.items()}, "weights": weights,
            "score_chosen": sum(weights[j] * c for j, (c, _) in scores.items()) / sum(weights.values()),
            "score_rejected": sum(weights[j] * r for j, (_, r) in scores.items()) / sum(weights.values())}


AGREE = judged({"x": (8, 5), "y": (7, 3), "z": (9, 8)}, {"x": 1.0, "y": 1.5, "z": 0.5})
# z (weight 0.5 of 3) scores the rejected higher: 1/6
ONE_DISSENT = judged({"x": (8, 5), "y": (7, 6), "z": (4, 6)}, {"x": 1.0, "y": 1.5, "z": 0.5})
# x scores both 6: half a disagreement of weight 1, of 2: 1/4
ONE_TIE = judged({"x": (6, 6), "y": (9, 2)}, {"x": 1.0, "y": 1.0})
LONE = judged({"x": (9, 2)}, {"x": 1.0})  # one judge is the verdict: no evidence, left out
CONSTRUCTED = [AGREE, ONE_DISSENT, ONE_TIE, LONE]


def test_flip_rate_estimate_by_hand():
    assert judge_disagreement([AGREE, AGREE]) == (0.0, 2)
    # (0 + 1/6 + 1/4) / 3 = 5/36 over the three pairs with two judges
    assert judge_disagreement(CONSTRUCTED) == (pytest.approx(5 / 36, abs=1e-15), 3)
    # a judge not counted in the verdict (absent from weights) is not counted here either
    outsider = {**ONE_TIE, "judge_scores": {**ONE_TIE["judge_scores"], "w": {"chosen": 1, "rejected": 9}}}
    assert judge_disagreement([outsider]) == (0.25, 1)
    with pytest.raises(ValueError, match="none of the 1 pairs has two judges"):
        judge_disagreement([LONE])


def test_auto_flip_rate_is_clipped_and_recorded():
    # x is sure of the chosen (+8), y and z slightly prefer the rejected: the verdict stands, 2/3 disagree
    contested = judged({"x": (9, 1), "y": (5, 6), "z": (5, 6)}, {"x": 1.0, "y": 1.0, "z": 1.0})
    objective = Objective.of(TrainingConfig(loss="rdpo"), [contested], "cpu")
    assert objective.eps == 0.49
    assert objective.stats["objective"] == {"loss": "rdpo", "eps": 0.49, "flip_rate_estimate": 2 / 3,
                                            "estimated_from_pairs": 1}
    assert Objective.of(TrainingConfig(loss="rdpo", flip_rate=0.1), [LONE], "cpu").eps == 0.1


# ---- one real train_dpo per loss on the tiny model ------------------------------------------------------------

LOSS_SETTINGS = {"dpo": {}, "cdpo": {"label_smoothing": 0.1}, "rdpo": {"flip_rate": "auto"}, "margin": {}}


@pytest.mark.parametrize("loss", list(LOSS_SETTINGS))
def test_train_dpo_with_each_loss(tiny, loss):
    pairs = [{**p, **j} for p, j in zip(PAIRS, CONSTRUCTED)]
    s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=1, warmup_ratio=0.0, beta=0.1, after_limit=None,
                       loss=loss, **LOSS_SETTINGS[loss])
    with slot(tiny) as sl:
        before = snapshot(sl)
        metrics = train_dpo(sl, "a", pairs, s, seed=3)
        moved = changed(sl, before)
        trained = lora_names(sl)
    assert moved and moved <= trained  # the adapter, and only it, changed
    losses = [h["loss"] for h in metrics["history"]] + [metrics["after"]["loss"]]
    assert all(math.isfinite(x) for x in losses)
    # step one: policy == reference, every margin 0, so each loss is its value at h = 0: l(0) = ln 2 for dpo,
    # cdpo (ln 2 + ε·0) and rdpo (ln 2 − 0), and ln 2 times the mean weight of the step's pairs for margin
    assert metrics["history"][0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    if loss == "margin":
        weights = margin_weights(pairs)
        step_one = _batches(4, 2, 1, random.Random(derive_seed(3, "dpo-order", "a")))[0]  # train_dpo's order
        assert metrics["loss_first"] == pytest.approx(math.log(2) * sum(weights[i] for i in step_one) / 2, abs=1e-5)
        assert metrics["objective"] == {"loss": "margin", "weight_min": min(weights), "weight_max": max(weights)}
    else:
        assert metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-5)
    if loss == "dpo":
        assert "objective" not in metrics  # plain DPO's metrics are as they always were
    if loss == "cdpo":
        assert metrics["objective"] == {"loss": "cdpo", "eps": 0.1}
    if loss == "rdpo":  # the judges of the pairs it trained on: 5/36 (test_flip_rate_estimate_by_hand)
        assert metrics["objective"]["eps"] == pytest.approx(5 / 36, abs=1e-15)
        assert metrics["objective"]["estimated_from_pairs"] == 3


def test_tiny_iterations_with_rdpo_record_each_members_flip_rate(tiny_config):
    """End to end: the estimate comes from the pairs.jsonl rows the member trains on, and reaches metrics.json. In
    iteration 1 every judge is the same fresh adapter on one base, so judges agree (ε̂ = 0); after one iteration of
    training they differ, and disagree on some pairs."""
    c = tiny_config("iterations=2", "training.loss=rdpo", "training.pairs=own")
    Pipeline(c).run_all()
    estimates = []
    for t in (1, 2):
        it = Path(c.run_dir) / f"iter_{t:02d}"
        pairs = read_jsonl(it / "pairs.jsonl")
        metrics = json.loads((it / "metrics.json").read_text())["training"]
        assert pairs and all("judge_scores" in p for p in pairs)
        trained = [m for m in "abcd" if pairs_for(m, pairs, "own")]
        assert trained
        for member in trained:
            estimate, used = judge_disagreement(pairs_for(member, pairs, "own"))
            assert metrics[member]["objective"]["flip_rate_estimate"] == estimate
            assert metrics[member]["objective"]["estimated_from_pairs"] == used
            assert metrics[member]["objective"]["eps"] == min(estimate, 0.49)
            estimates.append((t, estimate))
    assert all(e == 0 for t, e in estimates if t == 1) and any(e > 0 for t, e in estimates if t == 2)


# ---- configuration ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (("training.loss=ipo",), "training.loss must be one of dpo, cdpo, rdpo, margin, got 'ipo'"),
    (("training.loss=cdpo",), "training.loss=cdpo needs training.label_smoothing in (0, 0.5)"),
    (("training.loss=cdpo", "training.label_smoothing=0.5"), "training.label_smoothing must lie in [0, 0.5), got 0.5"),
    (("training.label_smoothing=0.1",), "training.label_smoothing applies only to training.loss=cdpo"),
    (("training.loss=rdpo", "training.flip_rate=0.5"), "training.flip_rate must be 'auto' or a number in [0, 0.5)"),
    (("training.loss=rdpo", "training.flip_rate=-0.1"), "training.flip_rate must be 'auto' or a number in [0, 0.5)"),
    (("training.loss=rdpo", "training.flip_rate=often"), "training.flip_rate must be 'auto' or a number"),
    (("training.flip_rate=0.1",), "training.flip_rate applies only to training.loss=rdpo"),
    (("training.loss=rdpo", "pool.members=[a, b, c]"), "training.flip_rate=auto needs two judges per duel"),
    (("training.loss=rdpo", "method=spin"), "training.flip_rate=auto estimates the flip rate from the judges"),
    (("training.loss=margin", "method=spin"), "training.loss=margin weights each pair by its score gap"),
    (("training.loss=cdpo", "training.label_smoothing=0.1", "method=sppo", "baseline.samples=3"),
     "method=sppo trains with its own loss"),
])
def test_bad_loss_settings_are_config_errors(tiny_config, overrides, message):
    with pytest.raises(ConfigError) as e:
        tiny_config(*overrides)
    assert message in str(e.value)


def test_good_loss_settings_load(tiny_config):
    assert tiny_config("training.loss=rdpo", "training.flip_rate=5e-2").training.flip_rate == 0.05  # YAML 1.1 string
    assert tiny_config("training.loss=rdpo", "method=spin", "training.flip_rate=0.1").training.flip_rate == 0.1
    assert tiny_config("training.loss=margin", "method=self_rewarding").training.loss == "margin"
    default = tiny_config()
    assert (default.training.loss, default.training.label_smoothing, default.training.flip_rate) == ("dpo", 0.0, "auto")


def test_a_compare_plan_with_loss_arms_validates(tiny_config, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(dump_yaml(tiny_config()))
    arms = {"dpo": [], "cdpo": ["training.loss=cdpo", "training.label_smoothing=0.1"],
            "rdpo": ["training.loss=rdpo"], "margin": ["training.loss=margin"]}
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"tasks": ["gsm8k"], "arms": {
        name: {"config": "base.yaml", "overrides": [f"run_dir={tmp_path / 'runs' / name}", *o]}
        for name, o in arms.items()}}))
    configs = arm_configs(make_plan([], str(sweep), None, None, None))
    assert {n: c.training.loss for n, c in configs.items()} == {n: n for n in arms}
    sweep.write_text(yaml.safe_dump({"tasks": ["gsm8k"], "arms": {"bad": {
        "config": "base.yaml", "overrides": ["training.loss=rdpo", "training.flip_rate=0.7"]}}}))
    with pytest.raises(ConfigError, match="training.flip_rate must be"):
        arm_configs(make_plan([], str(sweep), None, None, None))


def test_a_run_made_before_the_loss_keys_reopens_unless_one_is_set(tiny_config):
    """Runs made before training.loss/label_smoothing/flip_rate existed: their saved config lacks the keys, which is
    the same config while the keys keep their defaults (plain dpo, as those runs trained)."""
    c = tiny_config()
    run = RunDir.open(c)
    saved = yaml.safe_load(run.config_file.read_text())
    for key in ("loss", "label_smoothing", "flip_rate"):
        del saved["training"][key]
    run.config_file.write_text(yaml.safe_dump(saved))
    RunDir.open(c)
    with pytest.raises(RunDirError, match=r"differs in: training\.loss"):
        RunDir.open(tiny_config("training.loss=rdpo"))


def test_the_documented_loss_sweep_validates(tmp_path):
    """docs/training.md's compare sweep, its config path pointed at the packaged paper.yaml: every arm loads."""
    doc = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    block = doc.split("Comparing them is a `sparta compare` sweep")[1].split("```yaml\n")[1].split("```")[0]
    paper = Path(__file__).parents[1] / "sparta" / "configs" / "paper.yaml"
    sweep = tmp_path / "losses.yaml"
    sweep.write_text(block.replace("../sparta/configs/paper.yaml", str(paper)))
    configs = arm_configs(make_plan([], str(sweep), None, None, None))
    assert {n: c.training.loss for n, c in configs.items()} == {"dpo": "dpo", "cdpo": "cdpo", "rdpo": "rdpo",
                                                               "margin": "margin"}
    assert configs["cdpo"].training.label_smoothing == 0.1 and configs["rdpo"].training.flip_rate == "auto"


def test_the_iteration_summary_shows_the_loss_and_its_eps():
    from sparta.cli import _training_cell

    t = {"loss_first": 0.693, "after": {"loss": 0.5, "reward_accuracy": 0.75, "pairs": 8}}
    assert _training_cell(t) == "0.693→0.500, acc 0.75 (8 pairs)"  # dpo: as it always was
    rdpo = {**t, "objective": {"loss": "rdpo", "eps": 5 / 36, "flip_rate_estimate": 5 / 36, "estimated_from_pairs": 3}}
    assert _training_cell(rdpo) == "0.693→0.500, acc 0.75 (8 pairs); rdpo ε 0.139"
    assert _training_cell({**t, "objective": {"loss": "margin", "weight_min": 0.5, "weight_max": 2.0}}).endswith(
        "; margin")
