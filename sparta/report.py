"""report.md and plots for a run, built only from the files in its run directory (so it can be redone anytime)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import yaml

from .eval_results import EvalFile, ModelResult
from .methods import METHODS
from .ratings import write_ratings
from .records import read_json, read_jsonl
from .rundir import RunDir, method_of
from .tasks.catalog import TASKS, MissingUserData
from .tasks.graders import grade_gsm8k, grade_math, grade_mc_letter, normad_verdict

_OPTION_LINE = re.compile(r"^([A-Z])\. (.+)$", re.MULTILINE)


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
    lines += _iteration_table(root, iterations)
    lines += _reputation_table(root, iterations, members)
    lines += _eval_tables(evals, members)
    lines += _agreement_section(root, iterations)
    ratings = write_ratings(root, members, iterations) if iterations else None
    lines += _ratings_section(ratings)
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
           "generated letter; COM2 and Alpaca: mean 1-10 judged score), then the other metrics. Per-example outputs "
           "are in `eval/`.", ""]
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


def _agreement_section(root: Path, iterations: list[int]) -> list[str]:
    config = yaml.safe_load(RunDir(root).config_file.read_text())
    task = TASKS.get(config["data"]["prompts"])
    if task is None or task.kind == "judged" or not iterations:
        return []
    try:
        references = task.combat_references(config["data"].get("user_data") or None)
    except MissingUserData:
        return []
    grader = "normad" if task.name.startswith("normad") else task.kind
    out = ["## Judge agreement with reference answers", "",
           f"Duels on `{task.name}` prompts where exactly one response is correct: how often the verdict (and "
           "each judge alone) scored the correct one higher. 0.5 is chance.", "",
           "| iter | duels | aggregated verdict | per judge |", "|---|---|---|---|"]
    if not references:
        return out[:2] + [f"`{task.name}` combat prompts have no reference answers: agreement cannot be measured.", ""]
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for member, points in trajectory.items():
        ax.plot([x for x, _ in points], [y for _, y in points], label=member, marker=".", linewidth=1)
    ax.set_xlabel("duel (across iterations)")
    ax.set_ylabel("reputation")
    ax.set_title("Reputation trajectories")
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
