"""runtime.kind=ray on a real local Ray cluster (2 CPUs): the same results as a local run, adapters as Ray objects,
and real Ray worker processes killed mid-DPO and mid-generation."""

import json
import os
import signal
import threading
import time

import pytest

from sparta.backends import BackendError, MemberModel
from sparta.backends.hf import HFBackend, LoraShape
from sparta.cluster import merge
from sparta.models import resolve_model
from tests.conftest import tiny
from tests.test_baselines import base_snapshot
from tests.test_pipeline import assert_same, run_to_end, snapshot

ray = pytest.importorskip("ray")

RAY = ("runtime.kind=ray", "runtime.workers=2")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (sparta joins it and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_cache):
    """A 2-iteration local run: what every Ray run must reproduce, bit for bit."""
    root = tmp_path_factory.mktemp("local") / "run"
    run_to_end(tiny(root, model_cache))
    return root


def trained(root, member, t=1):
    metrics = json.loads((root / f"iter_{t:02d}" / "training" / f"{member}.json").read_text())
    return {k: v for k, v in metrics.items() if k not in ("seconds", "ray")}


class Killer:
    """SIGKILLs the first Ray worker process seen running `title` (Ray names a busy actor process
    ray::Class.method), from a thread, while the run goes on."""

    def __init__(self, title: str):
        self.title, self.killed = title.encode(), None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.stop = False
        self.thread.start()

    def _watch(self):
        while not self.stop and self.killed is None:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if f.read().startswith(self.title):
                            os.kill(int(pid), signal.SIGKILL)
                            self.killed = int(pid)
                            return
                except OSError:
                    continue
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()

    def __enter__(self):
        return self


@pytest.mark.parametrize("storage", ["shared", "objects"])
def test_ray_run_matches_local(cluster, reference, model_cache, tmp_path, storage):
    """Same combat logs, pairs, reputations, adapters and DPO metrics as runtime=local, with the adapters read from
    the run directory (shared storage) or sent to and from the workers as Ray objects."""
    root = tmp_path / "ray"
    run_to_end(tiny(root, model_cache, *RAY, f"runtime.shared_storage={storage == 'shared'}"))
    assert_same(snapshot(reference), snapshot(root))
    for m in "abcd":
        assert trained(root, m, 2) == trained(reference, m, 2)
    placed = json.loads((root / "iter_01" / "training" / "a.json").read_text())["ray"]
    assert placed["attempts"] == 1 and placed["node"]
    assert not list(root.glob("**/.*.tmp*"))  # no half-written adapter left behind


def test_an_sppo_run_on_ray_matches_local(cluster, model_cache, tmp_path):
    """method=sppo: the workers train SPPO jobs through the same dispatcher as a local run, so the samples, their
    peer judgments and win rates, and the adapters are the local run's, bit for bit."""
    arm = ("method=sppo", "baseline.samples=3", "data.prompts_per_iteration=2", "iterations=1")
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_to_end(tiny(local, model_cache, *arm))
    run_to_end(tiny(remote, model_cache, *arm, *RAY))
    assert_same(base_snapshot(local, iterations=1), base_snapshot(remote, iterations=1))
    for m in "abcd":
        assert trained(remote, m) == trained(local, m) and trained(local, m)["samples"] > 0
    assert json.loads((remote / "iter_01" / "training" / "a.json").read_text())["ray"]["attempts"] == 1


def test_a_worker_killed_mid_dpo_is_replaced_and_its_member_retrained(cluster, reference, model_cache, tmp_path):
    root = tmp_path / "ray"
    with Killer("ray::Worker.train") as killer:
        run_to_end(tiny(root, model_cache, *RAY, "runtime.max_retries=1"))
    assert killer.killed
    attempts = {m: json.loads((root / "iter_01" / "training" / f"{m}.json").read_text())["ray"]["attempts"]
                for m in "abcd"}
    assert sorted(attempts.values()) == [1, 1, 1, 2]  # one member was trained twice: the kill really hit a job
    assert_same(snapshot(reference), snapshot(root))


def test_a_kill_past_the_retries_stops_the_run_keeping_the_other_members_then_resume_matches(
        cluster, reference, model_cache, tmp_path):
    root = tmp_path / "ray"
    config = tiny(root, model_cache, *RAY, "runtime.max_retries=0")
    with Killer("ray::Worker.train") as killer, pytest.raises(BackendError, match="worker died"):
        run_to_end(config)
    assert killer.killed
    done = sorted(p.name.removeprefix("train-") for p in (root / "iter_01" / "done").glob("train-*"))
    assert len(done) == 3  # the three members the kill did not hit were trained and kept
    run_to_end(config)  # resume: only the fourth member is trained
    assert_same(snapshot(reference), snapshot(root))
    for m in done:
        assert json.loads((root / "iter_01" / "training" / f"{m}.json").read_text())["ray"]["attempts"] == 1


def test_a_worker_killed_mid_generation_is_replaced_and_its_shard_redone(cluster, reference, model_cache, tmp_path):
    root = tmp_path / "ray"
    with Killer("ray::Worker.call") as killer:
        run_to_end(tiny(root, model_cache, *RAY, "runtime.max_retries=1"))
    assert killer.killed
    assert_same(snapshot(reference), snapshot(root))


def test_a_cluster_too_small_for_the_workers_is_a_clear_error(cluster, model_cache, tmp_path):
    config = tiny(tmp_path / "ray", model_cache, "runtime.kind=ray", "runtime.workers=3",
                  "runtime.startup_timeout_s=3")
    with pytest.raises(BackendError, match=r"did not grant 3 workers of \{'CPU': 1\}"):
        run_to_end(config)
    assert ray.available_resources().get("CPU") == 2  # the placement group was given back


def test_shards_of_every_call_merge_to_the_unsharded_result(model_cache):
    """The sharding contract (sparta.backends) on the HF backend: k shards, merged, equal one call exactly."""
    base = resolve_model("tiny", model_cache)
    be = HFBackend([MemberModel(n, base, None) for n in "ab"], LoraShape(), seed=0)
    tok = be.tokenizer("a")
    ids = [tok.encode(f"question {i} " * (1 + i % 4)) for i in range(7)]
    members = ["a", "b"] * 3 + ["a"]
    calls = {
        "generate": lambda **s: be.generate(members, ids, max_new_tokens=6, temperature=1.0, top_p=0.9,
                                            batch_size=2, seed=3, **s),
        "next_token_logprobs": lambda **s: be.next_token_logprobs(members, ids, [5, 9], last=2, batch_size=2, **s),
        "grouped": lambda **s: be.grouped_next_token_logprobs(members[:3], [[ids[i] + [7, 8], ids[i] + [9]]
                                                                            for i in range(3)], [5, 9], last=1,
                                                              batch_size=2, **s),
        "continuations": lambda **s: be.continuation_logprobs("a", ids, [[[5], [6, 7]]] * 7, batch_size=3, **s),
    }
    for name, call in calls.items():
        whole = call()
        for k in (2, 3):
            parts = [call(shard=(i, k)) for i in range(k)]
            assert all(any(v is None for v in p) for p in parts), name  # every shard left rows to the others
            assert merge(parts, name) == whole, name


def test_merge_refuses_rows_no_shard_or_two_shards_computed():
    with pytest.raises(BackendError, match="row 1 came from 0 shards"):
        merge([[1, None], [None, None]], "generate")
    with pytest.raises(BackendError, match="row 0 came from 2 shards"):
        merge([[1, None], [1, 2]], "generate")
