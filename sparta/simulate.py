"""`sparta simulate`: the arena on a synthetic pool, no language model — when does reputation weighting pay?

The duels go through the run's own code: match-making (`combat.round_matches`: leader order, alpha, k, one
snapshot of the reputations per round), the verdict and the reputation update (`combat.decide`: `aggregate` with
reputation or uniform weights, min_margin, exact ties, `apply_duel`) and the pair rule (`pairs.preference_pairs`).
Only the members and the judges are made up, with known properties:

- member i has a latent quality q_i on the 1-10 scale; the qualities are evenly spaced over `spread` around 5.5
  and dealt to the members in a seeded order. A response's true quality is normal(q_i, response_sd).
- judge j has a noise sd_j; the sds are evenly spaced from judge_sd_max to judge_sd_min. `skill`: "tied" gives
  the best member the smallest sd (the paper's assumption: better models judge better); "independent" deals the
  same sds in a seeded random order, unrelated to quality.
- `comparison`: "pointwise" (the paper's judge): each response is scored on its own, true quality + normal(0,
  sd_j). "pairwise": the judge sees both and makes one noisy comparison, d = (y_a - y_b) + normal(0, sd_j), and
  one noisy reading of the pair's level, L = (y_a + y_b) / 2 + normal(0, sd_j); its scores are L + d/2 and L - d/2.
  Their difference is its comparison (noise sd_j, against sd_j·√2 pointwise); the shared level cancels in the
  verdict except through clipping and rounding.
- a score is clipped to [1, 10] and, with integer_scores (generate mode's parsed integers), rounded; without, it
  stays continuous (logprob mode's expected score).

Measured per seed, then as a mean and a 95% t-interval over seeds: pair precision (the share of pairs whose chosen
response has the higher true quality), pairs per duel, and the Spearman correlation of the final reputations with
the members' quality and with their judging skill (-sd_j).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .arena.combat import decide, round_matches
from .arena.matchmaking import leader_order, uniform_warning
from .arena.reputation import ReputationState, initial_state
from .config import ArenaConfig, ConfigError, ReputationConfig
from .pairs import preference_pairs
from .records import Duel, Judgment, Prompt, Response, write_json_atomic
from .seeding import rng

MIDDLE = 5.5  # the middle of the 1-10 scale: where the pool's qualities are centred
WEIGHTINGS = ("reputation", "uniform")
METRICS = ("precision", "pairs_per_duel", "rho_quality", "rho_skill", "rating_range")


@dataclass(frozen=True)
class SimConfig:
    members: int = 8
    duels: int = 400  # per seed, one iteration (paper: 1000)
    spread: float = 2.0  # the members' qualities span [5.5 - spread/2, 5.5 + spread/2]
    response_sd: float = 1.0  # a response's true quality ~ normal(its member's quality, response_sd)
    judge_sd_min: float = 0.5  # the judges' noise sds are evenly spaced from judge_sd_max down to judge_sd_min
    judge_sd_max: float = 3.0
    skill: str = "tied"  # "tied": the better member judges better; "independent": the sds dealt at random
    comparison: str = "pointwise"  # "pointwise" (the paper's judge) or "pairwise" (one noisy comparison)
    integer_scores: bool = True  # rounded like generate mode's scores; false: continuous like logprob mode's
    # starting reputations: "fair" (all reputation.initial_rating) or "quality": the members' qualities z-scored to
    # mean initial_rating, std 20, as a run with reputation.initial=TASK does with dev accuracies
    initial: str = "fair"
    seeds: int = 20
    seed: int = 0
    arena: ArenaConfig = field(default_factory=ArenaConfig)
    reputation: ReputationConfig = field(default_factory=ReputationConfig)

    def __post_init__(self) -> None:
        checks = [(self.members >= 3, "members must be >= 3 (two fight, at least one judges)"),
                  (self.duels >= 1, "duels must be >= 1"), (self.seeds >= 1, "seeds must be >= 1"),
                  (self.spread >= 0, "spread must be >= 0"), (self.response_sd >= 0, "response_sd must be >= 0"),
                  (0 <= self.judge_sd_min <= self.judge_sd_max, "need 0 <= judge_sd_min <= judge_sd_max"),
                  (self.skill in ("tied", "independent"), "skill must be 'tied' or 'independent'"),
                  (self.comparison in ("pointwise", "pairwise"), "comparison must be 'pointwise' or 'pairwise'"),
                  (self.initial in ("fair", "quality"), "initial must be 'fair' or 'quality'"),
                  (self.arena.round_size >= 1, "arena.round_size must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"simulate: {message} (got {self})")


def with_overrides(config: SimConfig, overrides: list[str]) -> SimConfig:
    """`key=value` or `section.key=value` (arena, reputation) overrides; a value must have the field's type."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"simulate: override {override!r} is not of the form key=value")
        config = _replaced(config, key.strip().split("."), yaml.safe_load(raw), key)
    return config


