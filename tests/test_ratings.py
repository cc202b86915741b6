"""Robust ratings: win counts, Bradley-Terry fits checked against known truths, bootstrap intervals, the order
dependence of the sequential rule, and the report section on a run directory built by hand."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest

from sparta.arena.reputation import EloParams, apply_duel, initial_state
from sparta.config import dump_yaml, load_config
from sparta.ratings import (
    bootstrap_bt,
    bradley_terry,
    mle_exists,
    order_dependence,
    run_ratings,
    win_matrix,
)
from sparta.records import Duel, Response, read_jsonl, to_json, write_json_atomic, write_jsonl_atomic
from sparta.report import write_report

PARAMS = EloParams()


def duel(a: str, b: str, outcome: str, index: int = 0) -> Duel:
    return Duel(1, 0, index, f"p:{index}", "q", a, b, Response(a, "x"), Response(b, "y"), outcome=outcome)


def sampled_duels(strengths: dict[str, float], n: int, seed: int) -> list[Duel]:
    """n duels between uniformly drawn pairs, the winner drawn from the Bradley-Terry model."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    out = []
    for k in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        p = 1 / (1 + math.exp(strengths[names[j]] - strengths[names[i]]))
        out.append(duel(names[i], names[j], "a" if rng.random() < p else "b", k))
    return out


def fought(state, fights: list[tuple[str, str, float, float]], iteration: int = 1) -> list[Duel]:
    """A combat log as the arena writes one (outcome, judges' weights at the time, the update), moving `state`."""
    out = []
    for k, (a, b, sa, sb) in enumerate(fights):
        d = duel(a, b, "tie" if sa == sb else "a" if sa > sb else "b", k)
        d.iteration = iteration
        d.score_a, d.score_b = sa, sb
        d.weights = {j: r for j, r in state.ratings.items() if j not in (a, b)}
        d.update = asdict(apply_duel(state, a, b, sa, sb, PARAMS))
        out.append(d)
    return out


TRUTH = {"a": 1.0, "b": 0.3, "c": -0.3, "d": -1.0}  # sums to zero, like the fitted strengths


# ---- win matrix --------------------------------------------------------------------------------------------


def test_win_matrix_counts_ties_as_halves_and_voids_apart():
    duels = [duel("a", "b", "a"), duel("a", "b", "a"), duel("b", "a", "a"), duel("a", "c", "tie"),
             duel("c", "b", "below_margin"), duel("a", "b", "void:generation_failed"),
             duel("b", "c", "void:no_valid_judges"), duel("c", "a", "b")]
    wins, void = win_matrix(duels, ["a", "b", "c"])
    assert void == 2
    assert wins.tolist() == [[0, 2, 1.5], [1, 0, 0.5], [0.5, 0.5, 0]]


@pytest.mark.parametrize("bad, message", [(duel("a", "z", "a"), "'z' is not in"), (duel("a", "b", ""), "outcome")])
def test_win_matrix_rejects_unknown_members_and_outcomes(bad, message):
    with pytest.raises(ValueError, match=message):
        win_matrix([bad], ["a", "b"])


# ---- Bradley-Terry -----------------------------------------------------------------------------------------


def test_bradley_terry_recovers_known_strengths():
    duels = sampled_duels(TRUTH, 6000, seed=0)
    beta = bradley_terry(win_matrix(duels, list(TRUTH))[0])
    # each member fights ~3000 duels at p(1-p) ~ 0.2: Fisher information ~600, a standard error ~0.04;
    # 0.15 is over three standard errors
    assert np.abs(beta - list(TRUTH.values())).max() < 0.15
    assert abs(beta.sum()) < 1e-9


def test_two_players_match_the_closed_form():
    # 6 wins, 2 ties, 2 losses: a's share is 7/10, so beta_a - beta_b = logit(0.7), split evenly about 0
    duels = [duel("a", "b", "a")] * 6 + [duel("a", "b", "tie")] * 2 + [duel("b", "a", "a")] * 2
    wins, _ = win_matrix(duels, ["a", "b"])
    logit = math.log(0.7 / 0.3)
    assert bradley_terry(wins, ridge=0) == pytest.approx([logit / 2, -logit / 2], abs=1e-6)
    assert bradley_terry(wins)[0] * 2 == pytest.approx(logit, abs=0.01)  # the default ridge barely moves it


def test_bradley_terry_agrees_with_the_mm_algorithm():
    """Hunter (2004)'s MM iteration, written out independently: pi_i <- W_i / sum_j n_ij / (pi_i + pi_j)."""
    wins = np.random.default_rng(3).integers(0, 6, size=(5, 5)).astype(float) + 0.5
    np.fill_diagonal(wins, 0)
    n = wins + wins.T
    pi = np.ones(5)
    for _ in range(5000):
        pi = wins.sum(axis=1) / (n / (pi[:, None] + pi[None, :])).sum(axis=1)
        pi /= pi.sum()
    expected = np.log(pi) - np.log(pi).mean()
    assert bradley_terry(wins, ridge=0) == pytest.approx(expected, abs=1e-6)


