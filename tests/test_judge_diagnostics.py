"""Judge diagnostics: Krippendorff's alpha against hand computations and the published worked example, pairwise
agreement, length and style bias on constructed duels, the judge-aware Bradley-Terry fit on synthetic judges of
known discrimination, and unreadable judgments kept out of every number."""

import math

import numpy as np
import pytest

from sparta.judge_diagnostics import (
    diagnose,
    judge_aware_bt,
    krippendorff_alpha,
    pair_agreement,
    per_judge_verdicts,
    score_table,
)
from sparta.records import Duel, Judgment, Response

nan = math.nan


def duel(k: int, a: str, b: str, scores: dict[str, tuple], text_a: str = "x", text_b: str = "y",
         outcome: str | None = None) -> Duel:
    """A duel judged by `scores` {judge: (score of a, score of b)}; a score None is an unparsed judgment. The
    aggregated scores are the means over the judges that scored both sides, the outcome their verdict unless
    given."""
    judgments = [Judgment(j, side, s, "ok" if s is not None else "unparsed", None if s is not None else "??")
                 for j, pair in scores.items() for side, s in zip("ab", pair)]
    ok = [(sa, sb) for sa, sb in scores.values() if sa is not None and sb is not None]
    gap = sum(sa - sb for sa, sb in ok)
    outcome = outcome or ("a" if gap > 0 else "b" if gap < 0 else "tie")
    mean = [sum(pair[i] for pair in ok) / len(ok) for i in (0, 1)] if ok else [None, None]
    return Duel(1, 0, k, f"p:{k}", "q", a, b, Response(a, text_a), Response(b, text_b), judgments,
                score_a=mean[0], score_b=mean[1], outcome=outcome)


# ---- Krippendorff's alpha ----------------------------------------------------------------------------------


def test_alpha_is_one_when_the_judges_agree_exactly():
    assert krippendorff_alpha(np.array([[1, 1, 1], [4, 4, nan], [7, 7, 7], [2, nan, 2.0]])) == 1.0


def test_alpha_on_a_hand_computed_example():
    """Units (1, 2), (3, 3), (5, 4): n = 6 values. Within units Σ_{i≠j}(v_i − v_j)² / (m_u − 1) = 2, 0, 2, so
    D_o = 4/6. Over all values Σ v = 18, Σ v² = 64: Σ_{i≠j} = 2 (6·64 − 18²) = 120, D_e = 120 / (6·5) = 4.
    alpha = 1 − (2/3)/4 = 5/6. A unit with one value (the last) is not pairable and changes nothing."""
    assert krippendorff_alpha(np.array([[1, 2], [3, 3], [5, 4], [9, nan]])) == pytest.approx(5 / 6)


def test_alpha_matches_krippendorffs_worked_example():
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4 observers x 12 units example
    with missing values: interval alpha = 0.849."""
    a, b, c, d = ([1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
                  [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan])
    assert krippendorff_alpha(np.array([a, b, c, d]).T) == pytest.approx(0.849, abs=5e-4)


def test_alpha_is_undefined_without_variation():
    assert math.isnan(krippendorff_alpha(np.array([[5, 5], [5, 5.0]])))


# ---- agreement and bias from duels ---------------------------------------------------------------------------


def test_pairwise_agreement_counts_same_sign_verdicts():
    """x and y agree on duel 0 (both a), disagree on 1, agree on 2 (both tie); z only judged duel 2."""
    duels = [duel(0, "a", "b", {"x": (7, 3), "y": (6, 5)}), duel(1, "a", "b", {"x": (2, 3), "y": (6, 5)}),
             duel(2, "a", "b", {"x": (4, 4), "y": (5, 5), "z": (1, 9)})]
    table = score_table(duels)
    assert table.judges == ["x", "y", "z"]
    assert np.array_equal(pair_agreement(table.verdicts(), 0, 1), [1, 0, 1])
    assert np.array_equal(pair_agreement(table.verdicts(), 0, 2), [nan, nan, 0], equal_nan=True)
    result = diagnose(duels, ["a", "b"], {}, seed=0, n_boot=0)["pairwise"]
    assert result["x~y"]["value"] == pytest.approx(2 / 3) and result["x~y"]["duels"] == 3
    assert result["x~z"]["value"] == 0.0 and result["x~z"]["duels"] == 1


def test_the_longer_answer_always_winning_gives_a_win_rate_of_one():
    rng = np.random.default_rng(0)
    duels = []
    for k in range(40):
        la, lb = rng.choice(np.arange(1, 200), 2, replace=False)
        duels.append(duel(k, "a", "b", {"x": (la / 20, lb / 20)}, "w" * la, "w" * lb))
    # equal lengths, scored alike: a tie, not counted in the win rate
    duels.append(duel(40, "a", "b", {"x": (4 / 20, 4 / 20)}, "same", "size"))
    length = diagnose(duels, ["a", "b"], {}, seed=0, n_boot=50)["length"]
    assert length["longer_wins"]["value"] == 1.0 and length["longer_wins"]["duels"] == 40
    assert length["longer_wins"]["ci"] == [1.0, 1.0]
    assert length["spearman"]["value"] == pytest.approx(1.0)  # every score is its length / 20


def test_style_win_rate_counts_duels_where_only_one_side_has_the_marker():
    listed, plain = "Steps:\n- one\n- two", "one then two"
    duels = [duel(0, "a", "b", {"x": (8, 2)}, listed, plain), duel(1, "a", "b", {"x": (8, 2)}, plain, listed),
             duel(2, "a", "b", {"x": (8, 2)}, listed, listed), duel(3, "a", "b", {"x": (2, 8)}, plain, "# T\n```x```")]
    style = diagnose(duels, ["a", "b"], {}, seed=0, n_boot=0)["style"]
    assert style["list"]["value"] == 0.5 and style["list"]["duels"] == 2
    assert style["header"]["value"] == 1.0 and style["code"]["duels"] == 1


def test_unreadable_judgments_are_missing_not_scores():
    """y's unparsed judgment of duel 0's b is no score: y's duel-0 verdict and units are missing, not a 0."""
    duels = [duel(0, "a", "b", {"x": (7, 3), "y": (6, None)}), duel(1, "a", "b", {"x": (2, 3), "y": (2, 3)})]
    table = score_table(duels)
    assert np.isnan(table.scores[0, 1, 1]) and np.isnan(table.verdicts()[0, 1])
    result = diagnose(duels, ["a", "b"], {}, seed=0, n_boot=0)
    assert result["judgments"] == {"ok": 7, "not_ok": 1}
    assert result["pairwise"]["x~y"]["duels"] == 1 and result["pairwise"]["x~y"]["value"] == 1.0
    # units: (7, 6), (3, -), (2, 2), (3, 3): only the pairable three count, and the judges agree on two
    units = np.array([[7, 6], [2, 2], [3, 3.0]])
    assert result["alpha"]["value"] == pytest.approx(krippendorff_alpha(units))
    assert per_judge_verdicts(table, ["a", "b"]).y.tolist() == [1.0, 0.0, 0.0]


