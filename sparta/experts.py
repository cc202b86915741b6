"""`sparta experts`: diverse LoRA experts from one base, by short SFT on different shipped data.

A pool of fresh adapters on one base is N copies of the same model (LoRA B starts at zero). The paper's
pool was experts fine-tuned on different instruction subsets; these recipes do the same with the
license-clean data in the repo. Experts are cached by (base weights, recipe, settings, seed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ExpertsConfig
from .models import ResolvedModel
from .seeding import rng
from .tasks.catalog import DATA, self_instruct_seeds

if TYPE_CHECKING:
    from .backends.hf import LoraShape


def _self_instruct() -> list[tuple[str, str]]:
    return list(self_instruct_seeds().values())


def _math() -> list[tuple[str, str]]:
    rows = [json.loads(line) for name in ("easy", "medium") for line in (DATA / f"math/train_{name}.jsonl").open()]
    return [(r["problem"], r["solution"]) for r in rows]


def _com2() -> list[tuple[str, str]]:
    return [(r["prompt"].strip(), r["gold"]) for r in json.loads((DATA / "com2/train.json").read_text())]


def _normad() -> list[tuple[str, str]]:
    rows = json.loads((DATA / "normad/country_sparta_splits.json").read_text())["train"].values()
    return [(r["instruction"], r["label"].capitalize() + ".") for r in rows]


RECIPES = {
    "self_instruct": _self_instruct,  # general instructions with human-written answers
    "math": _math,  # MATH train levels 1-3, worked solutions
    "com2": _com2,  # commonsense event reasoning, short answers
    "normad": _normad,  # cultural norms: terse yes/no/neutral verdicts
}


def check_recipes(recipes: list[str]) -> None:
    unknown = sorted({r for r in recipes if r not in RECIPES})
    if unknown:
        raise ValueError(f"unknown expert recipe {unknown[0]!r} (known: {', '.join(RECIPES)})")


def expert_examples(recipe: str, n: int, seed: int) -> list[tuple[str, str]]:
    check_recipes([recipe])
    examples = RECIPES[recipe]()
    rng(seed, "expert", recipe).shuffle(examples)
    return examples[:n]


def expert_dir(cache_dir: Path, base: ResolvedModel, recipe: str, settings: dict, seed: int) -> Path:
    key = json.dumps({"base": base.fingerprint, "recipe": recipe, "settings": settings, "seed": seed,
                      "version": 3}, sort_keys=True)
    return Path(cache_dir) / "experts" / f"{recipe}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def build_experts(base: ResolvedModel, recipes: list[str], cache_dir: Path, lora: LoraShape, experts: ExpertsConfig,
                  seed: int, progress=None, store=None) -> dict[str, dict]:
    """Build the experts not yet in the cache (loading the base once; `store`, if given, returns the
    backends.hf.ModelStore to load it into). Returns {recipe: {dir, metrics}}."""
    from .backends.hf import ModelStore

    models = store() if store else ModelStore()
    # an expert trained in bf16 on a GPU is another adapter than one trained in fp32 on a CPU
    settings = {"experts": vars(experts), "lora": vars(lora), "precision": models.precision}
    dirs = {r: expert_dir(cache_dir, base, r, settings, seed) for r in recipes}
    missing = [r for r in recipes if not (dirs[r] / "adapter_config.json").exists()]
    results = {r: {"dir": dirs[r], "cached": r not in missing} for r in recipes}
    if not missing:
        return results
    from .backends import MemberModel
    from .backends.hf import HFTrainer
    from .training import train_sft

    trainer = HFTrainer(lora, seed, models)
    for recipe in missing:
        examples = expert_examples(recipe, experts.steps * experts.batch_size, seed)
        tick = progress and progress(f"expert {recipe}", experts.steps)
        with trainer.slot(MemberModel(recipe, base, None)) as slot:
            metrics = train_sft(slot, recipe, examples, experts, seed, tick)
            slot.save(dirs[recipe])
        (dirs[recipe] / "sft_metrics.json").write_text(json.dumps(metrics, indent=1))
        results[recipe]["metrics"] = metrics
    return results
