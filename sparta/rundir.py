"""Where every artifact of a run lives, done-markers, and the checks that make resuming safe.

    RUN/config.yaml             the resolved configuration
    RUN/run.json                seed, config fingerprint, package versions, creation time
    RUN/iter_01/prompts.jsonl   the iteration's sampled prompts
    RUN/iter_01/combat.jsonl    journal: one row per duel, appended a round at a time
    RUN/iter_01/samples.jsonl   a baseline's samples instead (method != sparta): text or failure, self-judgment
    RUN/iter_01/pairs.jsonl     preference pairs in trl's conversational format (+ metadata columns)
    RUN/iter_01/reputations.json   (a baseline: the start state, unchanged)
    RUN/iter_01/adapters/NAME/  each member's LoRA adapter after the iteration's DPO
    RUN/iter_01/training/NAME.json   DPO metrics per member
    RUN/iter_01/metrics.json    counts, rates and stage timings
    RUN/iter_01/done/STAGE      markers, written last; a stage with a marker is never redone
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from .config import RESUMABLE_KEYS, RunConfig, diff_keys, dump_yaml, fingerprint, to_dict
from .records import _write_atomic, read_json, write_json_atomic

PACKAGES = ("sparta-align", "torch", "transformers", "peft", "trl", "tokenizers", "safetensors")


class RunDirError(RuntimeError):
    pass


class RunDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def open(cls, config: RunConfig) -> RunDir:
        """Create the run directory, or reopen it after checking it was made with the same config."""
        run = cls(Path(config.run_dir))
        meta_path = run.root / "run.json"
        if meta_path.exists():
            run._check_same_config(config, meta_path)
        elif run.root.exists() and any(run.root.iterdir()):
            raise RunDirError(f"{run.root} exists, is not empty and has no run.json: not a sparta run directory "
                              "(refusing to write into it)")
        else:
            run.root.mkdir(parents=True, exist_ok=True)
            _write_atomic(run.root / "config.yaml", dump_yaml(config))
            write_json_atomic(meta_path, {
                "seed": config.seed, "fingerprint": fingerprint(config), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "versions": package_versions()})
        return run

    def _check_same_config(self, config: RunConfig, meta_path: Path) -> None:
        try:
            meta = read_json(meta_path)
            saved = yaml.safe_load((self.root / "config.yaml").read_text())
        except (ValueError, OSError, yaml.YAMLError) as e:
            raise RunDirError(f"{self.root} is corrupt: {e}") from None
        if not isinstance(meta, dict) or not isinstance(saved, dict) or "fingerprint" not in meta:
            raise RunDirError(f"{self.root} is corrupt: run.json or config.yaml lacks its fields")
        current = json.loads(json.dumps(to_dict(config)))
        defaults = json.loads(json.dumps(to_dict(RunConfig())))
        # A key the saved config lacks was added to sparta after the run was made: fine while it keeps its default.
        keys = [k for k in diff_keys(saved, current) if k.split(".")[0] not in RESUMABLE_KEYS
                and not (_lookup(saved, k) is _MISSING and _lookup(current, k) == _lookup(defaults, k))]
        if keys:
            raise RunDirError(f"{self.root} was made with a different config (differs in: {', '.join(keys) or '?'}); "
                              "use another run_dir or the original config")

    def iteration(self, t: int) -> Path:
        return self.root / f"iter_{t:02d}"

    def is_done(self, t: int, stage: str) -> bool:
        return (self.iteration(t) / "done" / stage).exists()

    def mark_done(self, t: int, stage: str) -> None:
        _write_atomic(self.iteration(t) / "done" / stage, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")

    def adapter_dir(self, t: int, member: str) -> Path:
        return self.iteration(t) / "adapters" / member


def method_of(root: Path) -> str:
    """The run's `method` (sparta or a baseline) from its saved config; sparta for a run made before the key."""
    path = Path(root) / "config.yaml"
    saved = yaml.safe_load(path.read_text()) if path.exists() else None
    return (saved or {}).get("method", "sparta")


_MISSING = object()


def _lookup(data: dict, dotted: str) -> object:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def swap_in(tmp: Path, directory: Path) -> None:
    """Replace `directory` by the complete directory `tmp` in two renames, so a crash never leaves none."""
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