# ---- judge-aware Bradley-Terry -------------------------------------------------------------------------------

STRENGTH = {"m0": 1.2, "m1": 0.6, "m2": 0.0, "m3": -0.6, "m4": -1.2}
GAMMA = {"sharp": 2.0, "fair": 1.0, "dull": 0.4, "random": 0.0}


def synthetic_duels(n: int, seed: int) -> list[Duel]:
    """n duels between random pairs; each judge says a wins with probability σ(γ_j (β_a − β_b))."""
    rng = np.random.default_rng(seed)
    names = list(STRENGTH)
    out = []
    for k in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        gap = STRENGTH[names[i]] - STRENGTH[names[j]]
        scores = {judge: (6, 4) if rng.random() < 1 / (1 + math.exp(-g * gap)) else (4, 6)
                  for judge, g in GAMMA.items()}
        out.append(duel(k, names[i], names[j], scores))
    return out


def test_judge_aware_fit_recovers_the_judges_order_and_a_random_judge_gets_gamma_near_zero():
    table = score_table(synthetic_duels(3000, seed=0))
    beta, gamma = judge_aware_bt(per_judge_verdicts(table, list(STRENGTH)), len(STRENGTH), len(table.judges))
    fitted = dict(zip(table.judges, gamma))
    assert sorted(fitted, key=fitted.get, reverse=True) == ["sharp", "fair", "dull", "random"]
    assert fitted["random"] < 0.1 and np.mean(gamma) == pytest.approx(1.0)
    # the scale is fixed by mean γ = 1: the truth's mean γ is 0.85, so γ and β come out scaled by 1/0.85 and 0.85
    scale = np.mean(list(GAMMA.values()))
    assert fitted["sharp"] == pytest.approx(GAMMA["sharp"] / scale, rel=0.15)
    assert np.argsort(-beta).tolist() == [0, 1, 2, 3, 4] and abs(beta.sum()) < 1e-6
    assert beta == pytest.approx(np.array(list(STRENGTH.values())) * scale, abs=0.15)


def test_gamma_follows_reputation_when_reputation_ranks_the_judges_right():
    duels = synthetic_duels(600, seed=1)
    reputations = {"sharp": 140.0, "fair": 110.0, "dull": 90.0, "random": 60.0}
    result = diagnose(duels, list(STRENGTH), reputations, seed=3, n_boot=30)["gamma"]
    assert result["spearman_reputation"]["value"] == 1.0 and result["judges_compared"] == 4
    lo, hi = result["per_judge"]["sharp"]["ci"]
    assert lo < result["per_judge"]["sharp"]["value"] < hi
    assert result["per_judge"]["random"]["reputation"] == 60.0
    assert diagnose(duels, list(STRENGTH), reputations, seed=3, n_boot=30)["gamma"] == result  # seeded


def test_gold_agreement_per_judge_where_prompts_have_answers():
    """p:0 and p:1 have one correct response each (72 is right): x scores the right one higher in both, y in
    neither; p:2 has no reference. Without references the section is None."""
    duels = [duel(0, "a", "b", {"x": (7, 3), "y": (2, 6)}, "The answer is 72.", "It is 70."),
             duel(1, "a", "b", {"x": (1, 9), "y": (5, 4)}, "I get 71", "72"),
             duel(2, "a", "b", {"x": (1, 9), "y": (5, 4)}, "72", "71")]
    gold = diagnose(duels, ["a", "b"], {}, seed=0, n_boot=0, gold=({"p:0": "72", "p:1": "72"}, "gsm8k"))["gold"]
    assert gold["duels"] == 2
    assert gold["per_judge"] == {"x": {"agree": 2, "of": 2, "rate": 1.0}, "y": {"agree": 0, "of": 2, "rate": 0.0}}
    assert diagnose(duels, ["a", "b"], {}, seed=0, n_boot=0)["gold"] is None
    assert diagnose(duels, ["a", "b"], {}, seed=0, n_boot=0, gold=({}, "gsm8k"))["gold"] is None  # no references
