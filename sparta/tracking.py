"""Experiment tracking (tracking.report_to): each finished stage of a run, logged live to accelerate's trackers
(`accelerate.tracking`: TensorBoard, MLflow, W&B, Trackio), used directly, without an `Accelerator`.

The run directory stays the source of truth: what is logged is read back from its files once a stage's done-marker
is there, and RUN/tracking.json records, per tracker, its run id and the stages it was given. So `update()` after
any stage logs what is new; a resumed run continues the same tracker run (TensorBoard: the same logdir; MLflow,
W&B: the stored run id) without logging a step twice, and a tracker added on resume is given everything already
finished. A tracker that fails to start, or raises while logging, is a warning and is dropped for the rest of this
invocation; the run goes on, and what it missed is given to it on the next resume.

Steps: the iteration for per-iteration scalars (0: evaluation before iteration 1), each member's own global DPO
(or SPPO) step for its training history. The scalar names are in docs/tracking.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig, to_dict
from .eval_results import EvalFile
from .judge_diagnostics import diagnose
from .ratings import bradley_terry, iteration_duels, leaderboard_at, start_state, win_matrix
from .records import read_json, write_json_atomic
from .rundir import RunDir

log = logging.getLogger(__name__)

BOARD = ("reputation", "sigma", "wins", "losses", "ties", "void", "chosen", "rejected")
# trackers with one step counter per run, that must only grow: their steps travel as values instead (x-axis)
RUN_STEP = ("wandb", "trackio")


@dataclass(frozen=True)
class Where:
    """Where a tracker writes: the project, this run's name, the local log folder."""

    project: str
    run_name: str
    logging_dir: Path


def _tensorboard(w: Where, entry: dict):
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker(w.run_name, w.logging_dir / "tensorboard")


def _mlflow(w: Where, entry: dict):
    """MLflow: MLFLOW_TRACKING_URI if set, else a local file store under the logging folder."""
    import mlflow
    from accelerate.tracking import MLflowTracker

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it; the store works as ever
        mlflow.set_tracking_uri((w.logging_dir / "mlruns").resolve().as_uri())
    return MLflowTracker(w.project, run_id=entry.get("run_id"), run_name=w.run_name)


def _wandb(w: Where, entry: dict):
    from accelerate.tracking import WandBTracker

    entry.setdefault("run_id", uuid.uuid4().hex[:12])
    w.logging_dir.mkdir(parents=True, exist_ok=True)
    return WandBTracker(w.project, name=w.run_name, id=entry["run_id"], resume="allow", dir=str(w.logging_dir))


def _trackio(w: Where, entry: dict):
    from accelerate.tracking import TrackioTracker

    return TrackioTracker(w.project, name=w.run_name, resume="allow")


FACTORIES = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb, "trackio": _trackio}
INSTALL = {"tensorboard": "'sparta-align[tracking]'", "mlflow": "'sparta-align[tracking]'"}  # else the tracker's name


def where(config: RunConfig, run: RunDir) -> Where:
    t = config.tracking
    return Where(t.project, t.run_name or run.root.resolve().name,
                 Path(t.logging_dir) if t.logging_dir else run.tracking_dir)


