"""The vLLM backend: a vLLM OpenAI-compatible server that sparta starts, feeds adapters and stops.

vLLM runs in its own Python environment (`backend.vllm.python`; `make vllm-env` builds `.venv-vllm` on CPU,
docs/backends.md says how on GPUs), because it pins transformers below the range this project uses. Requests go
through `HTTPBackend`, which loads each (member, adapter directory) under a new LoRA name, so a member's adapter of
iteration t is never served from a cache of iteration t - 1.

The server starts with `--generation-config vllm`: by default vLLM, like transformers, applies the sampling
defaults a model ships (Qwen2.5: temperature 0.7, top_p 0.8, repetition_penalty 1.05) to every request that
does not set them; sparta's settings must be the only ones.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from . import BackendError, MemberModel, ServerLost, single_base
from .openai_http import HTTPBackend

log = logging.getLogger(__name__)
SERVED_BASE = "base"


class VLLMBackend(HTTPBackend):
    kind = "vllm"

    def __init__(self, members: list[MemberModel], vllm, http, model, log_path: Path | None = None):
        self.vcfg, self.base = vllm, single_base(members, self.kind)  # before the server starts
        self.port = vllm.port or _free_port()
        self.log_path = Path(log_path) if log_path else None
        self.process = None
        self.targets = _lora_targets(members)
        self._start(model)
        try:
            super().__init__(members, replace(http, base_url=f"http://127.0.0.1:{self.port}/v1"), SERVED_BASE,
                             window=vllm.max_model_len)
        except BaseException:
            self.close()
            raise

    # ---- the server --------------------------------------------------------------------------------

    def _command(self, model) -> list[str]:
        v = self.vcfg
        return [v.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.base.source,
                "--served-model-name", SERVED_BASE, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", precision(model.dtype), "--max-model-len", str(v.max_model_len),
                "--generation-config", "vllm",
                "--enable-lora", "--max-loras", str(v.max_loras), "--max-lora-rank", str(v.max_lora_rank),
                "--gpu-memory-utilization", str(v.gpu_memory_utilization), "--seed", "0",
                # the adapters' own modules: a LoRA-wrapped lm_head breaks prompt_logprobs (vLLM #16668)
                "--lora-target-modules", *self.targets, *v.extra_args]

    def _start(self, model) -> None:
        if not Path(self.vcfg.python).exists():
            raise BackendError(f"backend.vllm.python: {self.vcfg.python} does not exist; build the vLLM "
                               "environment with `make vllm-env` (CPU) or see docs/backends.md")
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", HF_HUB_OFFLINE=os.environ.get(
            "HF_HUB_OFFLINE", "1"), VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
            VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"))
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        clock = time.perf_counter()
        self.process = subprocess.Popen(self._command(model), env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=die_with_parent)
        deadline = clock + self.vcfg.startup_timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise BackendError(f"the vLLM server exited with code {self.process.returncode} while starting"
                                   f"{self._log()}")
            if _healthy(self.port):
                log.info("vLLM server up on port %d in %.1f s", self.port, time.perf_counter() - clock)
                return
            time.sleep(0.5)
        self.close()
        raise BackendError(f"the vLLM server did not answer within {self.vcfg.startup_timeout_s} s{self._log()}")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                _kill(self.process)
        self.process = None

    def _post(self, path: str, payload: dict | None) -> dict:
        process = self.process
        if process is not None and process.poll() is not None:
            raise ServerLost(f"the vLLM server died (exit code {process.returncode}){self._log()}")
        return super()._post(path, payload)

    def _unanswered(self, error: str) -> None:
        """Called by HTTPBackend when a request timed out or found no server: a dead or hung server is lost (raises
        ServerLost), a slow one is retried as before. A hung server is killed: stopped, it would hold its GPU."""
        process = self.process
        if process is None:  # closed
            return
        if process.poll() is not None:
            raise ServerLost(f"the vLLM server died (exit code {process.returncode}){self._log()}")
        if self._answers():
            return
        _kill(process)
        raise ServerLost(f"the vLLM server hung: {error}, and a 1-token request got no answer within "
                         f"backend.vllm.hang_timeout_s={self.vcfg.hang_timeout_s:g} s; its process (pid {process.pid}) "
                         f"was killed{self._log()}")

    def _answers(self) -> bool:
        """Does the server answer a 1-token completion? Its engine included: vLLM's /health answers while the engine
        process is stuck."""
        body = json.dumps({"model": SERVED_BASE, "prompt": [0], "max_tokens": 1}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.vcfg.hang_timeout_s) as r:
                r.read()
            return True
        except urllib.error.HTTPError:  # an answer, if not a completion
            return True
        except (OSError, http.client.HTTPException):
            return False

    def _log(self) -> str:
        return f"; its log: {self.log_path}" if self.log_path else ""


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the server and its engine processes (its own process group): a hung or stopped one ignores SIGTERM."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def precision(dtype: str) -> str:
    """`model.dtype` as vLLM's --dtype: the precision the HF backend and training use for the same setting on this
    machine (auto: bf16 on a GPU that supports it, else fp32). vLLM's own `auto` would keep a converted model's fp32
    on a GPU, so judges and trainer would read the same model at two precisions."""
    import torch

    from .hf import resolve_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return str(resolve_dtype(dtype, device)).removeprefix("torch.")


def _lora_targets(members: list[MemberModel]) -> list[str]:
    """The modules the pool's adapters adapt (sparta's own adapters: every linear layer of the blocks)."""
    targets: set[str] = set()
    for m in members:
        if m.adapter_dir is not None:
            found = json.loads((Path(m.adapter_dir) / "adapter_config.json").read_text()).get("target_modules")
            targets |= set([found] if isinstance(found, str) else found or [])
    return sorted(targets - {"all-linear"}) or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def die_with_parent() -> None:
    """Run in the server's process before it starts: the kernel sends it SIGTERM when sparta's process dies, however
    it dies (a SIGKILLed run, or a Ray worker killed and replaced, would otherwise leave it holding the GPU)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
