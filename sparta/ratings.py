"""Robust ratings from a run's combat log, beside the paper's sequential rule (docs/ratings.md).

The adapted Elo rule (arena/reputation.py) keeps driving training; this module only reads the log:

- win_matrix: who beat whom, counted from the logged outcomes;
- bradley_terry / bootstrap_bt: order-free maximum-likelihood strengths with bootstrap intervals;
- order_dependence: how much the sequential ratings depend on the order the duels happened to be fought in;
- run_ratings / write_ratings: all of it for a run directory, as RUN/ratings.json, with each iteration's judge
  diagnostics (sparta/judge_diagnostics.py: agreement, length bias, judge discrimination beside reputation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.sparse.csgraph import connected_components
from scipy.special import expit
from scipy.stats import kendalltau, rankdata

from .arena.judging import judge_weights
from .arena.reputation import EloParams, ReputationState, apply_duel, initial_state
from .judge_diagnostics import N_BOOT as JUDGE_N_BOOT
from .judge_diagnostics import diagnose, gold_references
from .records import Duel, read_json, read_jsonl, write_json_atomic
from .rundir import RunDir
from .seeding import derive_seed

# A Gaussian prior beta_i ~ N(0, 1/RIDGE) on every strength: sd 10 on the log-odds scale, far wider than any
# real pool, so it changes nothing where the MLE exists and keeps a member who never lost (or never won) finite.
RIDGE = 0.01
N_BOOT, N_PERM = 1000, 100  # bootstrap resamples; random duel orders (the replays dominate the cost)
TIE_SHARE = {"a": 1.0, "b": 0.0, "tie": 0.5, "below_margin": 0.5}  # a's share of the win, by outcome
TIE_CONVENTION = "ties and below-margin duels count 1/2 a win to each side; void duels are left out"


@dataclass(frozen=True)
class Outcomes:
    """The decided (non-void) duels as index arrays: a beat b with share `share` (1, 0 or 1/2)."""

    members: list[str]
    a: np.ndarray
    b: np.ndarray
    share: np.ndarray
    void: int

    def wins(self, picked: np.ndarray | None = None) -> np.ndarray:
        """wins[i, j] = times i beat j over the duels `picked` (indices, repeats allowed; None = all)."""
        picked = np.arange(len(self.a)) if picked is None else picked
        w = np.zeros((len(self.members), len(self.members)))
        np.add.at(w, (self.a[picked], self.b[picked]), self.share[picked])
        np.add.at(w, (self.b[picked], self.a[picked]), 1.0 - self.share[picked])
        return w


def outcomes(duels: Sequence[Duel], members: list[str]) -> Outcomes:
    index = {m: i for i, m in enumerate(members)}
    rows, void = [], 0
    for d in duels:
        if d.outcome.startswith("void:"):
            void += 1
            continue
        if d.outcome not in TIE_SHARE:
            raise ValueError(f"duel {d.iteration}/{d.index}: unknown outcome {d.outcome!r}")
        for name in (d.a, d.b):
            if name not in index:
                raise ValueError(f"duel {d.iteration}/{d.index}: member {name!r} is not in {members}")
        rows.append((index[d.a], index[d.b], TIE_SHARE[d.outcome]))
    cols = np.array(rows, dtype=float).reshape(-1, 3)
    return Outcomes(list(members), cols[:, 0].astype(int), cols[:, 1].astype(int), cols[:, 2], void)


def win_matrix(duels: Sequence[Duel], members: list[str]) -> tuple[np.ndarray, int]:
    """(wins, void): wins[i][j] = times members[i] beat members[j]. A tie, and a below-margin duel (its scores
    differ by less than arena.min_margin, so it made no pair), counts 1/2 a win to each side. Void duels
    (failed generation, no valid judge) have no outcome: they are left out and counted in `void`."""
    o = outcomes(duels, members)
    return o.wins(), o.void


def mle_exists(wins: np.ndarray) -> bool:
    """Hunter (2004), condition A: the Bradley-Terry MLE is finite iff, for every split of the members into two
    groups, someone in each group beat someone in the other, i.e. the "i beat j" graph is strongly connected."""
    n, _ = connected_components(wins > 0, directed=True, connection="strong")
    return n == 1


def _neg_log_posterior(beta: np.ndarray, wins: np.ndarray, ridge: float) -> tuple[float, np.ndarray]:
    diff = beta[:, None] - beta[None, :]
    value = np.sum(wins * np.logaddexp(0.0, -diff)) + 0.5 * ridge * beta @ beta  # -log sigma(d) = softplus(-d)
    g = wins * expit(-diff)  # d/d(diff_ij) of wins_ij * softplus(-diff_ij) is -g_ij
    return value, g.sum(axis=0) - g.sum(axis=1) + ridge * beta


def _hessian(beta: np.ndarray, wins: np.ndarray, ridge: float) -> np.ndarray:
    p = expit(beta[:, None] - beta[None, :])
    c = (wins + wins.T) * p * (1.0 - p)  # each i-j duel adds p(1-p) of curvature along beta_i - beta_j
    return np.diag(c.sum(axis=1)) - c + ridge * np.eye(len(beta))


def bradley_terry(wins: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Bradley-Terry strengths: P(i beats j) = sigma(beta_i - beta_j), sigma the logistic function
    (Bradley & Terry 1952, "Rank analysis of incomplete block designs I"; Hunter 2004, "MM algorithms for
    generalized Bradley-Terry models"). Maximises sum_ij wins[i, j] * log sigma(beta_i - beta_j)
    - ridge/2 * |beta|^2 (concave) by scipy's Newton trust-region method; fractional wins (ties as halves)
    enter the same way.

    The likelihood only sees differences, so strengths are returned summing to zero (with ridge > 0 the optimum
    already does: the likelihood's gradient sums to zero, so the penalty's must too). A member who never lost
    (or never won) has no finite MLE; the ridge, a N(0, 1/ridge) prior, keeps it finite, large and uncertain.
    ridge=0 is the plain MLE and raises where it does not exist rather than return a made-up number."""
    wins = np.asarray(wins, dtype=float)
    if ridge == 0 and not mle_exists(wins):
        raise ValueError("bradley_terry: the MLE diverges (some group of members never lost, or never won, "
                         "against the rest); use ridge > 0")
    fit = minimize(_neg_log_posterior, np.zeros(len(wins)), args=(wins, ridge), jac=True, hess=_hessian,
                   method="trust-exact", options={"gtol": 1e-9})
    # judged by the gradient, not fit.success: near the optimum the objective's improvements drop below its
    # rounding error and scipy reports that as a failure
    if np.abs(fit.jac).max() > 1e-6 * max(1.0, wins.sum()):
        raise RuntimeError(f"bradley_terry: the optimiser did not converge ({fit.message})")
    return fit.x - fit.x.mean()


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 = highest, along the last axis; equal values share the best rank."""
    return rankdata(-values, method="min", axis=-1).astype(int)


def _interval(samples: np.ndarray, level: float, integer: bool = False) -> np.ndarray:
    """Percentile interval per column; ranks use observed values (no interpolating between rank 2 and 3)."""
    tail = (1.0 - level) / 2
    return np.quantile(samples, [tail, 1.0 - tail], axis=0, method="inverted_cdf" if integer else "linear")


def bootstrap_bt(duels: Sequence[Duel], members: list[str], n_boot: int = N_BOOT, seed: int = 0,
                 ridge: float = RIDGE, level: float = 0.95) -> dict:
    """Bradley-Terry strengths with percentile bootstrap intervals for strength and rank: the decided duels are
    resampled with replacement n_boot times (numpy default_rng(seed)) and refitted. A member absent from a
    resample sits at the prior mean 0 in it, which widens its interval, as it should."""
    o = outcomes(duels, members)
    beta = bradley_terry(o.wins(), ridge)
    rng = np.random.default_rng(seed)
    n = len(o.a)
    if n == 0:  # nothing to resample: every fit is the prior's
        samples = np.zeros((n_boot, len(members)))
    else:
        samples = np.array([bradley_terry(o.wins(rng.integers(0, n, n)), ridge) for _ in range(n_boot)])
    ci, rank_ci = _interval(samples, level), _interval(_ranks(samples), level, integer=True)
    rank = _ranks(beta)
    return {
        "duels": n, "void": o.void, "n_boot": n_boot, "seed": seed, "ridge": ridge, "level": level,
        "mle_exists": bool(mle_exists(o.wins())),
        "members": {m: {"strength": float(beta[i]), "ci": [float(ci[0, i]), float(ci[1, i])],
                        "rank": int(rank[i]), "rank_ci": [int(rank_ci[0, i]), int(rank_ci[1, i])]}
                    for i, m in enumerate(members)},
    }


def _replay(start: ReputationState, duels: Sequence[Duel], params: EloParams, check: bool = False) -> np.ndarray:
    """Final ratings (in start's member order) after applying `duels`' logged scores in the given order;
    check: each update must equal the logged one (it does in the logged order from the right start state)."""
    state = start.copy()
    for d in duels:
        update = apply_duel(state, d.a, d.b, d.score_a, d.score_b, params)
        if check and asdict(update) != d.update:
            raise ValueError(f"duel {d.iteration}/{d.index} does not replay to its logged update: "
                             "the start state or the reputation parameters are not the run's")
    return np.array([state.ratings[m] for m in start.ratings])


def order_dependence(duels: Sequence[Duel], start: ReputationState, params: EloParams, n_perm: int = N_PERM,
                     seed: int = 0, level: float = 0.95) -> dict:
    """A permutation test of how much the sequential (adapted Elo) ratings depend on duel order.

    The duels that updated reputations are replayed through apply_duel from `start` (the iteration's start
    state) in the logged order, which must reproduce the logged updates, and in n_perm random orders
    (numpy default_rng(seed)). Per member: the logged-order final rating and rank, the central `level`
    interval of its final rating and rank over the random orders, and the fraction of orders that give it the
    same rank. Overall: the fraction of orders whose whole ranking equals the logged one, and Kendall's tau
    between each order's final ratings and the logged ones. If order did not matter, every interval would be
    the logged value and both fractions 1.

    The replay keeps each duel's logged scores. Those were aggregated with the judges' reputations at the
    time (`weights`), which earlier duels of the iteration had moved; in another order the weights, hence the
    scores, would differ a little. That second-order effect is held fixed: `weights_moved` counts the duels
    whose weights differ from the judges' start ratings (none with reputation.weighting=uniform: every weight
    is 1)."""
    fought = [d for d in duels if d.update is not None]
    members = list(start.ratings)
    logged_vec = _replay(start, fought, params, check=True)
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(fought)) for _ in range(n_perm)]
    finals = np.array([_replay(start, [fought[i] for i in order], params) for order in orders])
    ranks, logged_rank = _ranks(finals), _ranks(logged_vec)
    ci, rank_ci = _interval(finals, level), _interval(ranks, level, integer=True)
    taus = np.array([kendalltau(f, logged_vec).statistic for f in finals])
    return {
        "duels": len(fought), "n_perm": n_perm, "seed": seed, "level": level,
        "weights_moved": sum(d.weights != judge_weights(d.weights, start.ratings, params.weighting) for d in fought),
        "same_ranking": float(np.mean(np.all(ranks == logged_rank, axis=1))),
        # tau is undefined (nan) when every final rating is equal, e.g. no duel moved anyone
        "kendall_tau": None if np.isnan(taus).any() else {"mean": float(taus.mean()),
                                                          "interval": [float(x) for x in _interval(taus, level)]},
        "members": {m: {"logged": float(logged_vec[i]), "interval": [float(ci[0, i]), float(ci[1, i])],
                        "logged_rank": int(logged_rank[i]), "rank_interval": [int(rank_ci[0, i]), int(rank_ci[1, i])],
                        "same_rank": float(np.mean(ranks[:, i] == logged_rank[i]))}
                    for i, m in enumerate(members)},
    }


# ---- a run directory ---------------------------------------------------------------------------------------


def iteration_duels(root: Path, t: int) -> list[Duel]:
    """Iteration t's duels, from its combat journal (none for a baseline)."""
    return [Duel.from_dict(row) for row in read_jsonl(RunDir(root).journal(t))]


