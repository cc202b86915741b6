"""`sparta compare`: run (or resume) several arms and tabulate the paper's comparison from their run directories.

An arm is a config plus overrides, run exactly as `sparta run` runs it, with the compared tasks put into `eval`
so they are scored on the pool before iteration 1 and after the last one. `eval` may change on an existing run
directory, so comparing finished runs only evaluates them. The tables are read from the run directories alone
(RUN/eval/iter_NN/TASK-SPLIT.json, RUN/iter_NN/reputations.json), so they can be rebuilt at any time.
`--merge` puts per-task compares (the paper trains one run per task) into the paper's one table, from their
compare.json files alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from .config import ConfigError, RunConfig, load_config, validate
from .eval_results import EvalFile, ModelResult
from .methods import METHODS
from .pipeline import Pipeline
from .records import read_json, write_json_atomic
from .rundir import RunDir, method_of
from .tasks.catalog import get_task

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Arm:
    name: str
    config: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    arms: tuple[Arm, ...]
    tasks: tuple[str, ...]
    split: str = "test"
    limit: int | None = None  # None: each arm's own eval.limit
    metric: str | None = None  # the metric compared; None: each task's primary


# ---- the plan: arms and what they are compared on ---------------------------------------------------------

def parse_arm(text: str) -> Arm:
    """PATH, or NAME=PATH; the name defaults to the file's stem."""
    name, sep, path = text.partition("=")
    if sep and _NAME.fullmatch(name):
        return Arm(name, Path(path))
    return Arm(Path(text).stem, Path(text))


def load_sweep(path: Path) -> Plan:
    """A sweep file: {arms: {NAME: {config: PATH, overrides: [key=value, ...]}}, tasks, split, limit, metric};
    config paths are relative to the sweep file."""
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("arms"), dict) or not data["arms"]:
        raise ConfigError(f"{path}: a sweep needs `arms: {{NAME: {{config: PATH, overrides: [key=value, ...]}}}}`")
    unknown = sorted(set(data) - {"arms", "tasks", "split", "limit", "metric"})
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]!r} (known: arms, tasks, split, limit, metric)")
    tasks = data.get("tasks") or []
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ConfigError(f"{path}: tasks must be a list of task names, got {tasks!r}")
    arms = []
    for name, spec in data["arms"].items():
        overrides = (spec.get("overrides") or []) if isinstance(spec, dict) else None
        if (not isinstance(spec, dict) or not isinstance(spec.get("config"), str) or set(spec) - {"config", "overrides"}
                or not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides)):
            raise ConfigError(f"{path}: arms.{name} must be {{config: PATH, overrides: [key=value, ...]}}")
        arms.append(Arm(str(name), path.parent / spec["config"], tuple(overrides)))
    return Plan(tuple(arms), tuple(tasks), data.get("split", "test"), data.get("limit"), data.get("metric"))


def make_plan(arms: list[str], sweep: str | None, tasks: list[str] | None, split: str | None,
              limit: int | None, metric: str | None = None) -> Plan:
    """The command line's plan: ARMs or a sweep file; --tasks, --split, --limit and --metric win over the sweep's."""
    if bool(arms) == bool(sweep):
        raise ConfigError("give the arms as CONFIG (or NAME=CONFIG) arguments, or one --sweep FILE, not both")
    plan = load_sweep(Path(sweep)) if sweep else Plan(tuple(parse_arm(a) for a in arms), ())
    plan = replace(plan, tasks=tuple(tasks or plan.tasks), split=split or plan.split,
                               limit=plan.limit if limit is None else limit, metric=metric or plan.metric)
    check_plan(plan)
    return plan