def _replaced(node, path: list[str], value, key: str):
    names = {f.name for f in dataclasses.fields(node)}
    if path[0] not in names:
        raise ConfigError(f"simulate: unknown key {key!r} (known here: {', '.join(sorted(names))})")
    current = getattr(node, path[0])
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise ConfigError(f"simulate: {key!r} is a section; set one of its keys ({key}.KEY=value)")
        return dataclasses.replace(node, **{path[0]: _replaced(current, path[1:], value, key)})
    if len(path) > 1:
        raise ConfigError(f"simulate: {path[0]!r} in {key!r} is not a section")
    if type(current) is float and type(value) is int:
        value = float(value)
    if type(value) is not type(current):
        raise ConfigError(f"simulate: {key} expects {type(current).__name__}, got {value!r}")
    return dataclasses.replace(node, **{path[0]: value})


# ---- the synthetic pool --------------------------------------------------------------------------

@dataclass(frozen=True)
class Pool:
    quality: dict[str, float]  # latent quality of each member's responses, on the 1-10 scale
    judge_sd: dict[str, float]  # each member's noise when it judges


def make_pool(c: SimConfig, seed: int) -> Pool:
    names = [f"m{i:02d}" for i in range(c.members)]
    steps = [i / (c.members - 1) for i in range(c.members)]  # 0 .. 1
    by_quality = list(names)
    rng(seed, "qualities").shuffle(by_quality)  # names say nothing of quality, nor does any sort order
    quality = {name: MIDDLE + c.spread * (s - 0.5) for name, s in zip(by_quality, steps)}
    sds = [c.judge_sd_max - (c.judge_sd_max - c.judge_sd_min) * s for s in steps]  # worst judge first
    if c.skill == "independent":
        rng(seed, "skill").shuffle(sds)
    return Pool(quality, dict(zip(by_quality, sds)))


def judge_scores(true_a: float, true_b: float, sd: float, c: SimConfig, draw) -> tuple[float, float]:
    """One judge's scores of a duel's two responses (see the module docstring for the two noise models)."""
    if c.comparison == "pointwise":
        seen_a, seen_b = true_a + draw.gauss(0.0, sd), true_b + draw.gauss(0.0, sd)
    else:
        difference = true_a - true_b + draw.gauss(0.0, sd)
        level = (true_a + true_b) / 2 + draw.gauss(0.0, sd)
        seen_a, seen_b = level + difference / 2, level - difference / 2
    return _on_scale(seen_a, c.integer_scores), _on_scale(seen_b, c.integer_scores)


def _on_scale(x: float, integer: bool) -> float:
    x = min(10.0, max(1.0, x))
    return float(round(x)) if integer else x


# ---- one arena -----------------------------------------------------------------------------------

@dataclass
class Arena:
    pool: Pool
    duels: list[Duel]
    pairs: list[dict]
    truth: dict[int, dict[str, float]]  # duel index -> each contestant's response's true quality
    state: ReputationState


def run_arena(c: SimConfig, seed: int, weighting: str) -> Arena:
    """One iteration of c.duels duels, fought in rounds of arena.round_size as `Sparta._fight` does. The
    responses and the judges' noise come from their own seeded streams, so both weightings see the same draws
    for as long as their schedules agree."""
    elo = dataclasses.replace(c.reputation, weighting=weighting)
    pool = make_pool(c, seed)
    members = sorted(pool.quality)
    state = initial_state(members, elo, pool.quality if c.initial == "quality" else None)
    prompts = [Prompt(f"simulate:{i}", f"duel {i}", "simulate") for i in range(c.duels)]
    leaders = leader_order(members, c.duels, rng(seed, "leaders"))
    responses, noise = rng(seed, "responses"), rng(seed, "judges")
    duels, truth = [], {}
    size = c.arena.round_size
    for r, start in enumerate(range(0, c.duels, size)):
        for m in round_matches(prompts, leaders, range(start, min(start + size, c.duels)), state.ratings,
                               c.arena, rng(seed, "opponents", r)):
            true = {x: responses.gauss(pool.quality[x], c.response_sd) for x in (m.a, m.b)}
            judgments = []
            for j in members:
                if j not in (m.a, m.b):
                    score_a, score_b = judge_scores(true[m.a], true[m.b], pool.judge_sd[j], c, noise)
                    judgments += [Judgment(j, "a", score_a, "ok"), Judgment(j, "b", score_b, "ok")]
            duel = Duel(1, r, m.index, m.prompt.id, m.prompt.text, m.a, m.b, Response(m.a, f"{true[m.a]:.3f}"),
                        Response(m.b, f"{true[m.b]:.3f}"), judgments)
            decide(duel, state, elo, c.arena.min_margin)
            duels.append(duel)
            truth[m.index] = true
    return Arena(pool, duels, preference_pairs(duels), truth, state)