def leaderboard(members: list[str], state: ReputationState, duels: list[Duel], pairs: list[dict]) -> list[dict]:
    """Per member, highest reputation first: reputation, sigma, wins/losses/ties/void in `duels`, and how often
    its answer was chosen or rejected in `pairs` (the summary `sparta run` prints; sparta.tracking logs it)."""
    rows = [{"member": m, "reputation": state.ratings[m], "sigma": state.sigmas[m], **duel_record(m, duels),
             "chosen": sum(p.get("chosen_model") == m for p in pairs),  # sppo's rows are samples, not pairs
             "rejected": sum(p.get("rejected_model") == m for p in pairs)} for m in members]
    return sorted(rows, key=lambda r: -r["reputation"])


def duel_record(member: str, duels: list[Duel]) -> dict[str, int]:
    """The member's wins, losses, ties (a tie or a gap below the margin) and void duels among `duels`."""
    fought = [(d, "a" if d.a == member else "b") for d in duels if member in (d.a, d.b)]
    return {"wins": sum(d.outcome == side for d, side in fought),
            "losses": sum(d.outcome in ("a", "b") and d.outcome != side for d, side in fought),
            "ties": sum(d.outcome in ("tie", "below_margin") for d, _ in fought),
            "void": sum(d.outcome.startswith("void") for d, _ in fought)}


