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
    RUN/initial_reputations.json   the start state when reputation.initial is a task (kept for resuming)
    RUN/eval/iter_00/TASK-SPLIT.json   evaluation of the pool after iteration t (0: before any)
    RUN/report.md, RUN/ratings.json, RUN/*.png   the report (rebuilt from the files above at any time)
    RUN/view/index.html         `sparta view`: the duel browser (sparta/viewer.py; rebuilt whole at any time)
    RUN/tracking.json           experiment tracking: each tracker's run id and the stages it was given
    RUN/tracking/               TensorBoard logs and MLflow's local store (tracking.logging_dir = "")

`RunDir` is the one place that spells these paths; everything else asks it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from .config import RESUMABLE_KEYS, RunConfig, diff_keys, dump_yaml, fingerprint, load_config, to_dict
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
            _write_atomic(run.config_file, dump_yaml(config))
            write_json_atomic(meta_path, {
                "seed": config.seed, "fingerprint": fingerprint(config), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "versions": package_versions()})
        return run

    def _check_same_config(self, config: RunConfig, meta_path: Path) -> None:
        try:
            meta = read_json(meta_path)
            saved = yaml.safe_load(self.config_file.read_text())
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

    # ---- paths ----
    def iteration(self, t: int) -> Path:
        return self.root / f"iter_{t:02d}"

    def prompts(self, t: int) -> Path:
        return self.iteration(t) / "prompts.jsonl"

    def journal(self, t: int) -> Path:
        """The combat journal: one row per duel."""
        return self.iteration(t) / "combat.jsonl"

    def samples(self, t: int) -> Path:
        return self.iteration(t) / "samples.jsonl"

    def pairs(self, t: int) -> Path:
        return self.iteration(t) / "pairs.jsonl"

    def reputations(self, t: int) -> Path:
        return self.iteration(t) / "reputations.json"

    def metrics(self, t: int) -> Path:
        return self.iteration(t) / "metrics.json"

    def training(self, t: int, member: str) -> Path:
        return self.iteration(t) / "training" / f"{member}.json"

    def adapter_dir(self, t: int, member: str) -> Path:
        return self.iteration(t) / "adapters" / member

    def evaluation(self, t: int, task: str, split: str) -> Path:
        return self.root / "eval" / f"iter_{t:02d}" / f"{task}-{split}.json"

    def evaluations(self) -> list[Path]:
        return sorted(self.root.glob("eval/iter_*/*.json"))

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    def config(self, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """The run's own config (config.yaml), with `overrides`, and run_dir where the directory is now."""
        if not self.config_file.exists():
            raise RunDirError(f"{self.root} is not a sparta run directory (no config.yaml)")
        return load_config(str(self.config_file), [*overrides, f"run_dir={self.root}"])

    @property
    def view(self) -> Path:
        return self.root / "view"

    @property
    def tracking_state(self) -> Path:
        return self.root / "tracking.json"

    @property
    def tracking_dir(self) -> Path:
        return self.root / "tracking"

    @property
    def initial_reputations(self) -> Path:
        return self.root / "initial_reputations.json"

    # ---- done-markers ----
    def is_done(self, t: int, stage: str) -> bool:
        return (self.iteration(t) / "done" / stage).exists()

    def mark_done(self, t: int, stage: str) -> None:
        _write_atomic(self.iteration(t) / "done" / stage, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")

    def done_iterations(self, stage: str = "iteration") -> list[int]:
        """The iterations whose `stage` is done, in order."""
        return sorted(int(p.parent.parent.name[len("iter_"):]) for p in self.root.glob(f"iter_*/done/{stage}"))


def method_of(root: Path) -> str:
    """The run's `method` (sparta or a baseline) from its saved config; sparta for a run made before the key."""
    path = RunDir(root).config_file
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
