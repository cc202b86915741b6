"""Tests for sparta.prompts: built-in pools, user files, and deterministic per-iteration sampling."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from sparta.prompts import BUILTIN, load_prompts, sample_prompts
from sparta.records import Prompt
from sparta.tasks.catalog import TASKS, MissingUserData


@pytest.fixture(scope="module")
def gsm8k() -> list[Prompt]:
    return load_prompts("gsm8k")


# ---- built-in pools --------------------------------------------------------------------------------


SHIPPED = sorted(name for name in BUILTIN if name not in TASKS or not TASKS[name].requires_user_data)


@pytest.mark.parametrize("name", SHIPPED)
def test_builtin_pool_loads(name):
    prompts = load_prompts(name)
    assert prompts
    ids = [p.id for p in prompts]
    assert len(set(ids)) == len(ids)
    for p in prompts:
        assert p.id.startswith(f"{name}:") and len(p.id) > len(name) + 1, p.id
        assert p.text.strip()


@pytest.mark.parametrize("name", sorted(set(BUILTIN) - set(SHIPPED)))
def test_user_data_pool_names_the_missing_file(name):
    with pytest.raises(MissingUserData, match="user_data"):
        load_prompts(name)


def test_gsm8k_size_and_shape(gsm8k):
    assert len(gsm8k) == 7473
    assert gsm8k[0].id == "gsm8k:0"
    assert gsm8k[-1].id == "gsm8k:7472"
    assert all("\n\n" in p.text for p in gsm8k[:20])  # instruction + question


def test_builtin_pool_is_deterministic():
    assert load_prompts("com2") == load_prompts("com2")


# ---- user files ------------------------------------------------------------------------------------


def test_user_jsonl_with_instruction_and_input(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"instruction": "Translate to French.", "input": "cat"},
            {"instruction": "Say hi.", "input": ""},
            {"instruction": "No input field."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a trailing blank line is fine
    prompts = load_prompts(str(path))
    assert [p.id for p in prompts] == ["mine:0", "mine:1", "mine:2"]
    assert [p.text for p in prompts] == ["Translate to French.\n\ncat", "Say hi.", "No input field."]
    assert all(p.source == str(path) for p in prompts)


def test_user_json_list_with_question(tmp_path):
    path = tmp_path / "qs.json"
    path.write_text(json.dumps([{"question": "Why is the sky blue?", "answer": "x"}, {"question": "2+2?"}]))
    prompts = load_prompts(str(path))
    assert [(p.id, p.text) for p in prompts] == [("qs:0", "Why is the sky blue?"), ("qs:1", "2+2?")]


def test_user_file_other_fields_and_strings(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(["plain string", {"text": "t"}, {"prompt": "p"}]))
    assert [p.text for p in load_prompts(str(path))] == ["plain string", "t", "p"]


def test_missing_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(ValueError) as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(ValueError) as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


def test_empty_list_file(tmp_path):
    path = tmp_path / "none.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="empty") as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name, content", [
    ("nofield.jsonl", '{"instruction": "ok"}\n{"answer": "no text field"}\n'),
    ("nofield.json", '[{"query": "x"}]'),
    ("badrow.json", "[42]"),
])
def test_rows_without_known_field(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match="none of the fields") as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name, content", [
    ("bad.jsonl", '{"text": "a"}\n{"text": \n'),
    ("bad.json", '[{"text": "a"},'),
])
def test_invalid_json(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match="not valid JSON") as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


def test_json_not_a_list(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"text": "a"}')
    with pytest.raises(ValueError, match="list") as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


def test_non_string_input_field_is_a_clean_error(tmp_path):
    path = tmp_path / "numinput.jsonl"
    path.write_text('{"instruction": "Add one.", "input": 5}\n')
    with pytest.raises(ValueError) as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


# ---- sampling --------------------------------------------------------------------------------------


def small_pool(n: int) -> list[Prompt]:
    return [Prompt(f"p:{i}", f"prompt {i}", "p") for i in range(n)]


def test_sample_is_deterministic(gsm8k):
    a = sample_prompts(gsm8k, 16, seed=3, iteration=2)
    assert a == sample_prompts(gsm8k, 16, seed=3, iteration=2)
    assert len(a) == 16
    assert a != sample_prompts(gsm8k, 16, seed=4, iteration=2)


def test_iterations_are_disjoint_until_exhausted(gsm8k):
    seen: set[str] = set()
    for t in range(1, 6):
        ids = [p.id for p in sample_prompts(gsm8k, 16, seed=0, iteration=t)]
        assert len(set(ids)) == 16
        assert not seen & set(ids)
        seen |= set(ids)


def test_iterations_partition_a_small_pool():
    pool = small_pool(12)
    ids = [p.id for t in (1, 2, 3) for p in sample_prompts(pool, 4, seed=1, iteration=t)]
    assert sorted(ids) == sorted(p.id for p in pool)


def test_sample_is_shuffled(gsm8k):
    ids = [p.id for p in sample_prompts(gsm8k, 16, seed=0, iteration=1)]
    assert ids != [p.id for p in gsm8k[:16]]


def test_n_larger_than_pool_wraps_into_new_epochs():
    pool = small_pool(20)
    out = sample_prompts(pool, 50, seed=2, iteration=1)
    assert len(out) == 50
    epochs = [out[0:20], out[20:40]]
    for epoch in epochs:
        assert sorted(p.id for p in epoch) == sorted(p.id for p in pool)  # every prompt once per epoch
    assert len({p.id for p in out[40:]}) == 10  # the partial third epoch has no repeats
    assert [p.id for p in epochs[0]] != [p.id for p in epochs[1]]  # each epoch is reshuffled
    assert max(Counter(p.id for p in out).values()) == 3


def test_wrap_across_iterations_is_consistent():
    """Iteration t's slice is the t-th window of one seeded sequence of epochs."""
    pool = small_pool(7)
    long = sample_prompts(pool, 15, seed=5, iteration=1)
    pieces = [p for t in (1, 2, 3) for p in sample_prompts(pool, 5, seed=5, iteration=t)]
    assert pieces == long
