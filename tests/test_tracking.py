"""Experiment tracking (sparta/tracking.py), for real and offline: TensorBoard event files read back with
TensorBoard's own reader, an MLflow local store read back with MlflowClient, both compared with the run directory's
files; a run killed and resumed logs each step once; a tracker that fails never costs an iteration; no secret from
the environment reaches a file."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparta.config import ConfigError, load_config
from sparta.eval_results import EvalFile
from sparta.pipeline import Pipeline
from sparta.ratings import leaderboard_at, start_state
from sparta.records import read_json
from sparta.rundir import RunDir
from tests.conftest import tiny
from tests.test_pipeline import Killed, kill_at

SECRET = "fake-secret-7f3a9c1e"
SECRET_VARS = ("SPARTA_API_KEY", "WANDB_API_KEY", "HF_TOKEN", "MLFLOW_TRACKING_TOKEN", "OPENAI_API_KEY")
MEMBERS = ["a", "b", "c", "d"]
EVAL = ("eval.tasks=[gsm8k]", "eval.splits=[test]", "eval.limit=2", "eval.max_new_tokens=4", "eval.bootstrap=20")


def f32(value: float) -> float:
    """`value` as TensorBoard keeps a scalar (float32)."""
    return float(np.float32(value))


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for `logdir`: tag -> [(step, value)], read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, model_cache):
    """A tiny run tracked to TensorBoard and MLflow: killed in iteration 1's DPO, resumed to 1, then run on to 2,
    with secrets in the environment all along."""
    root = tmp_path_factory.mktemp("tracked")
    logs = root / "logs"
    warnings = Kept()
    logging.getLogger("sparta.tracking").addHandler(warnings)
    with pytest.MonkeyPatch.context() as mp:
        for name in SECRET_VARS:
            mp.setenv(name, SECRET)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)

        def config(iterations):
            return tiny(root / "run", model_cache, f"iterations={iterations}", "arena.k=1", *EVAL,
                        "tracking.report_to=[tensorboard, mlflow]", f"tracking.logging_dir={logs}",
                        "tracking.run_name=tiny")

        with pytest.raises(Killed):
            Pipeline(config(1), progress=kill_at("dpo c")).run_all()
        Pipeline(config(1)).run_all()
        pipeline = Pipeline(config(2))
        pipeline.run_all()
    logging.getLogger("sparta.tracking").removeHandler(warnings)
    assert not warnings.records, [r.getMessage() for r in warnings.records]  # every tracker took every stage
    return {"run": RunDir(root / "run"), "logs": logs, "root": root, "pipeline": pipeline}


class Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_tensorboard_shows_what_the_run_directory_holds(tracked):
    run = tracked["run"]
    got = scalars(tracked["logs"] / "tensorboard" / "tiny")
    start = start_state(run.root, 1, MEMBERS, run.config().reputation)  # step 0: where iteration 1 started
    for m in MEMBERS:
        assert dict(got[f"reputation/{m}"])[0] == f32(start.ratings[m]) == f32(100.0)
        assert dict(got[f"sigma/{m}"])[0] == f32(start.sigmas[m])
    for t in (1, 2):
        ratings = read_json(run.reputations(t))
        for m in MEMBERS:
            assert dict(got[f"reputation/{m}"])[t] == f32(ratings["ratings"][m])
            assert dict(got[f"sigma/{m}"])[t] == f32(ratings["sigmas"][m])
        for row in leaderboard_at(run, t, MEMBERS):
            for field in ("wins", "losses", "ties", "chosen", "rejected"):
                assert dict(got[f"{field}/{row['member']}"])[t] == row[field]
        metrics = read_json(run.metrics(t))
        assert dict(got["metrics/tie_rate"])[t] == f32(metrics["tie_rate"])
        assert dict(got["metrics/peak_rss_mb"])[t] == f32(metrics["peak_rss_mb"])
        for stage, seconds in metrics["timings_s"].items():
            assert dict(got[f"metrics/timings_s/{stage}"])[t] == f32(seconds)
        strengths = read_json(run.root / "ratings.json")["per_iteration"][str(t)]["bradley_terry"]
        for m in MEMBERS:
            assert dict(got[f"bradley_terry/{m}"])[t] == f32(strengths[m])
        judges = read_json(run.root / "ratings.json")["per_iteration"][str(t)]["judges"]  # the bootstrap's points
        assert dict(got["judges/length_win_rate"])[t] == f32(judges["length"]["longer_wins"]["value"])
        fitted = [m for m in MEMBERS if judges["gamma"]["per_judge"][m]["value"] is not None]
        assert fitted  # a member with no verdicts this iteration has no γ and no scalar
        for m in fitted:
            assert dict(got[f"judges/gamma/{m}"])[t] == f32(judges["gamma"]["per_judge"][m]["value"])
        if judges["alpha"]["value"] is not None:
            assert dict(got["judges/alpha"])[t] == f32(judges["alpha"]["value"])
    for m in MEMBERS:  # each member's DPO steps, numbered on across iterations
        history = [h for t in (1, 2) for h in read_json(run.training(t, m))["history"]]
        assert [s for s, _ in got[f"train/{m}/loss"]] == list(range(1, len(history) + 1))
        assert [v for _, v in got[f"train/{m}/loss"]] == [f32(h["loss"]) for h in history]
        assert [v for _, v in got[f"train/{m}/reward_accuracy"]] == [f32(h["reward_accuracy"]) for h in history]
    for t in (0, 2):  # the pool before iteration 1 and after the last
        f = EvalFile.read(run.evaluation(t, "gsm8k", "test"))
        for m, result in f.results.items():
            for name, metric in result.metrics.items():
                tag = f"gsm8k-test/{name}/{m}"
                assert dict(got[f"eval/{tag}"])[t] == pytest.approx(metric.value, nan_ok=True)
                assert dict(got[f"eval_ci95/{tag}/low"])[t] == pytest.approx(metric.ci95[0], nan_ok=True)
                assert dict(got[f"eval_ci95/{tag}/high"])[t] == pytest.approx(metric.ci95[1], nan_ok=True)


def test_a_killed_and_resumed_run_logs_each_step_once(tracked):
    got = scalars(tracked["logs"] / "tensorboard" / "tiny")
    assert len(got) > 50
    for tag, points in got.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"
    assert [s for s, _ in got["reputation/a"]] == [0, 1, 2]
    state = read_json(tracked["run"].tracking_state)
    for name in ("tensorboard", "mlflow"):
        assert state[name]["config_logged"] and len(state[name]["logged"]) == len(set(state[name]["logged"]))
    assert "eval/iter_02/gsm8k-test.json" in state["tensorboard"]["logged"]


def test_mlflow_continues_one_run_that_matches_the_files(tracked):
    from mlflow import MlflowClient

    run = tracked["run"]
    client = MlflowClient((tracked["logs"] / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "sparta"]
    (found,) = client.search_runs([experiment.experiment_id])  # the resumed invocations continued the first
    run_id = read_json(run.tracking_state)["mlflow"]["run_id"]
    assert found.info.run_id == run_id and found.info.run_name == "tiny"
    params = found.data.params  # the resolved config, logged once
    assert params["arena.k"] == "1" and params["tracking.report_to"] == '["tensorboard", "mlflow"]'
    history = client.get_metric_history(run_id, "reputation/b")
    assert [(m.step, m.value) for m in history] == [(0, 100.0)] + [
        (t, read_json(run.reputations(t))["ratings"]["b"]) for t in (1, 2)]
    steps = [h for t in (1, 2) for h in read_json(run.training(t, "c"))["history"]]
    assert [m.value for m in client.get_metric_history(run_id, "train/c/loss")] == [h["loss"] for h in steps]


def test_no_secret_reaches_a_file(tracked):
    files = [p for p in tracked["root"].rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in files) and any("mlruns" in p.parts for p in files)
    leaks = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks


class Refuses:
    """A tracker whose package is missing or misconfigured: it fails to start."""

    def __init__(self, *args, **kwargs):
        raise ConnectionError("no route to the tracking server")


class Breaks:
    """A tracker that starts, then raises on its third log call (one per step)."""

    main_process_only = False

    def __init__(self, *args, **kwargs):
        self.calls = 0

    def start(self):
        pass

    def store_init_configuration(self, values):
        pass

    def log(self, values, step=None):
        self.calls += 1
        if self.calls == 3:
            raise OSError("disk full")

    def finish(self):
        pass


def test_failing_trackers_are_warnings_and_a_tracker_added_on_resume_gets_what_it_missed(
        tiny_config, tmp_path, monkeypatch, caplog, capsys):
    from sparta import tracking
    from sparta.cli import main

    monkeypatch.setitem(tracking.FACTORIES, "wandb", lambda where, entry: Refuses())
    monkeypatch.setitem(tracking.FACTORIES, "trackio", lambda where, entry: Breaks())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tiny_config("iterations=1", "arena.k=1", "tracking.report_to=[tensorboard, wandb, trackio]")
    with caplog.at_level(logging.WARNING, logger="sparta.tracking"):
        run = Pipeline(config).run_all()
    assert run.is_done(1, "iteration")
    warned = caplog.text
    assert "wandb did not start (ConnectionError" in warned and "trackio failed while logging" in warned
    state = read_json(run.tracking_state)
    assert "wandb" not in state or not state["wandb"]["logged"]
    assert state["trackio"]["logged"] == ["start", "iter_01/board"]  # broke on member a's second DPO step
    logdir = run.tracking_dir / "tensorboard" / run.root.name
    before = scalars(logdir)
    assert [s for s, _ in before["reputation/a"]] == [0, 1]

    # the same run, resumed by the CLI with MLflow added (tracking may change on a resumed run): it is given every
    # stage already finished; TensorBoard has nothing new to log
    assert main(["run", str(run.config_file), "tracking.report_to=[tensorboard, mlflow]"]) == 0
    out = capsys.readouterr().out
    assert f"tracking: tensorboard --logdir {logdir}" in out and "tracking: mlflow ui" in out
    assert scalars(logdir) == before
    state = read_json(run.tracking_state)
    assert state["mlflow"]["logged"] == state["tensorboard"]["logged"]
    from mlflow import MlflowClient

    client = MlflowClient((run.tracking_dir / "mlruns").resolve().as_uri())
    history = client.get_metric_history(state["mlflow"]["run_id"], "reputation/a")
    assert [(m.step, m.value) for m in history] == [(0, 100.0), (1, read_json(run.reputations(1))["ratings"]["a"])]


def test_tracking_config_is_checked():
    assert load_config(None, []).tracking.report_to == ()
    with pytest.raises(ConfigError, match=r"tracking.report_to: unknown tracker\(s\) \['tensorbord'\]"):
        load_config(None, ["tracking.report_to=[tensorbord]"])
    with pytest.raises(ConfigError, match="names a tracker twice"):
        load_config(None, ["tracking.report_to=[mlflow, mlflow]"])
    with pytest.raises(ConfigError, match="unknown config key 'tracking.dir'"):
        load_config(None, ["tracking.dir=x"])


def test_importing_sparta_loads_no_tracker_package():
    code = ("import sys, sparta, sparta.tracking, sparta.pipeline, sparta.cli; "
            "print(json.dumps(sorted(m for m in ('tensorboard', 'torch.utils.tensorboard', 'mlflow', 'wandb', "
            "'trackio', 'accelerate.tracking') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
