"""The vLLM backend against the HF backend on the same model and adapters: a real vLLM server (CPU build, its own
environment: `make vllm-env`), started and stopped by sparta. Tolerances are stated with each check.

Skipped where `.venv-vllm` is missing, except when SPARTA_REQUIRE_VLLM=1 (set by .ci/run): then it is an error."""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from sparta.arena.judging import ANSWER_PREFIX, ScoreTokens, expected_score, judge_messages
from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, LoraShape, ModelStore
from sparta.chat import encode_chat
from sparta.config import HTTPConfig, ModelConfig, VLLMConfig
from sparta.models import resolve_model
from tests.conftest import alive, within

PYTHON = Path(os.environ.get("SPARTA_VLLM_PYTHON", Path(__file__).parents[1] / ".venv-vllm" / "bin" / "python"))
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

if not PYTHON.exists():
    if os.environ.get("SPARTA_REQUIRE_VLLM") == "1":
        raise RuntimeError(f"SPARTA_REQUIRE_VLLM=1 but {PYTHON} does not exist: run `make vllm-env`")
    pytest.skip(f"no vLLM environment at {PYTHON} (make vllm-env)", allow_module_level=True)

QUESTIONS = ["What is 7 times 8?", "Name a colour of the sky.", "Write one word that rhymes with cat.",
             "Is the sun a star? Answer yes or no."]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    cache = Path(os.environ.get("SPARTA_CACHE") or tmp_path_factory.mktemp("cache"))
    return resolve_model("packaged:smollm2-135m-instruct", cache)


