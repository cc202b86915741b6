"""Methods as equals (sparta.methods): the registry matches the config's names, each method says what it is, and a
new method is one class plus one registry line (the worked example docs/architecture.md points at)."""

from __future__ import annotations

from itertools import groupby

import pytest

from sparta import config as config_module
from sparta import methods
from sparta.baselines.samples import pair_row
from sparta.methods.self_alignment import SelfAlignment
from sparta.pipeline import Pipeline
from sparta.records import read_json, read_jsonl


def test_every_configurable_method_has_a_class_that_says_what_it_is():
    assert list(methods.METHODS) == list(config_module.METHODS)
    for name, cls in methods.METHODS.items():
        assert cls.name == name and cls.loss in ("dpo", "sppo")
        assert isinstance(cls.has_reputations, bool) and isinstance(cls.needs_references, bool)
    assert [n for n, cls in methods.METHODS.items() if cls.has_reputations] == ["sparta"]
    assert [n for n, cls in methods.METHODS.items() if cls.loss == "sppo"] == ["sppo"]


class LongerIsBetter(SelfAlignment):
    """A toy method: each member's longer answer to a prompt over its shorter one (no judge at all)."""

    name = "longer_is_better"

    def samples_per_prompt(self) -> int:
        return 2

    def rows(self, samples, t, engine):
        pairs, skipped = [], {"failed": 0, "same_length": 0}
        for _, group in groupby(samples, key=lambda s: (s.member, s.prompt_id)):
            answered = sorted((s for s in group if s.response.text is not None), key=lambda s: len(s.response.text))
            if len(answered) < 2 or len(answered[0].response.text) == len(answered[-1].response.text):
                skipped["failed" if len(answered) < 2 else "same_length"] += 1
                continue
            short, long = answered[0], answered[-1]
            pairs.append(pair_row(self.name, t, long, long.response.text, short.response.text))
        return pairs, skipped


def test_a_new_method_is_one_class_and_one_registry_line(tiny_config, monkeypatch):
    monkeypatch.setitem(methods.METHODS, LongerIsBetter.name, LongerIsBetter)  # the registry line
    monkeypatch.setattr(config_module, "METHODS", (*config_module.METHODS, LongerIsBetter.name))
    config = tiny_config("method=longer_is_better", "data.prompts_per_iteration=3", "iterations=1")
    root = Pipeline(config).run_all().root
    samples, pairs = read_jsonl(root / "iter_01" / "samples.jsonl"), read_jsonl(root / "iter_01" / "pairs.jsonl")
    assert len(samples) == 3 * 4 * 2 and pairs
    assert all(len(p["chosen"][0]["content"]) > len(p["rejected"][0]["content"]) for p in pairs)
    metrics = read_json(root / "iter_01" / "metrics.json")
    assert metrics["method"] == "longer_is_better" and metrics["pairs"] == len(pairs)
    assert metrics["pairs"] + sum(metrics["skipped"].values()) == 3 * 4
    for m in "abcd":  # each member trained on its own pairs only
        training = read_json(root / "iter_01" / "training" / f"{m}.json")
        assert training["pairs"] == sum(p["member"] == m for p in pairs)
        assert (root / "iter_01" / "adapters" / m / "adapter_model.safetensors").exists()
    assert "has no combat and no reputations" in (root / "report.md").read_text()


def test_an_unknown_method_is_a_config_error(tiny_config):
    with pytest.raises(config_module.ConfigError, match="method must be one of"):
        tiny_config("method=longer_is_better")