def check_plan(plan: Plan) -> None:
    names = [a.name for a in plan.arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"arm names must be unique, got {names} (name them: NAME=CONFIG)")
    if not plan.tasks:
        raise ConfigError("no tasks to compare on: --tasks T ... (or `tasks:` in the sweep file)")
    try:
        for task in plan.tasks:
            get_task(task)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if plan.split not in ("dev", "test"):
        raise ConfigError(f"split must be dev or test, got {plan.split!r}")
    if plan.limit is not None and (type(plan.limit) is not int or plan.limit < 0):
        raise ConfigError(f"limit must be an integer >= 0 (0 = all), got {plan.limit!r}")
    if plan.metric is not None and (not isinstance(plan.metric, str) or not plan.metric.strip()):
        raise ConfigError(f"metric must be a metric's name (e.g. loglik_circular), got {plan.metric!r}")


def arm_configs(plan: Plan) -> dict[str, RunConfig]:
    """Each arm's config with the compared evaluation; two arms may not share a run directory."""
    configs = {a.name: with_compare_eval(load_config(a.config, a.overrides), plan) for a in plan.arms}
    by_dir: dict[Path, list[str]] = {}
    for name, c in configs.items():
        by_dir.setdefault(Path(c.run_dir).resolve(), []).append(name)
    for root, names in by_dir.items():
        if len(names) > 1:
            raise ConfigError(f"arms {', '.join(names)} share run_dir {root}: give each its own (a run_dir=... "
                              "override)")
    return configs


def with_compare_eval(c: RunConfig, plan: Plan) -> RunConfig:
    """The compared tasks on the compared split, scored before iteration 1 and after the last (eval.every =
    iterations: nothing in between, so an arm costs two evaluations per task); comparing letter_circular turns
    eval.circular_letter on."""
    e = replace(c.eval, tasks=plan.tasks, splits=(plan.split,), every=c.iterations,
                limit=c.eval.limit if plan.limit is None else plan.limit,
                circular_letter=c.eval.circular_letter or plan.metric == "letter_circular")
    c = replace(c, eval=e)
    validate(c)
    return c


def run_arms(configs: dict[str, RunConfig], progress=None, on_iteration=None, on_arm=None) -> None:
    """Run or resume each arm in turn. Every arm is checked first, so a bad one fails before any is run."""
    for c in configs.values():
        Pipeline(c).check()
    for name, c in configs.items():
        if on_arm:
            on_arm(name, c)
        Pipeline(c, progress=progress, on_iteration=on_iteration).run_all()


# ---- reading run directories ------------------------------------------------------------------------------

def collect(runs: dict[str, tuple[Path, int]], tasks: tuple[str, ...], split: str, metric: str | None = None) -> dict:
    """The comparison (compare.json) of arms {name: (run directory, the iteration compared with iteration 0)} on
    `metric` (None: each task's primary)."""
    arms = {}
    for name, (root, iteration) in runs.items():
        rows = {task: task_row(Path(root), iteration, task, split, metric) for task in tasks}
        arms[name] = {"run_dir": str(root), "iteration": iteration, "tasks": rows, **_mean_gain(rows.values())}
    return {"split": split, "tasks": list(tasks), "arms": arms}


def _mean_gain(rows) -> dict:
    """The mean relative gain over the rows that have one, and how many do (a missing cell counts for nothing)."""
    gains = [r["relative_gain"] for r in rows if r.get("relative_gain") is not None]
    return {"mean_relative_gain": sum(gains) / len(gains) if gains else None, "tasks_with_gain": len(gains)}


def task_row(root: Path, iteration: int, task: str, split: str, metric: str | None = None) -> dict:
    """Best initial member, best member and top-reputation member after `iteration` on `metric` (None: the task's
    primary), the relative gain, and (MC) the majority-letter baseline of the items scored after. A cell that has
    no number says why ({"missing": reason})."""
    initial = _eval_file(root, 0, task, split)
    finished = RunDir(root).is_done(iteration, "iteration")
    after = _eval_file(root, iteration, task, split) if finished else None
    metric = metric or _primary(initial or after)
    if after is not None:
        best, top = _best(after, metric), _top_reputation(root, iteration, after, metric)
    else:
        why = f"not evaluated after iteration {iteration}" if finished else f"iteration {iteration} not finished"
        best = top = {"missing": why}
    best_initial = _best(initial, metric) if initial else {"missing": "not evaluated at iteration 0"}
    return {"metric": metric, "best_initial": best_initial, "best": best, "top_reputation": top,
            "relative_gain": _gain(best_initial, best), "cis_overlap": _overlap(best_initial, best),
            "majority_baseline": _baseline(after or initial),
            "notes": _notes(initial, after) if initial and after else []}