@pytest.fixture(scope="module")
def adapters(smollm2, tmp_path_factory):
    """Two LoRA adapters (rank 8, every linear layer) whose B matrices are random, so they change the outputs."""
    from bench.backends import adapters

    return adapters(smollm2, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def pools(smollm2, adapters, tmp_path_factory):
    members = [MemberModel("plain", smollm2, None), MemberModel("x", smollm2, adapters["x"]),
               MemberModel("y", smollm2, adapters["y"])]
    from sparta.backends.vllm import VLLMBackend

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    vllm = VLLMBackend(members, VLLMConfig(python=str(PYTHON), max_model_len=2048, max_loras=2, max_lora_rank=8,
                                           extra_args=("--max-num-seqs", "16")),
                       HTTPConfig(max_concurrency=8, retries=1), ModelConfig(dtype="float32"), log_path=log)
    hf = HFBackend(members, LoraShape(), seed=0, store=ModelStore("cpu", dtype="float32"))
    yield hf, vllm
    vllm.close()


def chat_ids(backend, member, text):
    return encode_chat(backend.tokenizer(member), [("user", "{0}")], [text], max_tokens=512).ids


def test_greedy_generation_matches_hf_with_mixed_adapters_in_one_call(pools):
    """Rows of the plain base and of two adapters in one request batch; greedy, 24 new tokens."""
    hf, vllm = pools
    members = [m for m in ("plain", "x", "y") for _ in QUESTIONS]
    prompts = [chat_ids(hf, m, q) for m in ("plain", "x", "y") for q in QUESTIONS]
    kw = dict(max_new_tokens=24, temperature=0.0, top_p=1.0, batch_size=16, seed=0)
    want, got = hf.generate(members, prompts, **kw), vllm.generate(members, prompts, **kw)
    same = [w.text == g.text for w, g in zip(want, got)]
    print(f"greedy texts identical: {sum(same)}/{len(same)}")
    assert all(g.text for g in got)
    assert sum(same) >= len(same) - 1, [(w.text, g.text) for w, g in zip(want, got)]
    # the adapters really act: their answers differ from the base's
    assert [g.text for g in got[:4]] != [g.text for g in got[4:8]]


def test_logprob_judge_matches_hf(pools):
    """Expected 1-10 scores of the same judgments: |vLLM - HF| < 0.02 (fp32 both; measured ~1e-4)."""
    hf, vllm = pools
    judges = ["x", "y", "plain", "x"]
    judges_agree(hf, judges, vllm, judges, "judge")


def judges_agree(hf, hf_judges: list[str], other, other_judges: list[str], label: str) -> None:
    """The judge's next-token log-probs over 1..10 after each of QUESTIONS, judged by hf_judges on the HF backend and
    by other_judges on `other`: expected scores within 0.02, log-probs within 0.05."""
    tok = hf.tokenizer(hf_judges[0])
    st = ScoreTokens(tok)
    prompts = [encode_chat(tok, judge_messages(), [q, "I think the answer is 42."], max_tokens=1024,
                           assistant_prefix=ANSWER_PREFIX).ids + st.appended for q in QUESTIONS]
    a = hf.next_token_logprobs(hf_judges, prompts, st.candidates, last=st.positions, batch_size=4)
    b = other.next_token_logprobs(other_judges, prompts, st.candidates, last=st.positions, batch_size=4)
    diffs = []
    for ra, rb in zip(a, b):
        sa, sb = expected_score(st.distribution(ra)), expected_score(st.distribution(rb))
        diffs.append((abs(sa - sb), max(abs(x - y) for pa, pb in zip(ra, rb) for x, y in zip(pa, pb))))
        assert diffs[-1][0] < 0.02 and diffs[-1][1] < 0.05, (sa, sb)
    print(f"{label}: max |expected score diff| {max(d[0] for d in diffs):.2e}, max |logprob diff| "
          f"{max(d[1] for d in diffs):.2e}")


def test_option_loglikelihoods_match_hf(pools):
    """MC option log-likelihoods: |vLLM - HF| < 0.05 nats per option, and the same pick."""
    hf, vllm = pools
    tok = hf.tokenizer("y")
    prefixes = [chat_ids(hf, "y", q) for q in QUESTIONS[:2]]
    options = [[tok.encode(t, add_special_tokens=False) for t in ("56", "54", "fifty-six")],
               [tok.encode(t, add_special_tokens=False) for t in ("Blue.", "Green, mostly.")]]
    a = hf.continuation_logprobs("y", prefixes, options, batch_size=2)
    b = vllm.continuation_logprobs("y", prefixes, options, batch_size=2)
    for ra, rb in zip(a, b):
        assert max(abs(x - y) for x, y in zip(ra, rb)) < 0.05, (ra, rb)
        assert ra.index(max(ra)) == rb.index(max(rb))
    print(f"options: max |loglik diff| {max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)):.2e}")


def test_a_new_adapter_directory_is_served_under_a_new_name(pools, adapters, smollm2):
    """set_pool with member x now at y's directory: x answers as y does (no stale adapter cache)."""
    hf, vllm = pools
    prompt = [chat_ids(hf, "x", QUESTIONS[0])]
    kw = dict(max_new_tokens=16, temperature=0.0, top_p=1.0, batch_size=1, seed=0)
    before = vllm.generate(["x"], prompt, **kw)[0].text
    as_y = vllm.generate(["y"], prompt, **kw)[0].text
    old = vllm.loaded["x"]
    vllm.set_pool([MemberModel("x", smollm2, adapters["y"])])
    try:
        assert vllm.loaded["x"] != old
        assert vllm.generate(["x"], prompt, **kw)[0].text == as_y != before
    finally:
        vllm.set_pool([MemberModel("x", smollm2, adapters["x"])])


def test_a_merged_export_is_served_as_a_model_spec(pools, smollm2, adapters, tmp_path):
    """`sparta export --merged` (member x of a run, at its starting adapter: iteration 0) served by vLLM as a local
    model directory, no LoRA: it answers as the HF backend's member x (base + adapter), to the tolerances above."""
    from sparta.backends.vllm import VLLMBackend
    from sparta.cli import main
    from sparta.config import load_config
    from sparta.rundir import RunDir

    hf, _ = pools
    root = tmp_path / "run"
    RunDir.open(load_config(None, [
        f"run_dir={root}", f"cache_dir={tmp_path / 'cache'}", f"pool.base={smollm2.source}",
        f"pool.members=[{{name: plain}}, {{name: x, adapter: {adapters['x']}}}, "
        f"{{name: y, adapter: {adapters['y']}}}]"]))
    out = tmp_path / "merged"
    assert main(["export", str(root), "--member", "x", "--iteration", "0", "--merged", "--out", str(out)]) == 0
    merged = MemberModel("merged", resolve_model(str(out), tmp_path / "cache"), None)
    vllm = VLLMBackend([merged], VLLMConfig(python=str(PYTHON), max_model_len=2048, max_loras=1, max_lora_rank=8,
                                            extra_args=("--max-num-seqs", "16")),
                       HTTPConfig(max_concurrency=8, retries=1), ModelConfig(dtype="float32"),
                       log_path=tmp_path / "server.log")
    try:
        prompts = [chat_ids(hf, "x", q) for q in QUESTIONS]
        kw = dict(max_new_tokens=24, temperature=0.0, top_p=1.0, batch_size=4, seed=0)
        want = hf.generate(["x"] * len(prompts), prompts, **kw)
        got = vllm.generate(["merged"] * len(prompts), prompts, **kw)
        same = sum(w.text == g.text for w, g in zip(want, got))
        print(f"merged export on vLLM: greedy texts identical to HF member x: {same}/{len(got)}")
        assert all(g.text for g in got) and same >= len(got) - 1, [(w.text, g.text) for w, g in zip(want, got)]
        judges_agree(hf, ["x"] * len(QUESTIONS), vllm, ["merged"] * len(QUESTIONS), "merged export judge")
    finally:
        vllm.close()


@pytest.mark.parametrize("release", [False, True])
def test_two_iterations_on_vllm(smollm2, adapters, tmp_path, release):
    """The pipeline with backend.kind=vllm: combat and judging on the server, DPO on transformers, and iteration 2
    served from iteration 1's adapters (new LoRA names); the server is stopped at the end. With
    release_for_training the server stops before each training stage and the trainer's base is freed after it:
    a new server serves iteration 2 and the trainer loads the base again."""
    from sparta.config import load_config
    from sparta.pipeline import Pipeline
    from sparta.records import read_jsonl

    config = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", "iterations=2",
        f"pool.base={smollm2.source}", "data.prompts=gsm8k", "data.prompts_per_iteration=3", "arena.k=1",
        f"pool.members=[{{name: plain}}, {{name: x, adapter: {adapters['x']}}}, {{name: y, adapter: {adapters['y']}}}]",
        "generation.max_new_tokens=16", "generation.max_prompt_tokens=256", "training.max_length=512",
        "judge.max_prompt_tokens=512", "backend.kind=vllm", f"backend.vllm.python={PYTHON}",
        "backend.vllm.max_model_len=1024", "backend.vllm.max_loras=3", "backend.vllm.max_lora_rank=8",
        "model.dtype=float32", f"backend.vllm.release_for_training={str(release).lower()}"])
    pipeline = Pipeline(config)
    root = pipeline.run_all().root
    starts = (root / "vllm-server.log").read_text().count("Application startup complete")
    assert (starts, pipeline.store.loads) == ((2, 2) if release else (1, 1))
    for t in (1, 2):
        duels = read_jsonl(root / f"iter_{t:02d}" / "combat.jsonl")
        assert len(duels) == 3 and all(d["response_a"]["text"] and d["response_b"]["text"] for d in duels)
        assert all(j["status"] == "ok" and 1 < j["score"] < 10 for d in duels for j in d["judgments"])
        assert all((root / f"iter_{t:02d}" / "adapters" / m / "adapter_config.json").exists() for m in ("x", "y"))
    assert pipeline.backend is None or pipeline.backend.process is None  # the server was stopped
    assert "Application startup complete" in (root / "vllm-server.log").read_text()