def test_a_member_who_never_lost_gets_a_finite_strength():
    duels = [duel("a", "b", "a")] * 5 + [duel("c", "a", "b")] * 5 + [duel("b", "c", "a"), duel("c", "b", "a")]
    wins, _ = win_matrix(duels, ["a", "b", "c"])
    assert not mle_exists(wins)
    beta = bradley_terry(wins)
    assert np.isfinite(beta).all() and beta.argmax() == 0 and beta[0] > 2
    with pytest.raises(ValueError, match="diverges"):
        bradley_terry(wins, ridge=0)


def test_bootstrap_intervals_cover_the_truth_and_shrink_with_more_data():
    small = bootstrap_bt(sampled_duels(TRUTH, 400, seed=1), list(TRUTH), n_boot=200, seed=0)
    large = bootstrap_bt(sampled_duels(TRUTH, 3200, seed=2), list(TRUTH), n_boot=200, seed=0)
    for fit in (small, large):
        for m, true in TRUTH.items():
            lo, hi = fit["members"][m]["ci"]
            assert lo < true < hi, (m, lo, hi)
    for m in TRUTH:
        width = {k: f["members"][m]["ci"][1] - f["members"][m]["ci"][0] for k, f in (("s", small), ("l", large))}
        assert width["l"] < 0.5 * width["s"]  # 8x the duels: ~1/sqrt(8) = 0.35 the width
    assert [large["members"][m]["rank_ci"] for m in TRUTH] == [[1, 1], [2, 2], [3, 3], [4, 4]]
    assert bootstrap_bt(sampled_duels(TRUTH, 400, seed=1), list(TRUTH), n_boot=200, seed=0) == small  # seeded


# ---- order dependence of the sequential rule ---------------------------------------------------------------


def test_identical_duels_have_no_order_dependence():
    start = initial_state(["a", "b", "c", "d"], PARAMS)
    result = order_dependence(fought(start.copy(), [("a", "b", 7.0, 4.0)] * 8), start, PARAMS, n_perm=20)
    assert result["same_ranking"] == 1.0 and result["kendall_tau"]["mean"] == 1.0
    assert result["weights_moved"] == 0  # the judges c and d never fought
    for m in "abcd":
        lo, hi = result["members"][m]["interval"]
        assert lo == hi == result["members"][m]["logged"]
    assert result["members"]["a"]["logged"] > 100 > result["members"]["b"]["logged"]
    # c and d never fought: equal ratings share the better rank
    assert [result["members"][m]["logged_rank"] for m in "abcd"] == [1, 4, 2, 2]


def test_a_crafted_log_depends_on_order():
    # a wins six duels while the ratings are level (gap factor ~ eps: tiny moves), then loses six by the same
    # margin once they are apart (large gap): in the logged order a ends far below b, below any random order
    start = initial_state(["a", "b", "c"], PARAMS)
    log = fought(start.copy(), [("a", "b", 9.0, 1.0)] * 6 + [("a", "c", 5.0, 6.0)] * 2 + [("b", "a", 9.0, 1.0)] * 6)
    result = order_dependence(log, start, PARAMS, n_perm=200, seed=1)
    a = result["members"]["a"]
    assert a["interval"][1] - a["interval"][0] > 1.0 and a["logged"] < a["interval"][0]
    assert result["same_ranking"] < 1.0 and a["same_rank"] < 1.0 and result["kendall_tau"]["mean"] < 1.0
    assert result["weights_moved"] > 0  # c's weight in the late a-b duels moved when c fought a
    assert order_dependence(log, start, PARAMS, n_perm=200, seed=1) == result  # seeded


def test_uniform_weights_never_count_as_moved():
    """With reputation.weighting=uniform every judge weighs 1 whatever the ratings, so no duel's weights moved
    (compared with the start ratings instead, all would count)."""
    uniform = EloParams(weighting="uniform")
    start = initial_state(["a", "b", "c"], uniform)
    log = fought(start.copy(), [("a", "b", 9.0, 1.0)] * 6 + [("a", "c", 5.0, 6.0)] * 2 + [("b", "a", 9.0, 1.0)] * 6)
    for d in log:
        d.weights = dict.fromkeys(d.weights, 1.0)
    assert order_dependence(log, start, uniform, n_perm=10)["weights_moved"] == 0


def test_replay_from_the_wrong_start_state_is_refused():
    start = initial_state(["a", "b", "c"], PARAMS)
    log = fought(start.copy(), [("a", "b", 9.0, 1.0), ("b", "c", 3.0, 2.0)])
    wrong = initial_state(["a", "b", "c"], PARAMS, {"a": 0.9, "b": 0.5, "c": 0.1})
    with pytest.raises(ValueError, match="does not replay"):
        order_dependence(log, wrong, PARAMS, n_perm=5)


# ---- a run directory ---------------------------------------------------------------------------------------