class Tracking:
    """The trackers of one invocation. With tracking.report_to empty every call does nothing."""

    def __init__(self, config: RunConfig, run: RunDir, members: list[str]):
        self.c, self.run, self.members = config, run, members
        self.where = where(config, run)
        path = run.tracking_state
        self.state: dict = read_json(path) if path.exists() else {}
        self.trackers: dict = {}
        for name in config.tracking.report_to:
            self._start(name)

    def _start(self, name: str) -> None:
        entry = self.state.setdefault(name, {"logged": []})
        tracker = None
        try:
            from accelerate import PartialState

            # accelerate's trackers log through its logger, which needs its state: in this one process, on the CPU
            # (no device, no process group), as `accelerate launch` is not how sparta runs
            PartialState(cpu=True)
            tracker = FACTORIES[name](self.where, entry)
            tracker.main_process_only = False  # log from this process, without asking the state who is main
            tracker.start()
            if name == "mlflow":
                entry["run_id"] = tracker.active_run.info.run_id
            if not entry.get("config_logged"):
                tracker.store_init_configuration(flat_config(self.c))
                entry["config_logged"] = True
        except Exception as e:  # noqa: BLE001 - any failure of a tracker is a warning, never a lost run
            hint = f"; pip install {INSTALL.get(name, name)}" if isinstance(e, ModuleNotFoundError) else ""
            log.warning("tracking: %s did not start (%s: %s%s); the run goes on without it (the run directory has "
                        "everything)", name, type(e).__name__, e, hint)
            _finish(name, tracker)
            return
        self.trackers[name] = tracker
        self._save()

    def _save(self) -> None:
        write_json_atomic(self.run.tracking_state, self.state)

    def update(self) -> None:
        """Give every tracker each finished stage it has not had (called as each stage ends)."""
        for key, ready, records in self._units():
            pending = [n for n in self.trackers if key not in self.state[n]["logged"]]
            if not pending or not ready():
                continue
            try:
                made = records()
            except Exception as e:  # noqa: BLE001 - the run directory stays the source of truth
                log.warning("tracking: could not read %s for the trackers (%s: %s)", key, type(e).__name__, e)
                continue
            for name in pending:
                self._log(name, key, made)

    def _log(self, name: str, key: str, made: list[tuple[dict, int, str]]) -> None:
        tracker = self.trackers[name]
        try:
            for values, step, axis in made:
                if name in RUN_STEP:
                    tracker.log({**values, axis: step})
                else:
                    tracker.log(values, step=step)
        except Exception as e:  # noqa: BLE001
            log.warning("tracking: %s failed while logging %s (%s: %s); it is dropped for this run (a resumed run "
                        "gives it what it missed)", name, key, type(e).__name__, e)
            _finish(name, self.trackers.pop(name))
            return
        self.state[name]["logged"].append(key)
        self._save()

    def _units(self):
        """(key, ready, records) for every stage a tracker is given, in run order."""
        run = self.run
        evals: dict[int, list[Path]] = {}
        for path in run.evaluations():
            evals.setdefault(int(path.parent.name[len("iter_"):]), []).append(path)
        for t in range(0, self.c.iterations + 1):
            if t == 1:  # where the reputations started (fair, or dev scores), at step 0, once combat has read it
                yield "start", _done(run, 1, "combat"), self._start_reputations
            if t:
                it = run.iteration(t).name
                yield f"{it}/board", _done(run, t, "pairs"), lambda t=t: self._board(t)
                for m in self.members:
                    yield f"{it}/train-{m}", _done(run, t, f"train-{m}"), lambda t=t, m=m: self._training(t, m)
                yield f"{it}/iteration", _done(run, t, "iteration"), lambda t=t: self._iteration(t)
            for path in evals.get(t, []):
                yield path.relative_to(run.root).as_posix(), lambda: True, lambda path=path: _evaluation(path)

    def _start_reputations(self) -> list[tuple[dict, int, str]]:
        state = start_state(self.run.root, 1, self.members, self.c.reputation)
        return [({**{f"reputation/{m}": state.ratings[m] for m in self.members},
                  **{f"sigma/{m}": state.sigmas[m] for m in self.members}}, 0, "iteration")]

    def _board(self, t: int) -> list[tuple[dict, int, str]]:
        rows = leaderboard_at(self.run, t, self.members)
        return [({f"{field}/{r['member']}": r[field] for r in rows for field in BOARD}, t, "iteration")]

    def _training(self, t: int, member: str) -> list[tuple[dict, int, str]]:
        before = sum(len(read_json(self.run.training(u, member))["history"]) for u in range(1, t))
        history = read_json(self.run.training(t, member))["history"]
        return [({f"train/{member}/{k}": v for k, v in step.items() if _number(v)}, before + i + 1,
                 f"train/{member}/step") for i, step in enumerate(history)]

    def _iteration(self, t: int) -> list[tuple[dict, int, str]]:
        values = flatten(read_json(self.run.metrics(t)), "metrics")
        duels = iteration_duels(self.run.root, t)
        if duels:  # the iteration's Bradley-Terry strengths, as ratings.json's per_iteration (no bootstrap here)
            strengths = bradley_terry(win_matrix(duels, self.members)[0])
            values.update({f"bradley_terry/{m}": float(s) for m, s in zip(self.members, strengths)})
            values.update(judge_scalars(diagnose(duels, self.members, read_json(self.run.reputations(t))["ratings"],
                                                 seed=0, n_boot=0)))
        return [(values, t, "iteration")]

    def locations(self) -> list[str]:
        """Where each started tracker's logs are, for the CLI to print."""
        out = []
        for name, tracker in self.trackers.items():
            if name == "tensorboard":
                out.append(f"tensorboard --logdir {tracker.logging_dir}")
            elif name == "mlflow":
                import mlflow

                run_id = tracker.active_run.info.run_id
                out.append(f"mlflow ui --backend-store-uri {mlflow.get_tracking_uri()} (run {run_id})")
            elif name == "wandb":
                out.append(f"wandb: {tracker.run.url or tracker.run.dir}")
            else:
                out.append(f"trackio show --project {self.where.project}")
        return out

    def finish(self) -> None:
        for name, tracker in self.trackers.items():
            _finish(name, tracker)


