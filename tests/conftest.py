"""Shared fixtures: a tiny random-init model pool, built in code, so tests exercise the real paths fast."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers

from sparta.config import load_config

# Tiny models run fastest single-threaded, and CI machines are shared: one thread keeps tests quick and steady.
torch.set_num_threads(1)


def pytest_report_header(config):
    return f"transformers {transformers.__version__} from {Path(transformers.__file__).parent}"


def pytest_configure(config):
    """`make test-lower` names the transformers it installed (SPARTA_TRANSFORMERS): a run that would import
    another one (a broken path, a stale folder) stops before any test instead of passing on the wrong end."""
    expected = os.environ.get("SPARTA_TRANSFORMERS")
    if expected and transformers.__version__ != expected:
        raise pytest.UsageError(f"SPARTA_TRANSFORMERS={expected} but transformers {transformers.__version__} "
                                f"is imported from {transformers.__file__}")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for the tests of a module, restored after them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config(tmp_path, model_cache):
    """A factory: a small, fast run config on the tiny model, with dotted overrides."""

    def make(*overrides: str, run_dir: Path | None = None):
        return tiny(run_dir or tmp_path / "run", model_cache, *overrides)

    return make


def tiny(run_dir: Path, model_cache: Path, *overrides: str):
    """The tiny run config (for fixtures of a wider scope than tiny_config's)."""
    base = [
        f"run_dir={run_dir}", f"cache_dir={model_cache}", "iterations=2",
        "pool.base=tiny", "pool.members=[a, b, c, d]",
        "data.prompts=self_instruct", "data.prompts_per_iteration=6",
        "generation.max_new_tokens=12", "generation.batch_size=8", "generation.max_prompt_tokens=200",
        "arena.round_size=4",
        "judge.batch_size=8", "training.max_length=256", "training.lr=0.01",
    ]
    return load_config(None, base + list(overrides))


def within(seconds: float, fn, release=None):
    """fn() in a thread that must end within `seconds` (pytest-timeout is not a dependency): past that, release()
    continues the processes the test stopped, so that the thread can end, and the test fails, as the code under test
    would have hung. Returns fn's value and its wall time."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    clock = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if release:
            release()
        thread.join(300)
        pytest.fail(f"hung: still running {seconds} s after it started")
    if "error" in box:
        raise box["error"]
    return box["value"], time.monotonic() - clock


class Signaller:
    """Sends `sig` to the first process descended from this one (so never another user's) whose command line starts
    with `title` (Ray names a busy actor process ray::Class.method), from a thread, while the test goes on; then
    notes when it is gone. On exit, a process it stopped that is still there is continued (nothing left stopped)."""

    def __init__(self, title: str, sig: int = signal.SIGKILL):
        self.title, self.sig = title.encode(), sig
        self.pid = self.at = self.gone = None
        self.stop = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while not self.stop and self.pid is None:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if f.read().startswith(self.title) and descends(int(pid)):
                            os.kill(int(pid), self.sig)
                            self.pid, self.at = int(pid), time.monotonic()
                            break
                except OSError:
                    continue
            time.sleep(0.005)
        while not self.stop and self.pid is not None and alive(self.pid):
            time.sleep(0.05)
        if self.pid is not None and not alive(self.pid):
            self.gone = time.monotonic()

    def release(self):
        if self.pid is not None and self.sig == signal.SIGSTOP and alive(self.pid):
            os.kill(self.pid, signal.SIGCONT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.thread.join(30)  # a process signalled is given time to go (Ray SIGKILLs a stopped one after ~5 s)
        self.stop = True
        self.thread.join()
        self.release()


def alive(pid: int) -> bool:
    """Is `pid` a process (not yet reaped zombies count as gone)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descends(pid: int) -> bool:
    """Is `pid` this process's descendant (a Ray worker of a cluster this process started, a server it runs)?"""
    while pid > 1:
        if pid == os.getpid():
            return True
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return False
