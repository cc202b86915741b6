"""report.md and plots for a run, built only from the files in its run directory (so it can be redone anytime)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import yaml

from .arena.reputation import ReputationState
from .eval_results import EvalFile, ModelResult
from .judge_diagnostics import gold_references, judge_agreement
from .methods import METHODS
from .ratings import iteration_duels, leaderboard, start_state, write_ratings
from .records import read_json, read_jsonl
from .rundir import RunDir, method_of


def write_report(root: Path, members: list[str]) -> Path:
    root = Path(root)
    iterations = RunDir(root).done_iterations()
    method = method_of(root)
    evals = _evals(root)
    lines = [f"# SPARTA run `{root}`", "", f"Method: {method}. Members: {', '.join(members)}. "
             f"Iterations finished: {len(iterations)}.", ""]
    if not METHODS[method].has_reputations:  # a baseline: no combat log, no reputations; what its samples support
        lines += _baseline_table(root, iterations)
        lines += [f"Method {method} has no combat and no reputations (each iteration's reputations.json is the "
                  "start state, unchanged): the reputation table, judge agreement, robust ratings and the "
                  "reputation plots are left out (docs/baselines.md).", ""]
        lines += _eval_tables(evals, members)
        return _write(root, lines)
    trajectory = _trajectories(root, iterations, members)
    lines += _glance(root, iterations, members)
    lines += _iteration_table(root, iterations)
    lines += _reputation_table(root, iterations, members)
    lines += _eval_tables(evals, members)
    lines += _agreement_section(root, iterations)
    ratings = write_ratings(root, members, iterations) if iterations else None
    lines += _ratings_section(ratings)
    lines += _judges_section(ratings)
    plots = [_plot_trajectories(root, trajectory), _plot_win_matrix(root, ratings)]
    plots += _plot_reputation_vs_accuracy(root, iterations, evals, members)
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots if p] + [""]
    return _write(root, lines)


def _write(root: Path, lines: list[str]) -> Path:
    path = root / "report.md"
    path.write_text("\n".join(lines))
    return path


def scored(after: dict) -> str:
    """What the after-pass scored (training.after_limit: a sample of the pairs, or every one), e.g. "8 pairs"."""
    return f"{after['samples']} samples" if "samples" in after else f"{after.get('pairs', '?')} pairs"


def _baseline_table(root: Path, iterations: list[int]) -> list[str]:
    # "training rows": pairs (meta_rewarding: actor and judge pairs), samples with their win rates for sppo;
    # "judge s": meta_rewarding's judging and meta-judging
    out = ["## Iterations", "", "| iter | samples | failed generations | judgments | judge parse failures | "
           "training rows | skipped | generate s | judge s | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in iterations:
        m = read_json(RunDir(root).metrics(t))
        s, j = m["timings_s"], m["judgments"]
        skipped = ", ".join(f"{k} {v}" for k, v in m["skipped"].items() if v) or "-"
        out.append(f"| {t} | {m['samples']} | {m['failed']} | {j['total']} | {j['parse_failure_rate']:.1%} | "
                   f"{m['pairs']} | {skipped} | {s.get('generate', 0):.0f} | "
                   f"{s.get('judge', 0) + s.get('meta_judge', 0):.0f} | {s.get('dpo', s.get('sppo', 0)):.0f} |")
    return out + [""]


def _glance(root: Path, iterations: list[int], members: list[str]) -> list[str]:
    """What a reader wants first: where each reputation started and ended, each member's record over the run, and
    the duel the judges split most clearly, linked to the duel browser."""
    if not iterations:
        return []
    run = RunDir(root)
    params = run.config().reputation
    start = start_state(root, 1, members, params).ratings
    end = ReputationState.from_dict(read_json(run.reputations(iterations[-1])))
    duels = [d for t in iterations for d in iteration_duels(root, t)]
    pairs = [p for t in iterations for p in read_jsonl(run.pairs(t))]
    origin = read_json(run.initial_reputations) if run.initial_reputations.exists() else None
    how = (f"from the members' dev scores on {origin['task']} ({next(iter(origin['metric'].values()))}, z-scored to "
           f"std 20: {', '.join(f'{m} {v:.2f}' for m, v in origin['scores'].items())})" if origin else
           f"fair (all {params.initial_rating:g}; with equal ratings the formula's first updates are tiny, gap = ε)")
    out = ["## At a glance", "", f"{len(duels)} duels and {len(pairs)} preference pairs over {len(iterations)} "
           f"iteration(s). Reputations started {how}.", "",
           "| member | start | now | change | won | lost | tied | void | chosen | rejected |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in leaderboard(members, end, duels, pairs):  # over every iteration's duels and pairs
        m, now = r["member"], r["reputation"]
        out.append(f"| {m} | {start[m]:.3f} | {now:.3f} | {now - start[m]:+.3f} | {r['wins']} | {r['losses']} | "
                   f"{r['ties']} | {r['void']} | {r['chosen']} | {r['rejected']} |")
    return out + [""] + _clearest_duel(duels)


def _clearest_duel(duels) -> list[str]:
    """The decided duel with the widest score gap, its texts quoted in fences no model output can close."""
    decided = [d for d in duels if d.outcome in ("a", "b")]
    if not decided:
        return []
    d = max(decided, key=lambda d: (abs(d.score_a - d.score_b), -d.iteration, -d.index))
    win, lose = ("a", "b") if d.outcome == "a" else ("b", "a")
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", d.prompt + str(d.response_a.text)
                                                                  + str(d.response_b.text))), default=0))
    link = f"view/index.html#view=duels&iter={d.iteration}&duel={d.iteration}:{d.index}"
    out = [f"The clearest verdict ([duel {d.index} of iteration {d.iteration}]({link}) in the duel browser, "
           "`sparta view`): the prompt, then the chosen and the rejected answer, first 400 characters.", "",
           fence, _excerpt(d.prompt), fence]
    for side, label in ((win, "chosen"), (lose, "rejected")):
        member, score = getattr(d, side), getattr(d, f"score_{side}")
        out += ["", f"{label}: **{member}**, aggregated score {score:.3f}", "", fence,
                _excerpt(getattr(d, f"response_{side}").text), fence]
    return out + [""]


def _excerpt(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + " […]"


def _iteration_table(root: Path, iterations: list[int]) -> list[str]:
    out = ["## Iterations", "", "| iter | duels | pairs | tie rate | judge parse failures | failed generations | "
           "generate s | judge s | DPO s |", "|---|---|---|---|---|---|---|---|---|"]
    for t in iterations:
        m = read_json(RunDir(root).metrics(t))
        s = m["timings_s"]
        out.append(f"| {t} | {m['duels']} | {m['pairs']} | {m['tie_rate']:.2f} | "
                   f"{m['judgments']['parse_failure_rate']:.1%} | {m['responses']['failed']} | "
                   f"{s.get('generate', 0):.0f} | {s.get('judge', 0):.0f} | {s.get('dpo', 0):.0f} |")
    return out + [""]


def _reputation_table(root: Path, iterations: list[int], members: list[str]) -> list[str]:
    # a start column only when the run did not start fair (reputation.initial=TASK)
    run = RunDir(root)
    start = read_json(run.initial_reputations) if run.initial_reputations.exists() else None
    heads = ([f"start ({start['task']} dev)"] if start else []) + [f"iter {t}" for t in iterations]
    out = ["## Reputations after each iteration", "", "| member | " + " | ".join(heads)
           + " | DPO loss first step→after (last iter; pairs scored after) |", "|---" * (len(heads) + 2) + "|"]
    for m in members:
        cells = [f"{start['state']['ratings'][m]:.3f}"] if start else []
        cells += [f"{read_json(run.reputations(t))['ratings'][m]:.3f}" for t in iterations]
        last = read_json(run.training(iterations[-1], m)) if iterations else {}
        dpo = f"{last['loss_first']:.3f}→{last['after']['loss']:.3f} ({scored(last['after'])})" \
            if last.get("after") else "-"
        out.append(f"| {m} | " + " | ".join(cells) + f" | {dpo} |")
    return out + [""]


def _evals(root: Path) -> dict[tuple[str, str], dict[int, EvalFile]]:
    """{(task, split): {iteration: file}}"""
    out: dict[tuple[str, str], dict[int, EvalFile]] = {}
    for path in RunDir(root).evaluations():
        data = EvalFile.read(path)
        out.setdefault((data.task, data.split), {})[data.iteration] = data
    return out


def _cell(result: ModelResult, metric: str | None = None) -> str:
    m = result.metrics[metric or result.primary]
    failed = f" ({m.failed} failed)" if m.failed else ""
    if not m.n:
        return f"n/a{failed}"
    return f"{m.value:.3f} [{m.ci95[0]:.3f}, {m.ci95[1]:.3f}]{failed}"


def _eval_tables(evals: dict, members: list[str]) -> list[str]:
    if not evals:
        return []
    out = ["## Evaluation", "", "Primary metric with its 95% bootstrap interval (GSM8K: flexible match; MC: the "
           "generated letter, or loglik where nothing was generated; COM2 and Alpaca: mean 1-10 judged score), then "
           "the other metrics. Per-example outputs are in `eval/`.", ""]
    for (task, split), by_iter in sorted(evals.items()):
        its = sorted(by_iter)
        # a file may hold some members only (`sparta eval --members`), or models from outside the pool
        labels = list(members) + sorted({m for t in its for m in by_iter[t].results} - set(members))
        results = [r for t in its for r in by_iter[t].results.values()]
        primary = results[-1].primary  # the latest file's choice
        names = {k for r in results for k in r.metrics}
        for metric in [primary, *sorted(names - {primary})]:  # e.g. MC: letter, then loglik and loglik_norm
            tag = " (primary)" if metric == primary else ""
            out += [f"### {task} ({split}, n={by_iter[its[-1]].n_examples}): {metric}{tag}", "",
                    "| member | " + " | ".join("initial" if t == 0 else f"after iter {t}" for t in its) + " |",
                    "|---" * (len(its) + 1) + "|"]
            for m in labels:
                cells = [_cell(r, metric) if (r := by_iter[t].results.get(m)) and metric in r.metrics else "-"
                         for t in its]
                out.append(f"| {m} | " + " | ".join(cells) + " |")
            out.append("")
        out += _letter_bias(by_iter[its[-1]], labels)
        dev = evals.get((task, "dev"), {})
        if split == "test" and 0 in by_iter and its[-1] != 0:
            chosen_on = dev if 0 in dev else by_iter
            chosen, last = chosen_on[0].results, by_iter[its[-1]].results
            scored = [m for m in members if m in chosen and m in by_iter[0].results and m in last]
            if not scored:
                continue
            best = max(scored, key=lambda m: chosen[m].primary_metric.value)
            note = "dev" if chosen_on is dev else "test (no dev evaluation: optimistic)"
            out += [f"Best initial member (chosen on {note}): **{best}** {_cell(by_iter[0].results[best])} → "
                    f"after iteration {its[-1]}: {_cell(last[best])}.", ""]
    return out


def _letter_bias(data: EvalFile, labels: list[str]) -> list[str]:
    """MC: the majority-letter baseline of the file's items and how often each model picked each letter, per
    metric (the latest file: the earlier ones are in eval/)."""
    results = {m: data.results[m] for m in labels if m in data.results}
    baseline = next((r.majority_baseline for r in results.values() if r.majority_baseline), None)
    if baseline is None:
        return []
    gold = ", ".join(f"{k} {v}" for k, v in baseline.gold.items())
    out = [f"Majority-letter baseline: always answering **{baseline.letter}** scores {baseline.value:.3f} on these "
           f"{data.n_examples} items (gold letters: {gold}); a circular metric's baseline is 0.", ""]
    metrics = [name for name, m in next(iter(results.values())).metrics.items() if m.picks is not None]
    label = "initial" if data.iteration == 0 else f"after iter {data.iteration}"
    out += [f"Letters picked ({label}; circular metrics: every rotation's pick):", "",
            "| member | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for m, r in results.items():
        picks = [r.metrics[x].picks if x in r.metrics else None for x in metrics]
        cells = [", ".join(f"{k} {v}" for k, v in p.items()) if p else "-" for p in picks]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out + [""]


def _agreement_section(root: Path, iterations: list[int]) -> list[str]:
    config = yaml.safe_load(RunDir(root).config_file.read_text())
    gold = gold_references(config["data"]["prompts"], config["data"].get("user_data"))
    if gold is None or not iterations:
        return []
    references, grader = gold
    task = config["data"]["prompts"]
    out = ["## Judge agreement with reference answers", "",
           f"Duels on `{task}` prompts where exactly one response is correct: how often the verdict (and "
           "each judge alone) scored the correct one higher. 0.5 is chance.", "",
           "| iter | duels | aggregated verdict | per judge |", "|---|---|---|---|"]
    if not references:
        return out[:2] + [f"`{task}` combat prompts have no reference answers: agreement cannot be measured.", ""]
    for t in iterations:
        a = judge_agreement(read_jsonl(RunDir(root).journal(t)), references, grader)
        rate = f"{a['aggregate']:.2f}" if a["duels"] else "-"
        judges = ", ".join(f"{j} {v['agree']}/{v['of']}" for j, v in a["per_judge"].items()) or "-"
        out.append(f"| {t} | {a['duels']} | {rate} | {judges} |")
    return out + [""]


def _ratings_section(ratings: dict | None) -> list[str]:
    """Bradley-Terry over every finished iteration and the order dependence of the last one (docs/ratings.md)."""
    if ratings is None:
        return []
    bt, last = ratings["bradley_terry"], ratings["iterations"][-1]
    perm = ratings["per_iteration"][str(last)]["order_dependence"]
    level, first = f"{bt['level']:.0%}", ratings["iterations"][0]
    span = f"iterations {first}-{last}" if first != last else f"iteration {last}"
    out = ["## Robust ratings", "",
           f"SPARTA rating: the sequential rule's rating after iteration {last}. BT: Bradley-Terry strength "
           f"(log-odds, sum zero, P(i beats j) = σ(β_i − β_j)) over the {bt['duels']} decided duels of {span} "
           f"(ties and below-margin duels count 1/2 a win to each side; {bt['void']} void duels left out), with "
           f"{level} bootstrap intervals ({bt['n_boot']} resamples). Orders: the {level} range of iteration {last}'s "
           f"final rating over {perm['n_perm']} random orders of its {perm['duels']} duels from the same start "
           "(logged scores kept), and how often an order gives the member its logged rank.", "",
           f"| member | SPARTA rating | BT strength [{level}] | BT rank [{level}] | rating over orders [{level}] "
           "| same rank |", "|---|---|---|---|---|---|"]
    for m in ratings["members"]:
        b, p = bt["members"][m], perm["members"][m]
        out.append(f"| {m} | {ratings['sequential'][m]:.3f} | {b['strength']:+.3f} [{b['ci'][0]:+.3f}, "
                   f"{b['ci'][1]:+.3f}] | {b['rank']} [{b['rank_ci'][0]}-{b['rank_ci'][1]}] | "
                   f"[{p['interval'][0]:.3f}, {p['interval'][1]:.3f}] | {p['same_rank']:.0%} |")
    tau = perm["kendall_tau"]
    tau_text = f"; Kendall τ with the logged ratings {tau['mean']:.2f} [{tau['interval'][0]:.2f}, " \
               f"{tau['interval'][1]:.2f}]" if tau else ""
    out += ["", f"Iteration {last}: {perm['same_ranking']:.0%} of random orders give the logged ranking{tau_text}."]
    if not bt["mle_exists"]:
        out.append("Some members never lost (or never won) against the rest: their BT strengths are set by the "
                   f"ridge prior (λ = {bt['ridge']}), read them as bounds.")
    return out + ["", "Per-iteration numbers are in `ratings.json`.", ""]


def _ci(estimate: dict) -> str:
    """A diagnostics estimate as "value [low, high]" ("-" where undefined, e.g. no variation)."""
    if estimate["value"] is None:
        return "-"
    ci = estimate.get("ci")
    return f"{estimate['value']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _judges_section(ratings: dict | None) -> list[str]:
    """Judge diagnostics per iteration, and the last iteration's judges beside their reputations (docs/ratings.md)."""
    if ratings is None:
        return []
    its = ratings["iterations"]
    last = ratings["per_iteration"][str(its[-1])]["judges"]
    out = ["## Judges", "",
           "No gold needed: α is Krippendorff's alpha (interval metric) of the judges' 1-10 scores of the same "
           "response (1 = perfect agreement, 0 = chance); longer wins is how often the longer response (in "
           "characters) won a decided duel; ρ(score, length) is Spearman's rho of every score with its response's "
           f"length. {last['level']:.0%} bootstrap intervals over {last['n_boot']} resamples of the duels.", "",
           "| iter | duels | α | longer wins (duels) | ρ(score, length) | ρ(γ, reputation) |",
           "|---|---|---|---|---|---|"]
    for t in its:
        j = ratings["per_iteration"][str(t)]["judges"]
        longer = j["length"]["longer_wins"]
        out.append(f"| {t} | {j['duels']} | {_ci(j['alpha'])} | {_ci(longer)} ({longer['duels']}) | "
                   f"{_ci(j['length']['spearman'])} | {_ci(j['gamma']['spearman_reputation'])} |")
    gold = last["gold"]
    out += ["", f"Iteration {its[-1]}: γ is each judge's discrimination in a judge-aware Bradley-Terry fit, "
            "P(a beats b | judge j) = σ(γ_j (β_a − β_b)), mean γ = 1 (0: its verdicts say nothing about who is "
            f"stronger). Over {last['gamma']['judges_compared']} judges the rank correlation of γ with reputation "
            "has a wide interval: read it as a direction, not a measurement."
            + (" Gold: how often the judge scored the correct response higher where exactly one was correct "
               "(0.5 is chance)." if gold else ""), "",
            "| judge | reputation | γ | verdicts |" + (" gold agreement |" if gold else ""),
            "|---|---|---|---|" + ("---|" if gold else "")]
    for name, g in last["gamma"]["per_judge"].items():
        rep = "-" if g["reputation"] is None else f"{g['reputation']:.3f}"
        row = f"| {name} | {rep} | {_ci(g)} | {g['verdicts']} |"
        if gold:
            agree = gold["per_judge"].get(name)
            row += f" {agree['agree']}/{agree['of']} |" if agree else " - |"
        out.append(row)
    return out + [""]


