"""The OpenAI-compatible HTTP backend against real local servers (stdlib, on loopback) that are down, slow, flaky or
malformed: each failure is a failed row with its reason, never a response or a score; and the API key."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sparta.backends import Failure, MemberModel
from sparta.backends.openai_http import HTTPBackend
from sparta.config import HTTPConfig
from sparta.models import resolve_model


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs with server.replies[i] (status, body or body(request), delay) in turn; the last one repeats."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        import time

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.headers.get("Authorization"), body))
        status, reply, delay = self.server.replies[min(len(self.server.seen), len(self.server.replies)) - 1]
        reply = reply(body) if callable(reply) else reply  # a reply made from the request
        time.sleep(delay)
        data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        data = json.dumps(self.server.models).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.seen, httpd.replies, httpd.models = [], [], {"data": []}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    return MemberModel("a", resolve_model("tiny", tmp_path_factory.mktemp("cache")), None)


def backend(member, url, **kw):
    cfg = HTTPConfig(base_url=url, retries=kw.pop("retries", 1), timeout_s=kw.pop("timeout_s", 5.0),
                     served_base=kw.pop("served_base", "base"), **kw)
    return HTTPBackend([member], cfg)


def url(server):
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def gen(be, n=1):
    return be.generate(["a"] * n, [[5, 6, 7]] * n, max_new_tokens=4, temperature=0.7, top_p=0.9, batch_size=4, seed=0)


def ok_completion(text="fine", **extra):
    return {"choices": [{"text": text, "finish_reason": "stop", "token_ids": [1, 2], **extra}]}


def test_a_server_that_is_down_fails_rows_with_the_reason(member):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    [out] = gen(backend(member, f"http://127.0.0.1:{port}/v1"))
    assert out.text is None and "unreachable or too slow" in out.error
    lp = backend(member, f"http://127.0.0.1:{port}/v1").next_token_logprobs(["a"], [[5, 6]], [3], last=1,
                                                                            batch_size=1)
    assert isinstance(lp[0], Failure) and "unreachable" in lp[0].error


def test_a_slow_server_times_out(member, server):
    server.replies = [(200, ok_completion(), 1.5)]
    [out] = gen(backend(member, url(server), timeout_s=0.3, retries=0))
    assert out.text is None and "too slow" in out.error


def test_transient_errors_are_retried_then_succeed(member, server):
    server.replies = [(503, "overloaded", 0), (429, "slow down", 0), (200, ok_completion("hello"), 0)]
    [out] = gen(backend(member, url(server), retries=3))
    assert out.text == "hello" and out.n_tokens == 2 and out.finish_reason == "stop" and len(server.seen) == 3


def test_a_client_error_is_not_retried(member, server):
    server.replies = [(400, "bad request: max_tokens too large", 0)]
    [out] = gen(backend(member, url(server), retries=3))
    assert out.text is None and "HTTP 400" in out.error and "max_tokens too large" in out.error
    assert len(server.seen) == 1


@pytest.mark.parametrize("reply", ["<html>oops</html>", {"choices": []}, {"choices": [{"finish_reason": "stop"}]},
                                   {"error": "model not found"}])
def test_malformed_output_fails_the_row(member, server, reply):
    server.replies = [(200, reply, 0)]
    [out] = gen(backend(member, url(server)))
    assert out.text is None and out.error


def test_logprobs_a_server_does_not_return_are_failures_not_scores(member, server):
    server.replies = [(200, ok_completion(), 0)]  # no logprobs, no prompt_logprobs: not a vLLM server
    be = backend(member, url(server))
    [row] = be.next_token_logprobs(["a"], [[5, 6, 7]], [3, 4], last=1, batch_size=1)
    assert isinstance(row, Failure) and "logprob_token_ids" in row.error
    [[value]] = be.continuation_logprobs("a", [[5, 6]], [[[7, 8]]], batch_size=1)
    assert isinstance(value, Failure)


def test_judge_logprobs_are_read_by_token_id_one_request_per_position(member, server):
    """Prompt [5, 6], candidates 3 and 4, the last 2 positions: requests for [5] and [5, 6] asking for exactly
    those tokens' log-probs; the reply's keys are token ids ("token_id:N"), never decoded text."""
    first = {"logprobs": {"top_logprobs": [{"token_id:3": -0.5, "token_id:4": -2.25, "token_id:9": -0.1}]}}
    second = {"logprobs": {"top_logprobs": [{"token_id:3": -1.5, "token_id:4": -0.75}]}}
    server.replies = [(200, ok_completion(**first), 0), (200, ok_completion(**second), 0)]
    [row] = backend(member, url(server)).next_token_logprobs(["a"], [[5, 6]], [3, 4], last=2, batch_size=1)
    assert row == [[-0.5, -2.25], [-1.5, -0.75]]
    assert [body["prompt"] for _, body in server.seen] == [[5], [5, 6]]
    assert all(body["logprob_token_ids"] == [3, 4] and body["max_tokens"] == 1 for _, body in server.seen)


def test_a_score_token_missing_from_the_reply_fails_the_judgment(member, server):
    server.replies = [(200, ok_completion(logprobs={"top_logprobs": [{"token_id:3": -0.5}]}), 0)]
    [row] = backend(member, url(server)).next_token_logprobs(["a"], [[5, 6]], [3, 4], last=1, batch_size=1)
    assert isinstance(row, Failure) and "[4]" in row.error


def test_the_api_key_comes_from_the_environment_and_is_not_kept(member, server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    server.replies = [(200, ok_completion(), 0)]
    be = backend(member, url(server), api_key_env="MY_KEY")
    gen(be)
    assert server.seen[0][0] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in repr(vars(be)) + repr(vars(be.cfg))


def test_adapters_are_loaded_under_new_names_and_the_base_is_found(member, server, tmp_path):
    """A member with an adapter directory: loaded into the server at run time under a name new to its directory
    and weights, requests then name it; the base member asks the server which model is the base."""
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_model.safetensors").write_bytes(b"x")
    server.models = {"data": [{"id": "Qwen/Qwen2.5-7B-Instruct", "parent": None},
                              {"id": "old-lora", "parent": "Qwen/Qwen2.5-7B-Instruct"}]}
    server.replies = [(200, "Success: LoRA adapter loaded", 0), (200, ok_completion("as b"), 0),
                      (200, ok_completion("as a"), 0)]
    b = MemberModel("b", member.base, tmp_path / "ad")
    be = backend(member, url(server), served_base="")
    be.set_pool([b])
    load = server.seen[0][1]
    assert load["lora_path"] == str((tmp_path / "ad").resolve()) and load["lora_name"].startswith("b-")
    outs = be.generate(["b", "a"], [[5], [6]], max_new_tokens=2, temperature=0.0, top_p=1.0, batch_size=2, seed=0)
    models = {body["prompt"][0]: body["model"] for _, body in server.seen[1:]}
    assert models == {5: load["lora_name"], 6: "Qwen/Qwen2.5-7B-Instruct"} and all(o.text for o in outs)


def test_a_server_that_cannot_load_adapters_stops_the_run(member, server, tmp_path):
    """Serving the previous iteration's adapter instead would be silently wrong: this is a BackendError."""
    from sparta.backends import BackendError

    (tmp_path / "ad").mkdir()
    server.replies = [(404, "Not Found", 0)]
    with pytest.raises(BackendError, match="could not load adapter"):
        backend(member, url(server)).set_pool([MemberModel("b", member.base, tmp_path / "ad")])