def _finish(name: str, tracker) -> None:
    """End a tracker's run (one that failed half-way too: MLflow keeps a started run active in the process)."""
    try:
        if tracker is not None:
            tracker.finish()
    except Exception as e:  # noqa: BLE001
        log.debug("tracking: %s did not finish cleanly (%s: %s)", name, type(e).__name__, e)


def _done(run: RunDir, t: int, stage: str):
    return lambda: run.is_done(t, stage)


def judge_scalars(judges: dict) -> dict[str, float]:
    """The point values of an iteration's judge diagnostics (ratings.json's per_iteration `judges`, without the
    bootstrap); undefined ones (no variation, a judge with no verdicts) are left out."""
    values = {"judges/alpha": judges["alpha"]["value"],
              "judges/length_win_rate": judges["length"]["longer_wins"]["value"],
              "judges/length_spearman": judges["length"]["spearman"]["value"],
              "judges/gamma_reputation_spearman": judges["gamma"]["spearman_reputation"]["value"]}
    values.update({_tag(f"judges/gamma/{j}"): g["value"] for j, g in judges["gamma"]["per_judge"].items()})
    return {k: v for k, v in values.items() if v is not None}


def _evaluation(path: Path) -> list[tuple[dict, int, str]]:
    """An evaluation file: each model's metrics with their 95% intervals, at the iteration it was scored after."""
    f, values = EvalFile.read(path), {}
    for model, result in f.results.items():
        for name, metric in result.metrics.items():
            tag = _tag(f"{f.task}-{f.split}/{name}/{model}")  # no name is another's prefix: MLflow's files
            values.update({f"eval/{tag}": metric.value, f"eval_ci95/{tag}/low": metric.ci95[0],
                           f"eval_ci95/{tag}/high": metric.ci95[1]})
    return [(values, f.iteration, "iteration")]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tag(name: str) -> str:
    """A scalar name every tracker takes (MLflow's are the strictest)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def flatten(data: dict, prefix: str) -> dict[str, float]:
    """The numbers in nested `data`, by slash-joined keys."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif _number(value) and not (isinstance(value, float) and math.isinf(value)):
            out[_tag(name)] = value
    return out


def flat_config(config: RunConfig) -> dict[str, object]:
    """The resolved config as dotted keys with scalar values (lists as JSON), as trackers take hyperparameters.
    It holds no secret: a key is only ever named by the variable it is read from (backend.http.api_key_env)."""
    out: dict[str, object] = {}

    def walk(value: object, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else k)
        elif isinstance(value, (str, int, float, bool)):
            out[name] = value
        else:
            out[name] = json.dumps(value)

    walk(to_dict(config), "")
    return out