def _baseline(data: EvalFile | None) -> dict | None:
    """The file's majority-letter baseline ({letter, value}; the same for every model of a file); None: not MC,
    or a file written before it was kept."""
    found = next((r.majority_baseline for r in data.results.values() if r.majority_baseline), None) if data else None
    return {"letter": found.letter, "value": found.value} if found else None


def _eval_file(root: Path, t: int, task: str, split: str) -> EvalFile | None:
    path = RunDir(root).evaluation(t, task, split)
    return EvalFile.read(path) if path.exists() else None


def _primary(data: EvalFile | None) -> str | None:
    """The file's primary metric (the same for every member of a file)."""
    return next((r.primary for r in data.results.values()), None) if data else None


def _score(member: str, result: ModelResult | None, metric: str) -> dict:
    m = result.metrics.get(metric) if result else None
    if m is None:
        return {"member": member, "missing": f"{member} not scored on {metric}"}
    if not m.n:  # every example failed: a NaN mean, never a number to compare
        return {"member": member, "missing": f"{member}: no scored example", "failed": m.failed}
    extra = {} if m.excluded is None else {"excluded": m.excluded}
    return {"member": member, "value": m.value, "ci95": list(m.ci95), "n": m.n, "failed": m.failed, **extra}


def _best(data: EvalFile, metric: str) -> dict:
    # a model from outside the pool (`sparta eval --members SPEC` rewrites the file) is never a pool's best
    outside = data.outside()
    scored = [s for s in (_score(m, r, metric) for m, r in data.results.items() if m not in outside)
              if "value" in s]
    if not scored:
        unscored = not any(metric in r.metrics for r in data.results.values())
        return {"missing": f"not scored on {metric}" if unscored else "no member has a scored example"}
    return max(scored, key=lambda s: s["value"])  # ties: the first member in the file's (the pool's) order


def _top_reputation(root: Path, iteration: int, after: EvalFile, metric: str) -> dict:
    method = method_of(root)
    if not METHODS[method].has_reputations:  # its reputations.json files only carry the start state forward
        return {"missing": f"method {method} has no reputations"}
    path = RunDir(root).reputations(iteration)
    if not path.exists():
        return {"missing": f"no reputations after iteration {iteration}"}
    ratings = read_json(path)["ratings"]
    top = max(ratings, key=ratings.get)
    return {**_score(top, after.results.get(top), metric), "reputation": ratings[top]}


def _gain(before: dict, after: dict) -> float | None:
    """The paper's relative gain over the best initial member; undefined from a best initial of 0."""
    if "value" not in before or "value" not in after or before["value"] == 0:
        return None
    return (after["value"] - before["value"]) / before["value"]


def _overlap(a: dict, b: dict) -> bool | None:
    if "ci95" not in a or "ci95" not in b:
        return None
    return a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]


def _notes(initial: EvalFile, after: EvalFile) -> list[str]:
    """What makes the two files less comparable than they look."""
    notes = []
    if initial.n_examples != after.n_examples:  # made by runs with different eval.limit
        notes.append(f"iteration 0 and {after.iteration} were scored on different numbers of examples "
                     f"({initial.n_examples} vs {after.n_examples})")
    elif initial.subset != after.subset:  # drawn with another seed, or one file predates the draw
        notes.append(f"iteration 0 and {after.iteration} were scored on different items of the split")
    judges = [(d.evaluator or {}).get("name") for d in (initial, after)]
    if any(judges):
        same = "" if judges[0] == judges[1] else " (a different evaluator: scores are on different scales)"
        notes.append(f"scored 1-10 by {judges[0]} at iteration 0 and by {judges[1]} after{same}")
    return notes