def make_run(root, initial_scores: dict[str, float] | None = None) -> dict:
    """Two finished iterations over three members, written as the pipeline writes them; only the files the report
    and the ratings read. Returns the final ratings."""
    members = ["a", "b", "c"]
    config = load_config(None, [f"run_dir={root}", "pool.members=[a, b, c]", "data.prompts=self_instruct"]
                         + (["reputation.initial=medqa"] if initial_scores else []))
    (root / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(dump_yaml(config))
    state = initial_state(members, PARAMS, initial_scores)
    if initial_scores:
        write_json_atomic(root / "initial_reputations.json", {"task": "medqa", "state": state.to_dict()})
    rng = np.random.default_rng(0)
    for t in (1, 2):
        it = root / f"iter_{t:02d}"
        fights = [(*rng.choice(members, 2, replace=False), *rng.uniform(1, 10, 2)) for _ in range(12)]
        log = fought(state, [(str(a), str(b), float(sa), float(sb)) for a, b, sa, sb in fights], t)
        log.append(duel("a", "c", "void:generation_failed", 12))
        write_jsonl_atomic(it / "combat.jsonl", [to_json(d) for d in log])
        write_json_atomic(it / "reputations.json", state.to_dict())
        write_json_atomic(it / "metrics.json", {"duels": 13, "pairs": 12, "tie_rate": 0.0, "judgments": {
            "parse_failure_rate": 0.0}, "responses": {"failed": 2}, "timings_s": {}})
        for m in members:
            write_json_atomic(it / "training" / f"{m}.json", {})
        for stage in ("combat", "iteration"):
            (it / "done").mkdir(exist_ok=True)
            (it / "done" / stage).write_text("x\n")
    return state.ratings


def test_report_has_a_robust_ratings_section(tmp_path):
    root = tmp_path / "run"
    final = make_run(root)
    report = write_report(root, ["a", "b", "c"]).read_text()
    assert "## Robust ratings" in report and "![win_matrix](win_matrix.png)" in report
    assert (root / "win_matrix.png").stat().st_size > 0
    ratings = json.loads((root / "ratings.json").read_text())
    assert ratings["iterations"] == [1, 2] and ratings["void"] == 2 and ratings["bradley_terry"]["duels"] == 24
    assert sum(map(sum, ratings["wins"])) == 24
    for m in "abc":
        bt = ratings["bradley_terry"]["members"][m]
        logged = ratings["per_iteration"]["2"]["order_dependence"]["members"][m]["logged"]
        assert logged == pytest.approx(final[m])  # the replay of iteration 2 ends where the run did
        assert f"| {m} | {final[m]:.3f} | {bt['strength']:+.3f} [{bt['ci'][0]:+.3f}, " in report


def test_run_ratings_start_from_initial_reputations(tmp_path):
    # iteration 1's replay must start from the kept accuracy-based state: a fair start would not replay
    root = tmp_path / "run"
    make_run(root, {"a": 0.8, "b": 0.5, "c": 0.2})
    ratings = run_ratings(root, ["a", "b", "c"], n_boot=20, n_perm=10)
    assert ratings["per_iteration"]["1"]["order_dependence"]["duels"] == 12


def test_a_real_run_replays_into_its_ratings(tiny_config):
    """The tiny pipeline's own logs: every iteration's logged order replays bit for bit from the start state the
    ratings module rebuilds (or the report would have raised), and the counts match the combat logs."""
    from sparta.pipeline import Pipeline

    config = tiny_config("iterations=2")
    root = Pipeline(config).run_all().root
    ratings = json.loads((root / "ratings.json").read_text())
    for t in (1, 2):
        rows = read_jsonl(root / f"iter_{t:02d}" / "combat.jsonl")
        perm = ratings["per_iteration"][str(t)]["order_dependence"]
        assert perm["duels"] == sum(r["update"] is not None for r in rows) > 0
        final = json.loads((root / f"iter_{t:02d}" / "reputations.json").read_text())["ratings"]
        assert {m: v["logged"] for m, v in perm["members"].items()} == final
        judges = ratings["per_iteration"][str(t)]["judges"]
        # every duel of the tiny pool is judged by the two members not fighting it
        assert judges["duels"] == len(rows) and judges["judges"] == ["a", "b", "c", "d"]
        assert judges["judgments"]["ok"] + judges["judgments"]["not_ok"] == sum(len(r["judgments"]) for r in rows)
        assert {m: g["reputation"] for m, g in judges["gamma"]["per_judge"].items()} == final
        assert judges["alpha"]["value"] is None or -1 <= judges["alpha"]["value"] <= 1
        assert set(judges["pairwise"]) == {"a~b", "a~c", "a~d", "b~c", "b~d", "c~d"}
    report = (root / "report.md").read_text()
    assert "## Robust ratings" in report and "## Judges" in report
    last = ratings["per_iteration"]["2"]["judges"]["gamma"]["per_judge"]["a"]
    assert f"| a | {final['a']:.3f} | " in report and f"| {last['verdicts']} |" in report