def test_shards_ask_for_their_own_rows_each_seeded_as_in_one_call(member, server):
    """sparta.cluster spreads a call over workers as shards (i, k): rows i mod k, each with its row's seed."""
    from sparta.cluster import merge

    server.replies = [(200, lambda body: ok_completion(f"seed {body['seed']}"), 0)]
    be = backend(member, url(server))
    kw = dict(max_new_tokens=4, temperature=0.7, top_p=0.9, batch_size=4, seed=10)
    whole = be.generate(["a"] * 5, [[5, 6, i] for i in range(5)], **kw)
    parts = [be.generate(["a"] * 5, [[5, 6, i] for i in range(5)], shard=(i, 2), **kw) for i in range(2)]
    assert [g.text for g in whole] == [f"seed {10 + i}" for i in range(5)]
    assert merge(parts, "generate") == whole
    assert len(server.seen) == 10  # 5 for the whole call, then each row once over the two shards


def test_a_vllm_server_dies_with_the_process_that_started_it():
    """A SIGKILLed sparta run, or a Ray worker killed and replaced, must not leave its vLLM server holding the GPU:
    the server's process is started with die_with_parent (here a sleeping stand-in for the server)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import subprocess, sys, time\n"
              "from sparta.backends.vllm import die_with_parent\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True,"
              " preexec_fn=die_with_parent)\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def alive() -> bool:
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is dead
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while alive() and time.time() < deadline:
        time.sleep(0.05)
    assert not alive()
