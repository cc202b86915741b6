"""Judge diagnostics from an iteration's combat log, no gold answers needed (docs/ratings.md, "Judges").

- score_table: each judge's ok scores of each duel's two responses, unreadable judgments as missing values;
- krippendorff_alpha / pair_agreement: do the judges agree on the same responses?
- longer_won / length_spearman / marked_won: are verdicts bought by longer (or listed, headed, code-fenced) answers?
- judge_aware_bt: a Bradley-Terry fit with one discrimination γ_j per judge, P(a beats b | j) = σ(γ_j (β_a − β_b)),
  to set beside the reputations SPARTA gave the judges;
- judge_agreement: where prompts carry gold answers, how often each judge scored the correct response higher;
- diagnose: all of it for one iteration, with seeded bootstrap intervals (duels resampled), for ratings.json.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import spearmanr

from .records import Duel, to_json
from .tasks.catalog import TASKS, MissingUserData
from .tasks.graders import grade_gsm8k, grade_math, grade_mc_letter, normad_verdict

N_BOOT = 200  # resamples per interval; the judge-aware fits dominate the cost (docs/ratings.md, "Cost")
RIDGE = 0.01  # the N(0, 1/RIDGE) prior on each strength, as ratings.RIDGE: keeps an unbeaten member finite
DECIDED = ("a", "b")
_OPTION_LINE = re.compile(r"^([A-Z])\. (.+)$", re.MULTILINE)
STYLE = {  # cheap markers of formatting, each a regex over the response text
    "list": re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE),
    "header": re.compile(r"^\s*#{1,6}\s+\S", re.MULTILINE),
    "code": re.compile(r"```"),
}


@dataclass(frozen=True)
class Scores:
    """The judged duels of an iteration as arrays. scores[d, j, s]: judge j's score of duel d's side s (0 = a,
    1 = b); nan where the judge did not judge that duel or its judgment is not "ok" (unparsed and failed
    judgments are missing values, never scores). lengths[d, s] in characters."""

    judges: list[str]
    duels: list[Duel]
    scores: np.ndarray
    lengths: np.ndarray

    def verdicts(self) -> np.ndarray:
        """(duels, judges) sign of s_a − s_b: +1 a, −1 b, 0 tie; nan where the judge did not score both sides."""
        return np.sign(self.scores[:, :, 0] - self.scores[:, :, 1])


def score_table(duels: Sequence[Duel], judges: Sequence[str] = ()) -> Scores:
    """The duels whose two responses were generated (void:generation_failed has nothing to judge). Judges:
    `judges` in that order (a member who judged nothing this iteration stays listed), then any other judge found."""
    judged = [d for d in duels if d.response_a.text is not None and d.response_b.text is not None]
    judges = list(judges) + sorted({j.judge for d in judged for j in d.judgments} - set(judges))
    index = {name: i for i, name in enumerate(judges)}
    scores = np.full((len(judged), len(judges), 2), np.nan)
    for k, d in enumerate(judged):
        for j in d.judgments:
            if j.target not in ("a", "b"):
                raise ValueError(f"duel {d.iteration}/{d.index}: judgment target {j.target!r} is not 'a' or 'b'")
            if j.status == "ok":
                if j.score is None:
                    raise ValueError(f"duel {d.iteration}/{d.index}: judge {j.judge}'s ok judgment has no score")
                scores[k, index[j.judge], "ab".index(j.target)] = j.score
    lengths = np.array([[len(d.response_a.text), len(d.response_b.text)] for d in judged], float).reshape(-1, 2)
    return Scores(judges, judged, scores, lengths)


# ---- agreement ---------------------------------------------------------------------------------------------


def krippendorff_alpha(data: np.ndarray) -> float:
    """Krippendorff's alpha with the interval metric δ(c, k) = (c − k)², data (units, coders), nan = missing.

    alpha = 1 − D_o / D_e over the pairable values (units with at least two): D_o = (1/n) Σ_u 1/(m_u − 1)
    Σ_{i≠j in u} (v_i − v_j)², the disagreement within units, and D_e = 1/(n(n − 1)) Σ_{i≠j} (v_i − v_j)² over
    all n pairable values (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"). nan when there is
    nothing to compare or no variation at all (D_e = 0)."""
    data = np.asarray(data, float)
    m = (~np.isnan(data)).sum(axis=1)
    pairable = data[m >= 2]
    m = m[m >= 2]
    values = pairable[~np.isnan(pairable)]
    n = len(values)
    if n < 2:
        return float("nan")
    # Σ_{i≠j} (v_i − v_j)² = 2 (m Σ v² − (Σ v)²), within each unit and over everything
    s1, s2 = np.nansum(pairable, axis=1), np.nansum(pairable**2, axis=1)
    within = 2 * (m * s2 - s1**2) / (m - 1)
    d_e = 2 * (n * (values**2).sum() - values.sum() ** 2) / (n * (n - 1))
    if d_e <= 0:
        return float("nan")
    return float(1 - within.sum() / n / d_e)


def pair_agreement(verdicts: np.ndarray, j: int, k: int) -> np.ndarray:
    """Per duel: 1 where judges j and k's verdicts have the same sign (a tie agrees only with a tie), 0 where
    not, nan where either did not score both sides."""
    a, b = verdicts[:, j], verdicts[:, k]
    return np.where(np.isnan(a) | np.isnan(b), np.nan, (a == b).astype(float))


# ---- bias --------------------------------------------------------------------------------------------------


def longer_won(table: Scores) -> np.ndarray:
    """Per duel: 1 where the longer response won the decided duel, 0 where the shorter did, nan otherwise
    (tie, below margin, void, or equal lengths)."""
    out = np.full(len(table.duels), np.nan)
    for k, d in enumerate(table.duels):
        la, lb = table.lengths[k]
        if d.outcome in DECIDED and la != lb:
            out[k] = float((d.outcome == "a") == (la > lb))
    return out


def marked_won(table: Scores, marker: re.Pattern) -> np.ndarray:
    """Per duel: 1 where only one side has the marker and it won the decided duel, 0 where it lost, else nan."""
    out = np.full(len(table.duels), np.nan)
    for k, d in enumerate(table.duels):
        has = [bool(marker.search(d.response_a.text)), bool(marker.search(d.response_b.text))]
        if d.outcome in DECIDED and has[0] != has[1]:
            out[k] = float(has["ab".index(d.outcome)])
    return out


def length_spearman(table: Scores, picked: np.ndarray) -> float:
    """Spearman's rho of every ok score with its response's length in characters, over the duels `picked`."""
    s = table.scores[picked]
    lengths = np.broadcast_to(table.lengths[picked][:, None, :], s.shape)
    ok = ~np.isnan(s)
    return _spearman(s[ok], lengths[ok])


# ---- judge-aware Bradley-Terry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdicts:
    """One row per (duel, judge) that scored both sides: a's share y (1 a, 0 b, 1/2 a tie) between members a, b."""

    a: np.ndarray
    b: np.ndarray
    judge: np.ndarray
    y: np.ndarray
    duel: np.ndarray


def per_judge_verdicts(table: Scores, members: list[str]) -> Verdicts:
    """The judge-aware fit's data: every (duel, judge) verdict, fighters as indices into `members`."""
    index = {m: i for i, m in enumerate(members)}
    signs = table.verdicts()
    d, j = np.nonzero(~np.isnan(signs))
    for k in set(d.tolist()):
        for name in (table.duels[k].a, table.duels[k].b):
            if name not in index:
                raise ValueError(f"duel {table.duels[k].iteration}/{table.duels[k].index}: member {name!r} is not "
                                 f"in {members}")
    a = np.array([index[table.duels[k].a] for k in d], int)
    b = np.array([index[table.duels[k].b] for k in d], int)
    return Verdicts(a, b, j, (signs[d, j] + 1) / 2, d)


def _bt_objective(x: np.ndarray, v: Verdicts, n: int, ridge: float) -> tuple[float, np.ndarray]:
    beta, gamma = x[:n], x[n:]
    diff = beta[v.a] - beta[v.b]
    z = gamma[v.judge] * diff
    value = np.sum(np.logaddexp(0.0, z) - v.y * z) + 0.5 * ridge * beta @ beta  # −log-likelihood + prior
    r = expit(z) - v.y  # d value / dz
    g_beta = np.bincount(v.a, r * gamma[v.judge], n) - np.bincount(v.b, r * gamma[v.judge], n) + ridge * beta
    return value, np.concatenate([g_beta, np.bincount(v.judge, r * diff, len(gamma))])


def judge_aware_bt(v: Verdicts, n_members: int, n_judges: int, ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """(beta, gamma) maximising Σ log P(y | σ(γ_j (β_a − β_b))) − ridge/2 |β|² subject to γ_j ≥ 0, Σ β = 0 and
    mean γ = 1 (the likelihood only sees γ_j β, so one scale must be fixed; γ then reads "relative to the average
    judge": 0 is a judge whose verdicts carry no information about who is stronger, 2 one twice as sharp as the
    average). A judge with no verdicts keeps γ = 1 (no information; reported as None by `diagnose`). Fitted by
    SLSQP (scipy) with the analytic gradient. The judge's own γ only enters through its verdicts, so in the spirit
    of am-ELO (Liu et al. 2025) and judge-aware Bradley-Terry, a judge that agrees with the consensus ordering
    gets a large γ, one at random a γ near 0, and one reversed is held at 0."""
    x0 = np.concatenate([np.zeros(n_members), np.ones(n_judges)])
    if len(v.y) == 0:
        return x0[:n_members], x0[n_members:]
    constraints = [{"type": "eq", "fun": lambda x: x[:n_members].sum(), "jac": lambda x: np.r_[np.ones(n_members),
                                                                                                np.zeros(n_judges)]},
                   {"type": "eq", "fun": lambda x: x[n_members:].mean() - 1.0,
                    "jac": lambda x: np.r_[np.zeros(n_members), np.full(n_judges, 1.0 / n_judges)]}]
    bounds = [(None, None)] * n_members + [(0.0, None)] * n_judges
    fit = minimize(_bt_objective, x0, args=(v, n_members, ridge), jac=True, method="SLSQP", bounds=bounds,
                   constraints=constraints, options={"maxiter": 500, "ftol": 1e-10})
    if not fit.success:
        raise RuntimeError(f"judge_aware_bt: the optimiser did not converge ({fit.message})")
    return fit.x[:n_members], fit.x[n_members:]


# ---- gold answers ------------------------------------------------------------------------------------------


def gold_references(prompts: str, user_data: str | None) -> tuple[dict[str, str], str] | None:
    """(prompt id -> reference answer, grader kind) for a run whose combat prompts come from a graded task;
    None for judged tasks, self-instruct or a prompt file, and where the task's user data is missing."""
    task = TASKS.get(prompts)
    if task is None or task.kind == "judged":
        return None
    try:
        references = task.combat_references(user_data or None)
    except MissingUserData:
        return None
    return references, "normad" if task.name.startswith("normad") else task.kind


def judge_agreement(duels: list[dict], references: dict[str, str], kind: str) -> dict:
    """On duels where exactly one response is correct (graded against the prompt's reference answer): how often
    the reputation-weighted verdict, and each judge on its own, scored the correct response higher.

    `kind` picks the grader: "gsm8k", "math", "mc" (the letter), or "normad": the yes / no / neutral verdict a
    response states (normad_verdict) against the reference, a label (normad_country's prompts, the authors'
    "Choose from:'Yes', 'No', 'Neutral'") or an option letter (normad_value's MC prompts). A response whose
    verdict cannot be read is neither correct nor wrong: its duel is left out."""
    def correct(text: str, ref: str, prompt: str) -> bool | None:
        if kind == "gsm8k":
            return grade_gsm8k(text, ref)["flexible"].correct
        if kind == "math":
            return grade_math(text, ref).correct
        choices = dict(_OPTION_LINE.findall(prompt))  # MC prompts list their options as "A. text" lines
        if kind == "normad":
            said = normad_verdict(text, choices)
            return None if said is None else said == choices.get(ref, ref).strip().lower()
        return grade_mc_letter(text, choices, ref).correct if ref in choices else None

    agg, per_judge = [0, 0], {}
    for d in duels:
        ref = references.get(d["prompt_id"])
        if ref is None or d["score_a"] is None:
            continue
        ok = {side: correct(d[f"response_{side}"]["text"], ref, d["prompt"]) for side in "ab"}
        if None in ok.values():
            continue
        if ok["a"] == ok["b"]:
            continue
        right = "a" if ok["a"] else "b"
        agg[0] += d["outcome"] == right
        agg[1] += 1
        scores: dict[str, dict[str, float]] = {}
        for j in d["judgments"]:
            if j["status"] == "ok":
                scores.setdefault(j["judge"], {})[j["target"]] = j["score"]
        for judge, s in scores.items():
            if len(s) == 2:
                wrong = "b" if right == "a" else "a"
                tally = per_judge.setdefault(judge, [0, 0])
                tally[0] += s[right] > s[wrong]
                tally[1] += 1
    return {"duels": agg[1], "aggregate": agg[0] / agg[1] if agg[1] else None,
            "per_judge": {j: {"agree": a, "of": n, "rate": a / n} for j, (a, n) in sorted(per_judge.items())}}


# ---- one iteration -----------------------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _summary(value: float, boot: np.ndarray, level: float) -> dict:
    """A value and its percentile bootstrap interval; resamples where the statistic is undefined (e.g. no
    variation) are left out of the interval and counted in `undefined`. ci is None without resamples."""
    ok = boot[np.isfinite(boot)]
    tail = (1 - level) / 2
    ci = [float(q) for q in np.quantile(ok, [tail, 1 - tail])] if len(ok) else None
    return {"value": _finite(value), "ci": ci, "undefined": int(len(boot) - len(ok))}


def _estimate(stat: Callable[[np.ndarray], float], n: int, resamples: list[np.ndarray], level: float) -> dict:
    """stat (of the indices of the duels it is computed on) on all duels, with its bootstrap interval."""
    return _summary(stat(np.arange(n)), np.array([stat(idx) for idx in resamples]), level)


def _rate(per_duel: np.ndarray, n: int, resamples: list[np.ndarray], level: float) -> dict:
    """A rate over the duels where `per_duel` is defined (not nan), with its interval and how many duels."""
    def stat(idx: np.ndarray) -> float:
        x = per_duel[idx]
        return float(np.nanmean(x)) if np.isfinite(x).any() else np.nan

    return {**_estimate(stat, n, resamples, level), "duels": int(np.isfinite(per_duel).sum())}


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """nan with fewer than three points or where either side is constant (rho is undefined)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _resampled(v: Verdicts, idx: np.ndarray, n: int) -> Verdicts:
    """The verdicts of a resample of duels: each duel's rows repeated as often as the duel was drawn."""
    rows = np.repeat(np.arange(len(v.y)), np.bincount(idx, minlength=n)[v.duel])
    return Verdicts(v.a[rows], v.b[rows], v.judge[rows], v.y[rows], v.duel[rows])


def gamma_section(table: Scores, members: list[str], reputations: dict[str, float], resamples: list[np.ndarray],
                  level: float) -> dict:
    """Each judge's fitted γ (with interval) beside its reputation, and Spearman's rho between the two over the
    judges that have both (with interval: with a handful of judges it is wide)."""
    v, n, n_judges = per_judge_verdicts(table, members), len(table.duels), len(table.judges)
    counts = np.bincount(v.judge, minlength=n_judges)
    rated = [i for i, j in enumerate(table.judges) if j in reputations and counts[i]]
    rep = np.array([reputations[table.judges[i]] for i in rated])
    gamma = judge_aware_bt(v, len(members), n_judges)[1]
    boot = np.array([judge_aware_bt(_resampled(v, idx, n), len(members), n_judges)[1] for idx in resamples])
    boot = boot.reshape(len(resamples), n_judges)
    rho = np.array([_spearman(g[rated], rep) for g in boot])
    per_judge = {}
    for i, j in enumerate(table.judges):
        fitted = _summary(gamma[i], boot[:, i], level) if counts[i] else {"value": None, "ci": None}
        per_judge[j] = {**fitted, "verdicts": int(counts[i]), "reputation": reputations.get(j)}
    return {"per_judge": per_judge, "spearman_reputation": _summary(_spearman(gamma[rated], rep), rho, level),
            "judges_compared": len(rated)}


def diagnose(duels: Sequence[Duel], members: list[str], reputations: dict[str, float], seed: int,
             n_boot: int = N_BOOT, level: float = 0.95, gold: tuple[dict[str, str], str] | None = None) -> dict:
    """One iteration's judge diagnostics for ratings.json (the judges: the members, then any other judge found),
    each with a percentile bootstrap interval over `n_boot` resamples of its judged duels (numpy
    default_rng(seed); n_boot = 0: point values, ci None). `reputations`: the judges' SPARTA reputations to set
    beside their fitted γ; `gold`: (references, grader) from gold_references, or None."""
    table = score_table(duels, members)
    n, judges = len(table.duels), table.judges
    rng = np.random.default_rng(seed)
    resamples = [rng.integers(0, n, n) for _ in range(n_boot)] if n else []
    verdicts = table.verdicts()
    units = table.scores.transpose(0, 2, 1)  # (duels, sides, judges): a resampled duel brings both its units
    return {
        "duels": n, "judges": judges, "n_boot": n_boot, "seed": seed, "level": level,
        "judgments": {"ok": int(np.isfinite(table.scores).sum()),
                      "not_ok": int(sum(j.status != "ok" for d in table.duels for j in d.judgments))},
        "alpha": _estimate(lambda idx: krippendorff_alpha(units[idx].reshape(2 * len(idx), len(judges))), n,
                           resamples, level),
        "pairwise": {f"{judges[j]}~{judges[k]}": _rate(pair_agreement(verdicts, j, k), n, resamples, level)
                     for j in range(len(judges)) for k in range(j + 1, len(judges))},
        "length": {"unit": "characters",
                   "spearman": _estimate(lambda idx: length_spearman(table, idx), n, resamples, level),
                   "longer_wins": _rate(longer_won(table), n, resamples, level)},
        "style": {name: _rate(marked_won(table, marker), n, resamples, level) for name, marker in STYLE.items()},
        "gamma": gamma_section(table, members, reputations, resamples, level),
        # None where no prompt has a reference (GSM8K's shipped combat pool is questions only)
        "gold": judge_agreement([to_json(d) for d in table.duels], *gold) if gold and gold[0] else None,
    }