# ---- writing ----------------------------------------------------------------------------------------------

HEADER = """\
# SPARTA comparison ({split} split)

Every number is a task's primary metric on the {split} split (accuracy; COM2 and Alpaca: the mean 1-10 judged
score), or the metric `--metric` named (each task's heading says which), with its 95% bootstrap interval, `n`
scored examples and `failed` ones (a generation or a judgment that failed: counted, never scored as wrong or right).
On a multiple-choice task, the majority-letter baseline (always answering the most frequent gold letter of the
scored items) is the score a pure letter bias reaches; a circular metric's is 0 (docs/tasks.md).
**Where two 95% intervals overlap, the difference between them is noise at this sample size**;
such gains are marked "CIs overlap".

- **best initial**: the member with the highest score before iteration 1 (picked on this split, like the paper's
  "best initial expert").
- **best after**: the member with the highest score after the arm's last iteration (picked the same way).
- **top reputation**: the member with the highest reputation after the last iteration, picked without looking
  at any evaluation.
- **gain**: (best after - best initial) / best initial, the paper's "relative gain over best initial".
"""


def render_markdown(table: dict) -> str:
    lines = [HEADER.format(split=table["split"])]
    for name, arm in table["arms"].items():
        lines.append(f"- arm `{name}`: `{arm['run_dir']}`, iteration {arm['iteration']}")
    lines.append("")
    for task in table["tasks"]:
        lines += _task_table(table, task)
    return "\n".join(lines + render_summary(table)) + "\n"


def _task_table(table: dict, task: str) -> list[str]:
    rows = {name: arm["tasks"][task] for name, arm in table["arms"].items()}
    metrics = sorted({r["metric"] for r in rows.values() if r["metric"]})
    out = [f"## {task} ({', '.join(metrics) or 'not evaluated'})", "",
           *[f"- {name}: {_baseline_text(r)}" for name, r in rows.items() if r.get("majority_baseline")],
           *([""] if any(r.get("majority_baseline") for r in rows.values()) else []),
           "| arm | best initial | best after | top reputation | gain |", "|---|---|---|---|---|"]
    notes = []
    for name, r in rows.items():
        top = r["top_reputation"]
        rep = f" (reputation {top['reputation']:.1f})" if "reputation" in top else ""
        out.append(f"| {name} | {_cell(r['best_initial'])} | {_cell(r['best'])} | {_cell(top)}{rep} | "
                   f"{_gain_cell(r)} |")
        notes += [f"- {name}: {n}" for n in r["notes"]]
    return out + [""] + (notes + [""] if notes else [])


def _baseline_text(row: dict) -> str:
    b = row["majority_baseline"]
    circular = " (a circular metric's is 0)" if row["metric"].endswith("_circular") else ""
    return f"always answering {b['letter']} (the most frequent gold letter) scores {b['value']:.3f}{circular}"


