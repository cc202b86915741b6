"""`sparta run | validate | experts | report | eval | compare | view | export | simulate` — the only module that prints
or draws progress."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .eval_results import EvalFile  # json only: `sparta --help` stays light

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparta", description="SPARTA ALIGNMENT: align a pool of models by combat")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run (or resume) the SPARTA loop"),
                            ("validate", "check a configuration without running anything"),
                            ("experts", "build (or reuse) the pool's LoRA experts"),
                            ("report", "rewrite RUN/report.md and its plots from the run directory")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG),
                       help="YAML config (default: the packaged demo)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. arena.alpha=0.3")
    p = sub.add_parser("eval", help="score pool members on a task's dev or test split (with 95%% CIs)")
    p.add_argument("config", help="a YAML config, or a run directory (its config.yaml is used)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--task", required=True, help="one of the 12 task names (see docs/tasks.md)")
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--members", nargs="+",
                   help="members to score (default: all); a model spec scores that model from outside the pool")
    p.add_argument("--iteration", type=int, help="the pool after this iteration (0 = initial; default: the last)")
    p.add_argument("--limit", type=int, help="N items of the split, drawn with the run seed (the same N for "
                   "every member and iteration; default: all)")
    p.add_argument("--evaluator", help="alpaca, com2: who scores free-text answers 1-10, a member or a model spec "
                   "(packaged:NAME, a .gguf, an HF dir, tiny[:SEED], a hub id); default: eval.evaluator, else the "
                   "member with the top reputation")
    _add_compare(sub)
    p = sub.add_parser("view", help="write an offline HTML browser of a run's duels and pairs (RUN/view/index.html)")
    p.add_argument("run", help="a run directory")
    p.add_argument("--out", help="where the page goes (default: RUN/view; replaced whole on each call)")
    p.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=0, help="with --serve: the port (default 0: a free one)")
    _add_export(sub)
    _add_simulate(sub)
    return parser


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="the arena's match-making, weighting, Elo and pair rule on a synthetic pool "
                       "(no model): pair precision and reputation quality over seeds (docs/simulate.md)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. members=16 skill=independent arena.alpha=0.5")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default 20)")
    p.add_argument("--sweep", action="store_true", help="change one key of the base at a time over the default axes")
    p.add_argument("--out", default="simulate", help="where simulate.md, simulate.json and the plots go "
                   "(default: ./simulate)")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a member of a run (adapter or merged model, card, its pairs) to a "
                       "directory, optionally pushed to the hub (docs/export.md)")
    p.add_argument("run", metavar="RUN", help="a run directory")
    p.add_argument("--member", required=True, help="a member's name, or 'best': the best primary metric on the run's "
                   "dev evaluation of --task at that iteration")
    p.add_argument("--task", help="with --member best: the task whose dev evaluation picks the member")
    p.add_argument("--metric", help="with --member best: the metric that picks (default: the task's primary one)")
    p.add_argument("--iteration", type=int, help="the member after this iteration (0 = its starting adapter; "
                   "default: the last finished)")
    p.add_argument("--merged", action="store_true", help="base + adapter merged into a plain transformers model")
    p.add_argument("--out", required=True, help="the directory to write (must not exist or be empty, unless --force)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--push-to-hub", metavar="REPO", help="then upload --out to this hub repo (token: HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="run (or resume) several arms and write the paper's comparison table")
    p.add_argument("arms", nargs="*", metavar="ARM",
                   help="a YAML config, or NAME=CONFIG (default name: the file's stem); each arm needs its own run_dir")
    p.add_argument("--sweep", help="a YAML file instead of ARMs: {arms: {NAME: {config: PATH, overrides: [k=v, ...]}}, "
                   "tasks: [...], split: test, limit: N, metric: NAME}; config paths relative to the file")
    p.add_argument("--tasks", nargs="+", help="task names (docs/tasks.md); default: the sweep's")
    p.add_argument("--split", choices=["dev", "test"], help="default: the sweep's, else test")
    p.add_argument("--limit", type=int, help="N items of the split, drawn with each arm's seed (default: the sweep's, "
                   "else each arm's eval.limit; 0 = all)")
    p.add_argument("--metric", help="the metric compared (default: each task's primary), e.g. loglik_circular; a "
                   "member without it is a cell that says so")
    p.add_argument("--merge", nargs="+", metavar="COMPARE",
                   help="instead of running arms: merge per-task compares (compare.json files, or the directories "
                   "they are in) into the paper's table, OUT/table.md and OUT/table.json; reads json only")
    p.add_argument("--out", default="compare", help="where compare.md and compare.json (with --merge: table.md and "
                   "table.json) go (default: ./compare)")


class Bars:
    """tqdm bars, one per stage; the pipeline calls bars(stage, total) and ticks what it returns."""

    def __init__(self):
        self.open = None

    def __call__(self, stage: str, total: int):
        from tqdm import tqdm

        self.close()
        self.open = tqdm(total=total, desc=f"{stage:>16}", unit="", leave=True, file=sys.stderr,
                         dynamic_ncols=True)
        return self.open.update

    def close(self) -> None:
        if self.open is not None:
            self.open.close()
            self.open = None


def print_summary(summary: dict) -> None:
    m = summary["metrics"]
    if "method" in m:  # a baseline iteration: samples instead of duels
        skipped = ", ".join(f"{k} {v}" for k, v in m["skipped"].items() if v) or "none"
        print(f"\n== iteration {summary['iteration']} ({m['method']}): {m['samples']} samples, {m['pairs']} pairs, "
              f"failed generations {m['failed']}, judge parse failures {m['judgments']['parse_failure_rate']:.1%}, "
              f"skipped: {skipped}")
    else:
        print(f"\n== iteration {summary['iteration']}: {m['duels']} duels, {m['pairs']} pairs, "
              f"tie rate {m['tie_rate']:.2f}, judge parse failures {m['judgments']['parse_failure_rate']:.1%}, "
              f"failed generations {m['responses']['failed']}")
    print(f"{'member':<16}{'reputation':>11}{'sigma':>7}{'W':>4}{'L':>4}{'T':>4}{'void':>5}{'chosen':>8}"
          f"{'rejected':>9}  loss on its pairs or samples (before→after; DPO: reward acc., SPPO: target error)")
    for row in summary["leaderboard"]:
        loss = _training_cell(m["training"].get(row["member"], {}))
        print(f"{row['member']:<16}{row['reputation']:>11.3f}{row['sigma']:>7.3f}{row['wins']:>4}{row['losses']:>4}"
              f"{row['ties']:>4}{row['void']:>5}{row['chosen']:>8}{row['rejected']:>9}  {loss}")
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in m["timings_s"].items())
    print(f"stage times: {timings}; peak memory {m['peak_rss_mb']:.0f} MB", flush=True)


def _training_cell(t: dict) -> str:
    """A member's training, before→after: DPO's reward accuracy, or how far SPPO's log-ratios are from their targets."""
    from .report import scored

    after = t.get("after")
    if not after:
        return "-"
    fit = (f"acc {after['reward_accuracy']:.2f}" if "reward_accuracy" in after
           else f"target error {after['target_error']:.3f}")
    return f"{t['loss_first']:.3f}→{after['loss']:.3f}, {fit} ({scored(after)}){_objective_note(t)}"