def measure(arena: Arena) -> dict[str, float | None]:
    """The seed's numbers; None where undefined (no pairs; a pool whose qualities or sds are all equal)."""
    correct = [arena.truth[p["duel_index"]][p["chosen_model"]] > arena.truth[p["duel_index"]][p["rejected_model"]]
               for p in arena.pairs]
    members = sorted(arena.pool.quality)
    ratings = [arena.state.ratings[m] for m in members]
    return {
        "precision": sum(correct) / len(correct) if correct else None,
        "pairs_per_duel": len(arena.pairs) / len(arena.duels),
        "rho_quality": spearman(ratings, [arena.pool.quality[m] for m in members]),
        "rho_skill": spearman(ratings, [-arena.pool.judge_sd[m] for m in members]),
        "rating_range": max(ratings) - min(ratings),
    }


def spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None  # a constant side has no ranking
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


# ---- over seeds ----------------------------------------------------------------------------------

def interval(values: list[float | None]) -> dict:
    """Mean and 95% t-interval over the seeds that have a value (n counts them)."""
    from scipy.stats import t

    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "ci95": None, "n": 0}
    mean = statistics.fmean(got)
    if len(got) < 2:
        return {"mean": mean, "ci95": None, "n": 1}
    half = float(t.ppf(0.975, len(got) - 1)) * statistics.stdev(got) / math.sqrt(len(got))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(got)}


def simulate(c: SimConfig) -> dict:
    """Both weightings on seeds c.seed .. c.seed + seeds - 1: each metric's interval per weighting, and the
    per-seed difference in precision (reputation - uniform) with its interval."""
    per_seed = {w: [measure(run_arena(c, c.seed + s, w)) for s in range(c.seeds)] for w in WEIGHTINGS}
    out = {w: {k: interval([m[k] for m in rows]) for k in METRICS} for w, rows in per_seed.items()}
    gains = [None if r["precision"] is None or u["precision"] is None else r["precision"] - u["precision"]
             for r, u in zip(per_seed["reputation"], per_seed["uniform"])]
    out["precision_gain"] = interval(gains)
    return out


# ---- the sweep -----------------------------------------------------------------------------------

# One factor at a time from the base: (key, values, overrides that also apply). The base value of each axis is in
# its list. The last three axes repeat a factor with reputations spread from the start (initial=quality), the one
# case at the paper's constants where the weights differ enough from uniform to matter.
AXES = (("skill", ("tied", "independent"), ()),
        ("comparison", ("pointwise", "pairwise"), ()),
        ("integer_scores", (True, False), ()),
        ("judge_sd_max", (0.5, 1.5, 3.0, 6.0), ()),
        ("spread", (0.5, 1.0, 2.0, 4.0), ()),
        ("members", (4, 8, 16, 32), ()),
        ("duels", (100, 400, 1000), ()),
        ("arena.alpha", (0.0, 0.2, 0.5, 1.0), ()),
        ("arena.k", (1, 3, 7), ()),
        ("reputation.scaling", (20.0, 2.0, 0.2), ()),
        ("initial", ("fair", "quality"), ()),
        ("skill", ("tied", "independent"), ("initial=quality",)),
        ("judge_sd_max", (0.5, 3.0, 6.0), ("initial=quality",)))


def run(base: SimConfig, out: Path, axes=AXES, progress=None) -> tuple[list[dict], Path]:
    """`simulate` the base alone (axes=()) or each value of each axis; writes OUT (`write_results`). Returns the
    rows and the markdown's path."""
    clock = time.perf_counter()
    rows = sweep(base, axes, progress) if axes else [_row("base", "-", base, simulate(base))]
    return rows, write_results(out, base, rows, time.perf_counter() - clock)


def sweep(base: SimConfig, axes=AXES, progress=None) -> list[dict]:
    """A row per (axis, value): `simulate`'s numbers for the base with that key changed (and the axis' other
    overrides). A config met twice (the base value on each axis) is simulated once."""
    done: dict[SimConfig, dict] = {}
    rows = []
    for key, values, also in axes:
        for value in values:
            c = with_overrides(base, [*also, f"{key}={value}"])
            if c not in done:
                done[c] = simulate(c)
            rows.append(_row(" ".join([key, *also]), value, c, done[c]))
            if progress:
                progress(rows[-1])
    return rows


def _row(axis: str, value, c: SimConfig, result: dict) -> dict:
    return {"axis": axis, "value": value, "warning": uniform_warning(c.members, c.arena.k), "result": result}


