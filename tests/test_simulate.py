"""`sparta simulate`: the real arena (match-making, aggregation, Elo, pair rule) on a synthetic pool."""

from __future__ import annotations

import dataclasses
import json
import random
import statistics

import pytest

from sparta.arena.reputation import apply_duel, initial_state
from sparta.cli import main
from sparta.config import ConfigError
from sparta.simulate import (
    AXES,
    SimConfig,
    judge_scores,
    make_pool,
    measure,
    run,
    run_arena,
    simulate,
    with_overrides,
)

NOISELESS = SimConfig(members=4, duels=100, judge_sd_min=0.0, judge_sd_max=0.0, response_sd=0.0,
                      integer_scores=False)


@pytest.mark.parametrize("weighting", ["reputation", "uniform"])
def test_noiseless_judges_pair_right_and_rank_members_by_quality(weighting):
    """Judges that read true quality exactly: every duel is decided for the better response (precision 1, a pair per
    duel since the qualities differ), and after 100 duels among 4 members the reputations rank as the qualities."""
    for seed in range(5):
        arena = run_arena(NOISELESS, seed, weighting)
        first = arena.duels[0]  # by hand: every judge scores each response its member's quality
        assert (first.score_a, first.score_b) == (pytest.approx(arena.pool.quality[first.a]),
                                                  pytest.approx(arena.pool.quality[first.b]))
        assert first.outcome == ("a" if arena.pool.quality[first.a] > arena.pool.quality[first.b] else "b")
        m = measure(arena)
        assert (m["precision"], m["pairs_per_duel"], m["rho_quality"]) == (1.0, 1.0, 1.0)


def test_pure_noise_judges_pair_at_chance():
    """Judges whose noise (sd 1000) swamps a quality gap of a few points: scores are 1 or 10 by coin flip, so a
    pair's chosen response is the better one half the time. Over > 1500 pairs (uniform weighting leaves more
    exact ties) the share's sd is < 0.013; the tolerance 0.05 is ~4 sd."""
    c = SimConfig(duels=200, judge_sd_min=1e3, judge_sd_max=1e3)
    for weighting in ("reputation", "uniform"):
        right = total = 0
        for seed in range(10):
            arena = run_arena(c, seed, weighting)
            right += sum(arena.truth[p["duel_index"]][p["chosen_model"]] >
                         arena.truth[p["duel_index"]][p["rejected_model"]] for p in arena.pairs)
            total += len(arena.pairs)
        assert total > 1500
        assert abs(right / total - 0.5) < 0.05, (weighting, right / total)


@pytest.mark.parametrize("weighting", ["reputation", "uniform"])
def test_each_verdict_weighs_judges_as_the_weighting_says(weighting):
    """Replaying the duels from the start state: with reputation weighting each judge counts for its rating at
    that duel (and the ratings do come apart), with uniform weighting for 1."""
    c = SimConfig(duels=60, initial="quality")
    arena = run_arena(c, 3, weighting)
    state = initial_state(sorted(arena.pool.quality), c.reputation, arena.pool.quality)
    for d in arena.duels:
        judges = sorted({j.judge for j in d.judgments})
        expected = {j: state.ratings[j] if weighting == "reputation" else 1.0 for j in judges}
        assert d.weights == expected
        apply_duel(state, d.a, d.b, d.score_a, d.score_b, c.reputation)
    assert state.ratings == arena.state.ratings
    assert len(set(arena.duels[0].weights.values())) == (len(arena.duels[0].weights) if weighting == "reputation"
                                                         else 1)


def test_first_verdict_is_the_reputation_weighted_mean_of_the_same_judgments():
    """Same seed, same first match and judgments under both weightings; the aggregate differs exactly as the
    weighted and the plain mean of those scores do (starting reputations from quality: unequal weights)."""
    c = SimConfig(initial="quality", duels=1, integer_scores=False)
    rep, uni = run_arena(c, 0, "reputation").duels[0], run_arena(c, 0, "uniform").duels[0]
    assert (rep.a, rep.b, rep.judgments) == (uni.a, uni.b, uni.judgments)
    start = initial_state(sorted(make_pool(c, 0).quality), c.reputation, make_pool(c, 0).quality).ratings
    scores = {(j.judge, j.target): j.score for j in rep.judgments}
    judges = sorted({j for j, _ in scores})
    weighted = sum(start[j] * scores[j, "a"] for j in judges) / sum(start[j] for j in judges)
    assert rep.score_a == pytest.approx(weighted)
    assert uni.score_a == pytest.approx(statistics.fmean(scores[j, "a"] for j in judges))
    assert rep.score_a != pytest.approx(uni.score_a)