def _cell(s: dict) -> str:
    if "value" not in s:
        return s["missing"] + (f" (failed {s['failed']})" if s.get("failed") else "")
    excluded = f", excluded {s['excluded']}" if s.get("excluded") else ""
    return (f"{s['member']} {s['value']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"(n={s['n']}, failed {s['failed']}{excluded})")


def _gain_cell(row: dict) -> str:
    if row["relative_gain"] is None:
        return "undefined (best initial is 0)" if row["best_initial"].get("value") == 0 else "-"
    return f"{row['relative_gain']:+.1%}" + (" (CIs overlap)" if row["cis_overlap"] else "")


def render_summary(table: dict) -> list[str]:
    """Arms x tasks: the relative gain of the best member, and its mean over the tasks that have one."""
    tasks = table["tasks"]
    out = ["## Summary: relative gain over the best initial member", "",
           "`~`: the two 95% intervals overlap, the gain is within noise.", "",
           "| arm | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for name, arm in table["arms"].items():
        cells = [_summary_cell(arm["tasks"][t]) for t in tasks]
        out.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_cell(arm, len(tasks))} |")
    return out + [""]


def _mean_cell(arm: dict, n_tasks: int) -> str:
    k = arm["tasks_with_gain"]
    return f"{arm['mean_relative_gain']:+.1%} ({k} of {n_tasks} tasks)" if k else "-"


def _gain_text(row: dict) -> str:
    """A defined gain, marked `~` where the two intervals overlap."""
    return f"{row['relative_gain']:+.1%}" + (" ~" if row["cis_overlap"] else "")


def _summary_cell(row: dict) -> str:
    if row["relative_gain"] is not None:
        return _gain_text(row)
    missing = next((s["missing"] for s in (row["best_initial"], row["best"]) if "value" not in s), None)
    return missing or _gain_cell(row)


def write_comparison(out: Path, table: dict) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare.json", table)
    (out / "compare.md").write_text(render_markdown(table))
    return out / "compare.md", out / "compare.json"


# ---- merging per-task compares into the paper's table -----------------------------------------------------

# the paper's columns, in its order (its main table, sparta/_data/SOURCES.md); other tasks go after them
PAPER_TASKS = ("medqa", "normad_country", "normad_value", "normad_rot", "knowledge_crosswords", "gsm8k", "com2",
               "math_easy", "math_medium", "math_hard", "alpaca", "truthfulqa")


def read_compares(paths: list[str]) -> list[tuple[str, dict]]:
    """(path, compare.json) of each input, in the order given; a directory means DIR/compare.json. A list, not a
    dict: the same file given twice must reach the duplicate check, not vanish."""
    out = []
    for given in map(Path, paths):
        path = given / "compare.json" if given.is_dir() else given
        if not path.is_file():
            raise ValueError(f"{path} does not exist (give compare.json files, or the directories they are in)")
        if not _is_compare(data := read_json(path)):
            raise ValueError(f"{path} is not a compare.json (split, tasks, arms with run_dir, iteration, tasks)")
        out.append((str(path), data))
    return out


def _is_compare(data: object) -> bool:
    """collect()'s shape; a table.json (say, from a glob over compare/) has no run_dir per arm."""
    return (isinstance(data, dict) and {"split", "tasks", "arms"} <= set(data) and isinstance(data["arms"], dict)
            and all(isinstance(a, dict) and {"run_dir", "iteration", "tasks"} <= set(a) for a in data["arms"].values()))


def merge(compares: list[tuple[str, dict]]) -> dict:
    """The paper's table (table.json) from per-task compares: a row per arm, a column per task. Each cell is one
    compare's row, copied with where it came from; a task of an arm in two compares is an error, never a pick."""
    if not compares:
        raise ValueError("nothing to merge")
    splits = {c["split"] for _, c in compares}
    if len(splits) > 1:
        raise ValueError("the compares are on different splits: "
                         + ", ".join(f"{path} ({c['split']})" for path, c in compares))
    seen = dict.fromkeys(t for _, c in compares for t in c["tasks"])
    tasks = [t for t in PAPER_TASKS if t in seen] + [t for t in seen if t not in PAPER_TASKS]
    cells: dict[str, dict[str, dict]] = {}
    for path, c in compares:
        for name, arm in c["arms"].items():
            for task, row in arm["tasks"].items():
                if task in cells.setdefault(name, {}):
                    raise ValueError(f"arm {name!r} has {task} in both {cells[name][task]['source']} and {path}: "
                                     "give each task of an arm once")
                cells[name][task] = {**row, "source": path, "run_dir": arm["run_dir"], "iteration": arm["iteration"]}
    arms = {}
    for name, rows in cells.items():
        row = {t: rows.get(t, {"missing": f"not compared on {t}"}) for t in tasks}
        arms[name] = {"tasks": row, **_mean_gain(row.values())}
    best_initial, notes = _best_initials(arms, tasks)
    return {"split": splits.pop(), "tasks": tasks, "inputs": [path for path, _ in compares],
            "best_initial": best_initial, "arms": arms, "notes": notes}


def _best_initials(arms: dict, tasks: list[str]) -> tuple[dict, list[str]]:
    """The paper's "best initial expert" row: per task, the first arm's that has a number. Each arm scores its own
    iteration 0, so arms that share a pool and seed agree; a note says where they do not."""
    row, notes = {}, []
    for task in tasks:
        rows = {name: arm["tasks"][task] for name, arm in arms.items() if "best_initial" in arm["tasks"][task]}
        scored = {name: r["best_initial"] for name, r in rows.items() if "value" in r["best_initial"]}
        if not scored:
            row[task] = next((r["best_initial"] for r in rows.values()), {"missing": f"no arm compared on {task}"})
            continue
        first = next(iter(scored))
        row[task] = {**scored[first], "arm": first, "source": rows[first]["source"]}
        if any(s != scored[first] for s in scored.values()):
            each = ", ".join(f"{name} {s['member']} {s['value']:.3f} (n={s['n']})" for name, s in scored.items())
            notes.append(f"{task}: the arms' best initial members differ ({each}); the row shows {first}'s")
    return row, notes


TABLE_HEADER = """\
# SPARTA: the paper's table ({split} split)

One column per task, in the paper's order, merged from one `sparta compare` per task (its `compare.md` has the
members, `n`, `failed` counts and top-reputation cells). **best initial** is the member with the highest score
before iteration 1 (the paper's "best initial expert"); an arm's cell is its best member after its last iteration:
the task's primary metric with its 95% bootstrap interval, then the relative gain over that compare's best initial.
`~`: the two 95% intervals overlap, the gain is within noise. A cell without a number says why.
"""


def render_table(table: dict) -> str:
    inputs = [f"- `{path}`" for path in table["inputs"]]
    return "\n".join([TABLE_HEADER.format(split=table["split"]), *inputs, "", *table_lines(table)]) + "\n"


def table_lines(table: dict) -> list[str]:
    """The table and its notes: what the command prints."""
    tasks, arms = table["tasks"], table["arms"]
    out = ["| method | " + " | ".join(_column(arms, t) for t in tasks) + " | mean gain |",
           "|---" * (len(tasks) + 2) + "|",
           "| best initial | " + " | ".join(_value(table["best_initial"][t]) for t in tasks) + " | |"]
    for name, arm in arms.items():
        cells = [_merged_cell(arm["tasks"][t]) for t in tasks]
        out.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_cell(arm, len(tasks))} |")
    notes = table["notes"] + [f"{name}, {t}: {note}" for name, arm in arms.items() for t in tasks
                              for note in arm["tasks"][t].get("notes", [])]
    return out + [""] + ([f"- {n}" for n in notes] + [""] if notes else [])


def _column(arms: dict, task: str) -> str:
    metrics = sorted({arm["tasks"][task].get("metric") for arm in arms.values()} - {None})
    return f"{task} ({', '.join(metrics)})" if metrics else task


def _value(s: dict) -> str:
    if "value" not in s:
        return s["missing"]
    return f"{s['value']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def _merged_cell(row: dict) -> str:
    """Best after, its interval and the gain; without a best after, only why (never the best initial's number)."""
    if "best" not in row:  # the arm is in no compare of this task
        return row["missing"]
    if "value" not in row["best"]:
        return _cell(row["best"])
    if row["relative_gain"] is not None:
        gain = _gain_text(row)
    elif row["best_initial"].get("value") == 0:
        gain = "(gain undefined: best initial is 0)"
    else:
        gain = f"(no gain; best initial: {row['best_initial']['missing']})"
    return f"{_value(row['best'])} {gain}"


def write_table(out: Path, table: dict) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "table.json", table)
    (out / "table.md").write_text(render_table(table))
    return out / "table.md", out / "table.json"
