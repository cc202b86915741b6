"""Shared fixtures: a tiny random-init model pool, built in code, so tests exercise the real paths fast."""

import os
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