def test_a_seed_fixes_the_results():
    c = SimConfig(duels=50, seeds=2)
    assert simulate(c) == simulate(c)
    assert simulate(c) != simulate(dataclasses.replace(c, seed=1))


@pytest.mark.parametrize("comparison, sd_of_difference", [("pointwise", 2 ** 0.5), ("pairwise", 1.0)])
def test_pairwise_judges_compare_with_one_noise(comparison, sd_of_difference):
    """A judge of sd 1 on two equal responses mid-scale (no clipping, continuous scores): the score difference has
    sd √2 when each response is scored on its own, 1 when the judge makes one comparison."""
    c = SimConfig(comparison=comparison, integer_scores=False)
    draw = random.Random(0)
    differences = [a - b for a, b in (judge_scores(5.5, 5.5, 1.0, c, draw) for _ in range(20000))]
    assert statistics.pstdev(differences) == pytest.approx(sd_of_difference, abs=0.03)


def test_judging_skill_tied_to_quality_or_dealt_at_random():
    tied = make_pool(SimConfig(skill="tied"), 0)
    order = sorted(tied.quality, key=tied.quality.get)
    assert [tied.judge_sd[m] for m in order] == sorted(tied.judge_sd.values(), reverse=True)
    dealt = [make_pool(SimConfig(skill="independent"), seed) for seed in range(5)]
    assert all(sorted(p.judge_sd.values()) == sorted(tied.judge_sd.values()) for p in dealt)
    assert len({tuple(p.judge_sd[m] for m in sorted(p.quality, key=p.quality.get)) for p in dealt}) == 5


@pytest.mark.parametrize("overrides, message", [
    (["skill=sometimes"], "skill must be"), (["members=2"], "members must be"),
    (["judge_sd_min=4"], "judge_sd_min <= judge_sd_max"), (["arena.alpha=2"], "alpha must be in [0, 1]"),
    (["colour=red"], "unknown key 'colour'"), (["arena=1"], "'arena' is a section"),
    (["duels=many"], "duels expects int"), (["seeds"], "not of the form key=value"),
])
def test_bad_config_names_what_is_wrong(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        c = with_overrides(SimConfig(), overrides)
        run_arena(c, 0, "reputation")  # alpha is checked where match-making reads it


def test_overrides_reach_nested_sections_and_cast_ints_to_floats():
    c = with_overrides(SimConfig(), ["arena.alpha=1", "reputation.scaling=2", "members=16", "skill=independent"])
    assert (c.arena.alpha, c.reputation.scaling, c.members, c.skill) == (1.0, 2.0, 16, "independent")
    assert isinstance(c.arena.alpha, float)
    with pytest.raises(ConfigError):
        SimConfig(comparison="both")


def test_sweep_writes_a_row_per_axis_value_with_its_table_line_and_plots(tmp_path):
    axes = (("arena.k", (1, 7), ()), ("skill", ("tied", "independent"), ("initial=quality",)))
    rows, md = run(SimConfig(duels=16, seeds=2), tmp_path, axes)
    assert [(r["axis"], r["value"]) for r in json.loads((tmp_path / "simulate.json").read_text())["rows"]] == [
        ("arena.k", 1), ("arena.k", 7), ("skill initial=quality", "tied"), ("skill initial=quality", "independent")]
    table = md.read_text()
    assert "\n| arena.k | 7 (uniform match-making) |" in table  # 8 members: k=7 is all the others
    assert "\n| skill initial=quality | independent |" in table
    assert rows[2]["result"]["reputation"]["rating_range"]["mean"] > 50  # initial=quality did apply
    assert all((tmp_path / name).stat().st_size > 0 for name in ("gain.png", "reputation.png"))


def test_default_sweep_axes_are_valid_configs():
    for key, values, also in AXES:
        for value in values:
            c = with_overrides(SimConfig(), [*also, f"{key}={value}"])
            section, _, name = key.rpartition(".")
            assert getattr(getattr(c, section) if section else c, name) == value


def test_cli_runs_one_config_and_refuses_a_bad_key(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--seeds", "2", "duels=20", "members=4", "--out", str(out)]) == 0
    assert "| base | - (uniform match-making) |" in capsys.readouterr().out  # 4 members, k=3: all the others
    assert json.loads((out / "simulate.json").read_text())["base"]["members"] == 4
    assert main(["simulate", "skill=often", "--out", str(out)]) == 2
    assert "skill must be" in capsys.readouterr().err