def write_results(out: Path, base: SimConfig, rows: list[dict], seconds: float) -> Path:
    """OUT/simulate.json, OUT/simulate.md and two plots; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "simulate.json", {"base": dataclasses.asdict(base), "seconds": seconds, "rows": rows})
    plots = [_plot(out, rows, "gain.png", "pair precision, reputation − uniform weighting (paired by seed)",
                   {"reputation − uniform": lambda r: r["precision_gain"]}, zero=True),
             _plot(out, rows, "reputation.png", "Spearman ρ of the final reputations (reputation weighting)",
                   {"ρ(R, quality)": lambda r: r["reputation"]["rho_quality"],
                    "ρ(R, judging skill)": lambda r: r["reputation"]["rho_skill"]})]
    lines = [f"# sparta simulate: {base.seeds} seeds per cell, {seconds:.0f} s", "", f"Base: {describe(base)}.",
             "One factor at a time; each row changes one key of the base. Mean [95% t-interval over seeds].", "",
             *table(rows), "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    path = out / "simulate.md"
    path.write_text("\n".join(lines))
    return path


def describe(c: SimConfig) -> str:
    return (f"{c.members} members, {c.duels} duels, spread {c.spread:g}, response_sd {c.response_sd:g}, judge sd "
            f"{c.judge_sd_min:g}..{c.judge_sd_max:g} ({c.skill}), {c.comparison}, "
            f"{'integer' if c.integer_scores else 'continuous'} scores, alpha {c.arena.alpha:g}, k {c.arena.k}, "
            f"round_size {c.arena.round_size}, min_margin {c.arena.min_margin:g}")


def table(rows: list[dict]) -> list[str]:
    """Pairs per duel and precision for each weighting, the per-seed precision gain of reputation weighting, and
    the final reputations (reputation weighting): their rank correlations and their range."""
    lines = ["| axis | value | pairs/duel, rep. | pairs/duel, unif. | precision, reputation | precision, uniform | "
             "reputation − uniform | ρ(R, quality) | ρ(R, skill) | R max − min |", "|---" * 10 + "|"]
    for row in rows:
        r, rep, uni = row["result"], row["result"]["reputation"], row["result"]["uniform"]
        value = f"{row['value']}" + (" (uniform match-making)" if row["warning"] else "")
        lines.append(f"| {row['axis']} | {value} | {cell(rep['pairs_per_duel'], 3, ci=False)} | "
                     f"{cell(uni['pairs_per_duel'], 3, ci=False)} | {cell(rep['precision'])} | "
                     f"{cell(uni['precision'])} | {cell(r['precision_gain'], signed=True)} | "
                     f"{cell(rep['rho_quality'], 2)} | {cell(rep['rho_skill'], 2)} | {cell(rep['rating_range'], 1)} |")
    return lines


def cell(s: dict, digits: int = 3, signed: bool = False, ci: bool = True) -> str:
    if s["mean"] is None:
        return "n/a"
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    text = f.format(s["mean"])
    return text + (f" [{f.format(s['ci95'][0])}, {f.format(s['ci95'][1])}]" if ci and s["ci95"] else "")


def _plot(out: Path, rows: list[dict], name: str, title: str, series: dict, zero: bool = False) -> Path:
    """A panel per axis: each series' mean with its interval, per value of the axis. `series` maps a label to
    the function that picks its {mean, ci95} out of a row's result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(dict.fromkeys(row["axis"] for row in rows))
    columns = min(5, len(axes))
    lines = -(-len(axes) // columns)
    fig, panels = plt.subplots(lines, columns, figsize=(2.2 * columns, 0.4 + 2.1 * lines), sharey=True,
                               squeeze=False)
    for panel in panels.flat[len(axes):]:
        panel.set_visible(False)
    for panel, axis in zip(panels.flat, axes):
        mine = [row for row in rows if row["axis"] == axis]
        for offset, (label, pick) in enumerate(series.items()):
            shown = [(i, pick(row["result"])) for i, row in enumerate(mine) if pick(row["result"])["mean"] is not None]
            errors = [[s["mean"] - s["ci95"][0] if s["ci95"] else 0 for _, s in shown],
                      [s["ci95"][1] - s["mean"] if s["ci95"] else 0 for _, s in shown]]
            panel.errorbar([i + 0.1 * (offset - (len(series) - 1) / 2) for i, _ in shown],
                           [s["mean"] for _, s in shown], yerr=errors, fmt="o-", markersize=3, linewidth=1,
                           capsize=2, label=label)
        if zero:
            panel.axhline(0.0, color="grey", linewidth=0.6)
        panel.set_xticks(range(len(mine)), [str(row["value"]) for row in mine], fontsize=7)
        panel.set_title(axis, fontsize=8)
        panel.tick_params(axis="y", labelsize=7)
    panels.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
