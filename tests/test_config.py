"""Tests for sparta.config: loading, overrides, key/type/value checks, fingerprints and diffs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from sparta.config import (
    RESUMABLE_KEYS,
    ConfigError,
    MemberConfig,
    RunConfig,
    diff_keys,
    dump_yaml,
    fingerprint,
    load_config,
    to_dict,
)

DEMO = Path(__file__).resolve().parents[1] / "sparta" / "configs" / "demo.yaml"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ---- defaults and the packaged demo ----------------------------------------------------------------


def test_defaults_load_and_validate():
    c = load_config(None)
    assert isinstance(c, RunConfig)
    assert c == RunConfig()
    assert len(c.pool.members) >= 3
    assert all(isinstance(m, MemberConfig) for m in c.pool.members)
    assert c.judge.mode in ("logprob", "generate")
    assert 0.0 <= c.arena.alpha <= 1.0


def test_packaged_demo_config_loads():
    assert DEMO.is_file()
    c = load_config(DEMO)
    raw = yaml.safe_load(DEMO.read_text())
    assert c.run_dir == raw["run_dir"]
    assert c.iterations == raw["iterations"]
    assert c.pool.base == raw["pool"]["base"]
    assert [m.name for m in c.pool.members] == [m["name"] for m in raw["pool"]["members"]]
    assert [m.expert for m in c.pool.members] == [m["expert"] for m in raw["pool"]["members"]]
    assert c.data.prompts == raw["data"]["prompts"]
    assert c.judge.mode == raw["judge"]["mode"]


def test_dump_yaml_round_trips(tmp_path):
    c = load_config(None, ["arena.alpha=0.3", "pool.members=[x, y, z]", "seed=7"])
    again = load_config(write_yaml(tmp_path / "c.yaml", yaml.safe_load(dump_yaml(c))))
    assert again == c


# ---- YAML + overrides ------------------------------------------------------------------------------


def test_yaml_file_and_dotted_overrides(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"seed": 5, "arena": {"alpha": 0.1, "k": 2}, "pool": {"base": "tiny"}})
    c = load_config(path, ["arena.alpha=0.3", "pool.members=[x,y,z]", "pool.lora.rank=4"])
    assert c.seed == 5  # from the file
    assert c.arena.alpha == 0.3  # override beats the file
    assert c.arena.k == 2  # untouched sibling keeps the file's value
    assert c.pool.base == "tiny"
    assert c.pool.members == (MemberConfig("x"), MemberConfig("y"), MemberConfig("z"))
    assert c.pool.lora.rank == 4
    assert c.pool.lora.alpha == RunConfig().pool.lora.alpha  # nested siblings keep defaults


def test_override_member_dicts():
    c = load_config(None, ["pool.members=[{name: a, expert: math}, {name: b, model: tiny}, c]"])
    assert c.pool.members == (MemberConfig("a", expert="math"), MemberConfig("b", model="tiny"), MemberConfig("c"))


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="arena.alpha"):
        load_config(None, ["arena.alpha"])


# ---- unknown keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("bogus=1", "bogus"),
    ("arena.bogus=1", "arena.bogus"),
    ("pool.lora.bogus=1", "pool.lora.bogus"),
    ("pool.members=[{name: a, bogus: 1}, b, c]", "pool.members[0].bogus"),
    ("pool.members=[a, b, {name: c, bogus: 1}]", "pool.members[2].bogus"),
])
def test_unknown_key_names_full_dotted_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"'{key}'" in str(e.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"generation": {"max_new_token": 3}})
    with pytest.raises(ConfigError, match=r"'generation\.max_new_token'"):
        load_config(path)


# ---- types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("arena.k=abc", "arena.k"),
    ("iterations=1.5", "iterations"),
    ("generation.temperature=hot", "generation.temperature"),
    ("seed=[1, 2]", "seed"),
    ("data.prompts=3", "data.prompts"),
    ("pool.members=a", "pool.members"),
    ("arena=3", "arena"),
])
def test_wrong_type_names_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(key + ":")


def test_int_accepted_for_float():
    c = load_config(None, ["arena.alpha=1", "generation.temperature=0", "training.lr=1"])
    assert c.arena.alpha == 1.0 and type(c.arena.alpha) is float
    assert c.generation.temperature == 0.0 and type(c.generation.temperature) is float
    assert type(c.training.lr) is float


@pytest.mark.parametrize("override, key", [("arena.k=true", "arena.k"), ("iterations=false", "iterations"),
                                           ("arena.alpha=true", "arena.alpha")])
def test_bool_not_accepted_for_number(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: expected"):
        load_config(None, [override])


def test_float_not_accepted_for_int():
    with pytest.raises(ConfigError, match=r"^pool\.lora\.rank: expected int"):
        load_config(None, ["pool.lora.rank=4.0"])


# ---- values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, fragment", [
    ("pool.members=[a, b]", "at least 3 members"),
    ("pool.members=[a, b, a]", "unique"),
    ("pool.members=[{name: a, adapter: /x, expert: math}, b, c]", "not both"),
    ("judge.mode=foo", "judge.mode"),
    ("arena.alpha=-0.1", "arena.alpha"),
    ("arena.alpha=1.01", "arena.alpha"),
    ("training.batch_size=3", "training.batch_size must be a multiple of training.micro_batch_size"),
    ("pool.members=['a b', c, d]", "names may hold only"),
    ("iterations=0", "iterations"),
    ("reputation.floor=0", "reputation.floor must be > 0"),  # aggregation divides by a sum of reputations
    ("reputation.initial_rating=-5", "reputation.initial_rating must be > 0"),
    ("reputation.initial_rating=5", "reputation.initial_rating (5.0) must be >= reputation.floor (10.0)"),
    ("reputation.weighting=equal", "reputation.weighting must be 'reputation' or 'uniform', got 'equal'"),
    ("model.dtype=float16", "model.dtype"),
    ("backend.kind=tgi", "backend.kind"),
    ("backend.kind=http", "backend.kind=http needs backend.http.base_url"),
    ("training.max_length=300", "training.max_length (300) < generation.max_prompt_tokens"),
    ("judge.max_prompt_tokens=600", "judge.max_prompt_tokens (600) <"),
    ("backend.vllm.release_for_training=true", "release_for_training needs backend.kind=vllm and runtime.kind=local"),
    ("runtime.stall_timeout_s=0", "runtime.stall_timeout_s must be > 0, got 0.0"),
    ("runtime.startup_timeout_s=-1", "runtime.startup_timeout_s must be > 0, got -1.0"),
    ("backend.vllm.hang_timeout_s=0", "backend.vllm.hang_timeout_s must be > 0, got 0.0"),
    ("backend.vllm.startup_timeout_s=0", "backend.vllm.startup_timeout_s must be > 0, got 0.0"),
    ("backend.http.timeout_s=0", "backend.http.timeout_s must be > 0, got 0.0"),
])
def test_bad_values(override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(None, [override])


def test_alpha_bounds_are_inclusive():
    assert load_config(None, ["arena.alpha=0"]).arena.alpha == 0.0
    assert load_config(None, ["arena.alpha=1.0"]).arena.alpha == 1.0


def test_batch_size_multiple_accepted():
    c = load_config(None, ["training.batch_size=6", "training.micro_batch_size=3"])
    assert (c.training.batch_size, c.training.micro_batch_size) == (6, 3)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as e:
        load_config(missing)
    assert str(missing) in str(e.value)


def test_non_mapping_config_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_empty_config_file_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == RunConfig()


# ---- fingerprint and diff --------------------------------------------------------------------------


def test_fingerprint_ignores_resumable_keys():
    assert set(RESUMABLE_KEYS) == {"run_dir", "iterations", "threads", "cache_dir", "eval", "runtime", "tracking"}
    base = load_config(None)
    moved = load_config(None, ["run_dir=/elsewhere", "iterations=9", "threads=1", "cache_dir=/tmp/c",
                               "tracking.report_to=[tensorboard]"])
    assert moved != base
    assert fingerprint(moved) == fingerprint(base)


@pytest.mark.parametrize("override", ["seed=1", "arena.alpha=0.3", "pool.lora.rank=4", "pool.members=[x, y, z]",
                                      "training.pairs=own", "reputation.weighting=uniform"])
def test_fingerprint_changes_with_results_keys(override):
    assert fingerprint(load_config(None, [override])) != fingerprint(load_config(None))


def test_fingerprint_is_stable():
    fp = fingerprint(load_config(None))
    assert fp == fingerprint(load_config(None))
    assert len(fp) == 16 and all(ch in "0123456789abcdef" for ch in fp)


def test_diff_keys_lists_dotted_keys():
    a = to_dict(load_config(None))
    b = to_dict(load_config(None, ["seed=3", "arena.alpha=0.5", "pool.lora.rank=2", "iterations=7"]))
    assert diff_keys(a, b) == ["arena.alpha", "iterations", "pool.lora.rank", "seed"]
    assert diff_keys(a, a) == []


def test_diff_keys_missing_and_list_values():
    assert diff_keys({"x": {"y": 1}}, {"x": {"y": 1, "z": 2}}) == ["x.z"]
    a = to_dict(load_config(None))
    b = to_dict(load_config(None, ["pool.members=[x, y, z]"]))
    assert diff_keys(a, b) == ["pool.members"]


def test_config_is_frozen():
    c = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 3  # type: ignore[misc]


def test_exponent_without_dot_is_a_float():
    """YAML 1.1 reads `5e-5` as a string; a float field still takes it (users write lr=5e-5)."""
    assert load_config(None, ["training.lr=5e-5"]).training.lr == 5e-5
    with pytest.raises(ConfigError, match="training.lr"):
        load_config(None, ["training.lr=fast"])


def test_paper_config_validates_offline():
    """The paper's setting (10 hub adapters on Qwen2.5-7B-Instruct, vLLM, bf16) loads and its lengths nest."""
    from sparta.pipeline import Pipeline

    c = load_config(Path(__file__).parents[1] / "sparta" / "configs" / "paper.yaml")
    assert len(c.pool.members) == 10 and c.backend.kind == "vllm" and c.model.dtype == "bfloat16"
    assert c.training.lr == 1e-6 and c.data.prompts_per_iteration == 1000 and c.iterations == 8
    Pipeline(c).check()  # hub ids are accepted unchecked offline; everything else is checked