def _objective_note(t: dict) -> str:
    """The preference loss other than plain DPO (training.loss), with its ε: rdpo's estimated flip rate shows here."""
    o = t.get("objective")
    if not o:
        return ""
    return f"; {o['loss']}" + (f" ε {o['eps']:.3f}" if "eps" in o else "")


def print_eval(data: EvalFile, path: Path) -> None:
    drawn = data.subset
    items = f"{data.n_examples} of {drawn['of']} items, drawn with seed {drawn['seed']}" if drawn else \
        f"{data.n_examples} items"
    print(f"\n{data.task} ({data.split}, {items}):")
    for member, r in data.results.items():
        cells = []
        for name, m in r.metrics.items():
            lo, hi = m.ci95
            mark = "*" if name == r.primary else ""
            cells.append(f"{name}{mark} {m.value:.3f} [{lo:.3f}, {hi:.3f}] n={m.n}"
                         + (f" failed={m.failed}" if m.failed else "")
                         + (f" excluded={m.excluded}" if m.excluded else ""))
        print(f"  {member:<16} " + "; ".join(cells) + f"  ({r.wall_s:.0f}s)")
        picks = [f"{name} {letter_counts(m.picks)}" for name, m in r.metrics.items() if m.picks is not None]
        if picks:
            print(f"  {'':<16} picked: " + "; ".join(picks))
    baseline = next((r.majority_baseline for r in data.results.values() if r.majority_baseline), None)
    if baseline:
        print(f"majority-letter baseline (always {baseline.letter}): {baseline.value:.3f}; gold letters "
              f"{letter_counts(baseline.gold)}; a circular metric's is 0")
    judge = next((r.evaluator for r in data.results.values() if r.evaluator), None)
    if judge:
        print(f"scored 1-10 by {judge['name']!r}" + (f" ({judge['spec']})" if judge.get("spec") != judge["name"]
                                                      else ""))
    print(f"(* primary metric; 95% bootstrap intervals) written to {path}")