def test_ray_workers_serve_the_pool_from_their_own_vllm_servers_and_stop_loudly_when_one_hangs(pools, smollm2,
                                                                                             adapters, tmp_path):
    """runtime.kind=ray with backend.kind=vllm: the worker starts a vLLM server of its own (in the Ray actor's
    environment), answers as the local HF backend does, logs to RUN/vllm-server-0.log and stops it on close.
    Then the server's engine processes are stopped (SIGSTOP: a stuck engine; the API server still answers /health,
    never a completion): the worker's backend finds the server hung (a request timed out, then a 1-token request
    got no answer within hang_timeout_s), kills it, and the call stops naming the server's log (max_retries=0: with
    retries the worker would be replaced, as for a death, tests/test_cluster.py; here that costs a server start)."""
    ray = pytest.importorskip("ray")
    from dataclasses import replace

    from sparta.backends import BackendError
    from sparta.backends.vllm import _healthy
    from sparta.cluster import Cluster
    from sparta.config import Resources, RunConfig, RuntimeConfig

    hf, _ = pools
    timeout, hang = 20.0, 10.0  # a request here takes 1-5 s; a slow one is retried (http.retries), never lost
    c = RunConfig()
    c = replace(c, model=ModelConfig(dtype="float32"),
                runtime=RuntimeConfig(kind="ray", workers=1, worker=Resources(num_cpus=1), max_retries=0),
                backend=replace(c.backend, kind="vllm",
                                http=HTTPConfig(max_concurrency=8, retries=2, timeout_s=timeout),
                                vllm=VLLMConfig(python=str(PYTHON), max_model_len=2048, max_loras=2, max_lora_rank=8,
                                                hang_timeout_s=hang, extra_args=("--max-num-seqs", "16"))))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    cluster = Cluster(c, tmp_path)
    stopped: list[int] = []
    try:
        cluster.set_pool([MemberModel("plain", smollm2, None), MemberModel("x", smollm2, adapters["x"])])
        members = ["plain", "x"] * 2
        prompts = [chat_ids(hf, m, q) for m, q in zip(members, QUESTIONS)]
        kw = dict(max_new_tokens=16, temperature=0.0, top_p=1.0, batch_size=4, seed=0)
        want, got = hf.generate(members, prompts, **kw), cluster.generate(members, prompts, **kw)
        assert sum(w.text == g.text for w, g in zip(want, got)) >= len(got) - 1, [(w.text, g.text)
                                                                                 for w, g in zip(want, got)]

        server = ray.get(cluster.workers[0].__ray_call__.remote(lambda w: w.backend.process.pid))
        stopped = [pid for pid in process_group(server) if pid != server]
        assert stopped, "the server runs no engine process to stop"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        clock = time.monotonic()
        with pytest.raises(BackendError) as error:
            within(timeout + hang + 300, lambda: cluster.generate(members, prompts, **kw), lambda: resume(stopped))
        seconds = time.monotonic() - clock
        assert re.fullmatch(
            r"generate on ray worker 0: the worker lost its server \(the vLLM server hung: \S+/v1/completions "
            r"unreachable or too slow \(TimeoutError: timed out\), and a 1-token request got no answer within "
            r"backend\.vllm\.hang_timeout_s=10 s; its process \(pid \d+\) was killed; its log: "
            rf"{re.escape(str(tmp_path))}/vllm-server-0\.log\); 1 time\(s\) in one call \(runtime\.max_retries=0\)",
            str(error.value)), str(error.value)
        assert seconds < timeout + hang + 30, seconds  # found at the first timeout, not after the retries
        assert gone([server, *stopped], 10), "the hung server was left running"  # killed, not left stopped
        print(f"hung server: found and killed, the call stopped in {seconds:.0f} s")
    finally:
        resume(stopped)
        cluster.close()
        ray.shutdown()
    served = re.search(r"http://127\.0\.0\.1:(\d+)", (tmp_path / "vllm-server-0.log").read_text())
    assert served, "the worker's server did not log where it listened"
    assert not _healthy(int(served.group(1)))  # stopped


def process_group(leader: int) -> list[int]:
    """The live processes of `leader`'s process group (a vLLM server and its engine processes)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader and fields[0] != "Z":
            found.append(int(pid))
    return found


def gone(pids: list[int], seconds: float) -> bool:
    """Have the processes all exited within `seconds` (a killed process takes a moment to free its memory)?"""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def resume(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
