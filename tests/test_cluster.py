"""runtime.kind=ray on a real local Ray cluster (2 CPUs): the same results as a local run, adapters as Ray objects,
and real Ray worker processes killed (SIGKILL) or hung (SIGSTOP) mid-DPO and mid-generation."""

import json
import re
import signal

import pytest

from sparta.backends import BackendError, MemberModel
from sparta.backends.hf import HFBackend, LoraShape
from sparta.cluster import merge
from sparta.models import resolve_model
from tests.conftest import Signaller, tiny, within
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
    return {k: v for k, v in metrics.items() if k not in ("seconds", "cpu_seconds", "ray")}  # times vary


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
    with Signaller("ray::Worker.train") as killer:
        run_to_end(tiny(root, model_cache, *RAY, "runtime.max_retries=1"))
    assert killer.pid
    attempts = {m: json.loads((root / "iter_01" / "training" / f"{m}.json").read_text())["ray"]["attempts"]
                for m in "abcd"}
    assert sorted(attempts.values()) == [1, 1, 1, 2]  # one member was trained twice: the kill really hit a job
    assert_same(snapshot(reference), snapshot(root))


def test_a_kill_past_the_retries_stops_the_run_keeping_the_other_members_then_resume_matches(
        cluster, reference, model_cache, tmp_path):
    root = tmp_path / "ray"
    config = tiny(root, model_cache, *RAY, "runtime.max_retries=0")
    with Signaller("ray::Worker.train") as killer, pytest.raises(BackendError, match="worker died"):
        run_to_end(config)
    assert killer.pid
    done = sorted(p.name.removeprefix("train-") for p in (root / "iter_01" / "done").glob("train-*"))
    assert len(done) == 3  # the three members the kill did not hit were trained and kept
    run_to_end(config)  # resume: only the fourth member is trained
    assert_same(snapshot(reference), snapshot(root))
    for m in done:
        assert json.loads((root / "iter_01" / "training" / f"{m}.json").read_text())["ray"]["attempts"] == 1


def test_a_worker_killed_mid_generation_is_replaced_and_its_shard_redone(cluster, reference, model_cache, tmp_path):
    root = tmp_path / "ray"
    with Signaller("ray::Worker.call") as killer:
        run_to_end(tiny(root, model_cache, *RAY, "runtime.max_retries=1"))
    assert killer.pid
    assert_same(snapshot(reference), snapshot(root))


# A worker is hung after this long without progress. A tiny run's longest stretch without any is a new worker's
# first set_pool (loading the model and adapters: measured 20 s on 2 cores under a load of 11; a DPO step or a batch
# takes under a second); Ray needs ~5 s more to SIGKILL a stopped process.
STALL = 30
DEADLINE = 400  # s: the tests' own guard against a hang (a tiny run on Ray takes 30-120 s on 2 busy cores)


def test_a_worker_stopped_mid_dpo_is_killed_replaced_and_its_member_retrained(cluster, reference, model_cache,
                                                                              tmp_path):
    """SIGSTOP: the worker process is alive but its job makes no progress (what a stuck CUDA or NCCL call looks like
    from outside). It is killed after runtime.stall_timeout_s, replaced, and the member trained again: the run is
    the uninterrupted run, bit for bit."""
    root = tmp_path / "ray"
    config = tiny(root, model_cache, *RAY, "iterations=1", "runtime.max_retries=1", f"runtime.stall_timeout_s={STALL}")
    with Signaller("ray::Worker.train", signal.SIGSTOP) as stopper:
        within(DEADLINE, lambda: run_to_end(config), stopper.release)
    assert stopper.pid and stopper.gone, "the stopped worker was never killed"
    assert STALL - 2 < stopper.gone - stopper.at < STALL + 20  # killed for its stall, soon after the timeout
    attempts = {m: json.loads((root / "iter_01" / "training" / f"{m}.json").read_text())["ray"]["attempts"]
                for m in "abcd"}
    assert sorted(attempts.values()) == [1, 1, 1, 2]  # the stopped member was trained again, the others once
    assert_same(snapshot(reference, iterations=1), snapshot(root, iterations=1))  # the reference's iteration 1


def test_a_worker_stopped_mid_generation_past_the_retries_stops_the_run_naming_worker_stage_and_timeout(
        cluster, model_cache, tmp_path):
    config = tiny(tmp_path / "ray", model_cache, *RAY, "runtime.max_retries=0", f"runtime.stall_timeout_s={STALL}")
    with Signaller("ray::Worker.call", signal.SIGSTOP) as stopper, pytest.raises(BackendError) as error:
        within(DEADLINE, lambda: run_to_end(config), stopper.release)
    assert re.fullmatch(rf"generate on ray worker [01]: the worker made no progress for \d+ s "
                        rf"\(runtime.stall_timeout_s={STALL}\); 1 time\(s\) in one call \(runtime.max_retries=0\)",
                        str(error.value)), str(error.value)
    assert stopper.pid and stopper.gone and stopper.gone - stopper.at < STALL + 20  # killed, not left stopped


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


def test_every_call_a_worker_serves_reports_progress_batch_by_batch(model_cache):
    """What a worker's heartbeat counts (sparta.cluster.Worker.beat): the HF backend ticks once per batch in every
    call a worker serves, so a long call is not taken for a hung one (MC option log-likelihoods included)."""
    base = resolve_model("tiny", model_cache)
    be = HFBackend([MemberModel("a", base, None)], LoraShape(), seed=0)
    ids = [be.tokenizer("a").encode(f"question {i}") for i in range(5)]
    calls = {
        "generate": lambda p: be.generate(["a"] * 5, ids, max_new_tokens=2, temperature=0.0, top_p=1.0,
                                          batch_size=2, seed=0, progress=p),
        "next_token_logprobs": lambda p: be.next_token_logprobs(["a"] * 5, ids, [5], last=1, batch_size=2,
                                                                progress=p),
        "grouped": lambda p: be.grouped_next_token_logprobs(["a"] * 5, [[x] for x in ids], [5], last=1,
                                                            batch_size=2, progress=p),
        "continuations": lambda p: be.continuation_logprobs("a", ids, [[[5], [6]]] * 5, batch_size=2, progress=p),
    }
    for name, call in calls.items():
        ticks = []
        call(ticks.append)
        assert len(ticks) == 3 and sum(ticks) == 5, (name, ticks)  # 3 batches of 2, 2 and 1 rows


def test_merge_refuses_rows_no_shard_or_two_shards_computed():
    with pytest.raises(BackendError, match="row 1 came from 0 shards"):
        merge([[1, None], [None, None]], "generate")
    with pytest.raises(BackendError, match="row 0 came from 2 shards"):
        merge([[1, None], [1, 2]], "generate")