def letter_counts(counts: dict[str, int]) -> str:
    """{"A": 9, "B": 2, "none": 1} -> "A 9 B 2 none 1"."""
    return " ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "compare":
        return _compare(args)
    if args.command == "view":
        return _view(args)
    if args.command == "export":
        return _export(args)
    if args.command == "simulate":
        return _simulate(args)
    from .config import ConfigError, dump_yaml, load_config
    from .rundir import RunDir, RunDirError

    config_path, overrides = args.config, list(args.overrides)
    if "=" in config_path and not Path(config_path).exists() and args.command in ("run", "validate", "experts"):
        config_path, overrides = str(DEFAULT_CONFIG), [config_path, *overrides]  # `sparta run iterations=1`: the demo
    try:  # a run directory: its own config, and it stays where it is
        config = RunDir(Path(config_path)).config(overrides) if Path(config_path).is_dir() else \
            load_config(config_path, overrides)
    except (ConfigError, RunDirError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.command == "validate":
        return _validate(config, dump_yaml)
    if args.command == "report":
        from .report import write_report

        print(f"wrote {write_report(Path(config.run_dir), [m.name for m in config.pool.members])}")
        return 0
    from .pipeline import Pipeline

    bars = Bars()
    pipeline = Pipeline(config, progress=bars, on_iteration=lambda summary: (bars.close(), print_summary(summary)))
    try:
        if args.command == "eval":
            path = pipeline.evaluate(args.task, args.split, args.iteration, args.members, args.limit,
                                     args.evaluator)
            bars.close()
            print_eval(EvalFile.read(path), path)  # what the file says
        elif args.command == "experts":
            pipeline.check()
            for member, path in pipeline.build_initial_adapters().items():
                print(f"{member:<16} {path or 'fresh adapter'}")
        else:
            run = pipeline.run_all()
            print(f"\nrun complete: {run.root}\nreport:   {run.root / 'report.md'}")
            if (run.view / "index.html").exists():
                print(f"duels:    {run.view / 'index.html'} (open it in a browser; `sparta view {run.root} --serve` "
                      "serves it)")
            for line in pipeline.tracking.locations():
                print(f"tracking: {line}")
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        pipeline.close()  # `sparta eval` too: a vLLM server or Ray workers must not outlive the command
    return 0


def _view(args) -> int:
    """Write the browser; with --serve, serve its directory on 127.0.0.1 until Ctrl-C."""
    import time

    from .viewer import server, write_view

    clock = time.monotonic()
    try:
        page = write_view(Path(args.run), Path(args.out) if args.out else None)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {page} ({time.monotonic() - clock:.1f}s); open it in a browser, no network needed")
    if not args.serve:
        return 0
    httpd = server(page.parent, args.port)
    print(f"serving http://127.0.0.1:{httpd.server_address[1]}/index.html (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        httpd.server_close()
    return 0


def _compare(args) -> int:
    """Every arm is loaded and checked before any runs; the tables are written from the run directories."""
    if args.merge:
        return _merge(args)
    from .compare import arm_configs, collect, make_plan, render_summary, run_arms, write_comparison
    from .config import ConfigError

    try:
        plan = make_plan(args.arms, args.sweep, args.tasks, args.split, args.limit, args.metric)
        configs = arm_configs(plan)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    bars = Bars()
    try:
        run_arms(configs, progress=bars, on_iteration=lambda summary: (bars.close(), print_summary(summary)),
                 on_arm=lambda name, c: print(f"\n=== arm {name}: {c.run_dir}", flush=True))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        bars.close()
    table = collect({name: (Path(c.run_dir), c.iterations) for name, c in configs.items()}, plan.tasks, plan.split,
                    plan.metric)
    md, js = write_comparison(Path(args.out), table)
    print("\n" + "\n".join(render_summary(table)))
    print(f"wrote {md} and {js}")
    return 0


def _export(args) -> int:
    """A member of a finished run to --out (whole or not at all); then, if asked, to the hub."""
    from .export import ExportError, plan, push_to_hub, write_export

    try:
        export = plan(Path(args.run), args.member, args.task, args.iteration, args.metric)
        out = write_export(export, Path(args.out), args.merged, args.force)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # config, eval file, model spec, export
        print(f"error: {e}", file=sys.stderr)
        return 1
    what = "merged model" if args.merged else "adapter"
    chosen = f" (best on {args.task} dev, {export.chosen['metric']})" if export.chosen else ""
    print(f"exported {export.member}{chosen} after iteration {export.iteration} ({what}) to {out}")
    if args.push_to_hub:
        try:
            print(f"pushed to {push_to_hub(out, args.push_to_hub, args.private)}")
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


def _simulate(args) -> int:
    from .config import ConfigError
    from .simulate import AXES, SimConfig, run, table, with_overrides

    seeds = [] if args.seeds is None else [f"seeds={args.seeds}"]
    try:
        config = with_overrides(SimConfig(), [*args.overrides, *seeds])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    rows, path = run(config, Path(args.out), AXES if args.sweep else (),
                     progress=lambda row: print(f"{row['axis']}={row['value']} done", file=sys.stderr, flush=True))
    print("\n".join(table(rows)))
    print(f"wrote {path}")
    return 0


def _merge(args) -> int:
    """Per-task compares into the paper's table from their compare.json files alone: nothing is run or loaded."""
    from .compare import merge, read_compares, table_lines, write_table

    given = [flag for flag, value in (("ARM", args.arms), ("--sweep", args.sweep), ("--tasks", args.tasks),
                                      ("--split", args.split), ("--limit", args.limit), ("--metric", args.metric))
             if value not in (None, [])]
    if given:
        print(f"error: --merge reads compare.json files only; drop {', '.join(given)}", file=sys.stderr)
        return 2
    try:
        table = merge(read_compares(args.merge))
    except ValueError as e:
        print(f"merge error: {e}", file=sys.stderr)
        return 2
    md, js = write_table(Path(args.out), table)
    print("\n".join(table_lines(table)))
    print(f"wrote {md} and {js}")
    return 0


def _validate(config, dump_yaml) -> int:
    """The run's own checks that need the disk but no model load (prompt pool, recipes, models, adapters, tasks)."""
    from .pipeline import Pipeline

    pipeline = Pipeline(config)
    try:
        pipeline.check()
    except (ValueError, FileNotFoundError) as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 2
    print(dump_yaml(config))
    print(f"valid: {len(config.pool.members)} members, {len(pipeline.prompt_pool)} prompts in pool "
          f"{config.data.prompts!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