def leaderboard_at(run: RunDir, t: int, members: list[str]) -> list[dict]:
    """The leaderboard after iteration t, from its files (reputations, combat journal, pairs)."""
    state = ReputationState.from_dict(read_json(run.reputations(t)))
    return leaderboard(members, state, iteration_duels(run.root, t), read_jsonl(run.pairs(t)))


def start_state(root: Path, t: int, members: list[str], params: EloParams) -> ReputationState:
    """Iteration t's start state, as the pipeline builds it: the previous iteration's reputations, or for t = 1
    a fair start or the one kept in initial_reputations.json (reputation.initial = a task)."""
    if t > 1:
        return ReputationState.from_dict(read_json(RunDir(root).reputations(t - 1)))
    if params.initial == "fair":
        return initial_state(members, params)
    return ReputationState.from_dict(read_json(RunDir(root).initial_reputations)["state"])


def run_ratings(root: Path, members: list[str], iterations: list[int] | None = None, n_boot: int = N_BOOT,
                n_perm: int = N_PERM, n_boot_judges: int = JUDGE_N_BOOT) -> dict:
    """The JSON-able summary of RUN/ratings.json for `iterations` (default: those whose combat finished):
    the pooled win matrix and Bradley-Terry fit over all of them, and per iteration its win matrix,
    Bradley-Terry point strengths, the order dependence of its sequential ratings and its judge diagnostics
    (`judges`: judge_diagnostics.diagnose, n_boot_judges resamples, the judges' reputations after the iteration).
    Seeds derive from the run's seed, so the summary is the same every time it is rebuilt. The replays dominate
    the cost, about 75 us per duel and order: n_perm=100 over a paper-sized iteration (1000 duels) takes some 8 s;
    the judge-aware fits add about 20 ms per resample there."""
    root = Path(root)
    config = RunDir(root).config()
    params = config.reputation
    if iterations is None:
        iterations = RunDir(root).done_iterations("combat")
    per_iteration, pooled = {}, []
    gold = gold_references(config.data.prompts, config.data.user_data)
    for t in iterations:
        duels = iteration_duels(root, t)
        pooled += duels
        wins, void = win_matrix(duels, members)
        start = start_state(root, t, members, params)
        per_iteration[str(t)] = {
            "wins": wins.tolist(), "void": void,
            "bradley_terry": dict(zip(members, bradley_terry(wins).tolist())),
            "order_dependence": order_dependence(duels, start, params, n_perm, derive_seed(config.seed, "perm", t)),
            "judges": diagnose(duels, members, read_json(RunDir(root).reputations(t))["ratings"],
                               derive_seed(config.seed, "judges", t), n_boot_judges, gold=gold),
        }
    wins, void = win_matrix(pooled, members)
    final = read_json(RunDir(root).reputations(iterations[-1]))["ratings"] if iterations else {}
    return {"members": list(members), "iterations": list(iterations), "tie_convention": TIE_CONVENTION,
            "sequential": final, "wins": wins.tolist(), "void": void,
            "bradley_terry": bootstrap_bt(pooled, members, n_boot, derive_seed(config.seed, "bootstrap")),
            "per_iteration": per_iteration}


def write_ratings(root: Path, members: list[str], iterations: list[int] | None = None, **kwargs) -> dict:
    summary = run_ratings(root, members, iterations, **kwargs)
    write_json_atomic(Path(root) / "ratings.json", summary)
    return summary