def _trajectories(root: Path, iterations: list[int], members: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Each member's rating after every duel it fought, indexed by the global duel count."""
    traj = {m: [(0, None)] for m in members}
    n = 0
    for t in iterations:
        for d in read_jsonl(RunDir(root).journal(t)):
            u = d.get("update")
            if not u:
                continue
            n += 1
            if traj[d["a"]][0][1] is None:
                traj[d["a"]][0] = (0, u["rating_a_before"])
            if traj[d["b"]][0][1] is None:
                traj[d["b"]][0] = (0, u["rating_b_before"])
            traj[d["a"]].append((n, u["rating_a_after"]))
            traj[d["b"]].append((n, u["rating_b_after"]))
    return {m: [p for p in pts if p[1] is not None] for m, pts in traj.items()}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_trajectories(root: Path, trajectory: dict) -> Path | None:
    if not any(len(p) > 1 for p in trajectory.values()):
        return None
    # beside the ratings, each one's change since its start: on a spread-out start (dev scores, std 20) a scale
    # that fits every rating flattens moves of a tenth of a point, which is what a short run's duels make
    plt = _pyplot()
    fig, (ax, moved) = plt.subplots(1, 2, figsize=(11, 4))
    for member, points in trajectory.items():
        xs = [x for x, _ in points]
        ax.plot(xs, [y for _, y in points], label=member, marker=".", linewidth=1)
        moved.plot(xs, [y - points[0][1] for _, y in points], label=member, marker=".", linewidth=1)
    for axis, title in ((ax, "Reputation trajectories"), (moved, "Change since the start")):
        axis.set_xlabel("duel (across iterations)")
        axis.set_title(title)
    ax.set_ylabel("reputation")
    moved.set_ylabel("reputation − start")
    ax.legend(fontsize=8)
    path = root / "reputations.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_win_matrix(root: Path, ratings: dict | None) -> Path | None:
    """Row i, column j: i's share of the i-vs-j duels (colour) and i's wins / the duels (text)."""
    if ratings is None:
        return None
    plt = _pyplot()
    wins, members = np.array(ratings["wins"]), ratings["members"]
    played = wins + wins.T
    share = np.divide(wins, played, out=np.full_like(wins, np.nan), where=played > 0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(members), 1.0 + 0.6 * len(members)))
    image = ax.imshow(share, cmap="RdBu", vmin=0, vmax=1)
    for i in range(len(members)):
        for j in range(len(members)):
            if played[i, j]:
                ax.text(j, i, f"{wins[i, j]:g}/{played[i, j]:g}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(members)), members, rotation=45, ha="right")
    ax.set_yticks(range(len(members)), members)
    ax.set_xlabel("opponent")
    ax.set_ylabel("member")
    ax.set_title("Win share (ties count 1/2)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    path = root / "win_matrix.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation; nan when either side has no variance."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    if sx == 0 or sy == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy)


def _plot_reputation_vs_accuracy(root: Path, iterations: list[int], evals: dict, members: list[str]) -> list[Path]:
    """The paper's Figure 5: final reputation against task score per member, with Pearson r."""
    if not iterations:
        return []
    ratings = read_json(RunDir(root).reputations(iterations[-1]))["ratings"]
    plt, paths = None, []
    for (task, split), by_iter in sorted(evals.items()):
        if iterations[-1] not in by_iter or split != "test" and (task, "test") in evals:
            continue
        results = by_iter[iterations[-1]].results
        scored = [m for m in members if m in results]
        if len(scored) < 2:
            continue
        plt = plt or _pyplot()
        scores = [results[m].primary_metric.value for m in scored]
        reps = [ratings[m] for m in scored]
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.scatter(reps, scores)
        for m, x, y in zip(scored, reps, scores):
            ax.annotate(m, (x, y), fontsize=7)
        ax.set_xlabel("reputation")
        ax.set_ylabel(results[scored[0]].primary)
        ax.set_title(f"{task} ({split}): Pearson r = {pearson(reps, scores):.2f}")
        path = root / f"reputation_vs_{task}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
