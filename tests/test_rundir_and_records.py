"""Tests for sparta.rundir (create/reopen checks) and sparta.records (JSONL journal, record round trips)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sparta.config import RunConfig, fingerprint, load_config
from sparta.records import (
    Duel,
    Judgment,
    Prompt,
    Response,
    append_jsonl,
    read_json,
    read_jsonl,
    to_json,
    write_json_atomic,
    write_jsonl_atomic,
)
from sparta.rundir import RunDir, RunDirError


def config_for(run_dir: Path, *overrides: str) -> RunConfig:
    return load_config(None, [f"run_dir={run_dir}", *overrides])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- RunDir ----------------------------------------------------------------------------------------


def test_open_creates_config_and_run_json(tmp_path):
    root = tmp_path / "nested" / "run"
    c = config_for(root, "seed=11")
    run = RunDir.open(c)
    assert run.root == root
    assert sorted(p.name for p in root.iterdir()) == ["config.yaml", "run.json"]
    meta = read_json(root / "run.json")
    assert meta["seed"] == 11
    assert meta["fingerprint"] == fingerprint(c)
    assert isinstance(meta["versions"], dict) and "sparta-align" in meta["versions"]
    assert "created" in meta
    saved = load_config(root / "config.yaml")
    assert saved == c


def test_reopen_same_config(tmp_path):
    c = config_for(tmp_path / "run")
    RunDir.open(c)
    before = snapshot(tmp_path / "run")
    run = RunDir.open(c)
    assert run.root == tmp_path / "run"
    assert snapshot(tmp_path / "run") == before


@pytest.mark.parametrize("override", ["iterations=9", "threads=1", "cache_dir=/tmp/other-cache",
                                      "tracking.report_to=[tensorboard, mlflow]", "tracking.logging_dir=/tmp/logs"])
def test_reopen_with_resumable_key_changed(tmp_path, override):
    RunDir.open(config_for(tmp_path / "run"))
    before = snapshot(tmp_path / "run")
    RunDir.open(config_for(tmp_path / "run", override))
    assert snapshot(tmp_path / "run") == before


@pytest.mark.parametrize("override, key", [("seed=1", "seed"), ("arena.alpha=0.3", "arena.alpha"),
                                           ("pool.lora.rank=4", "pool.lora.rank")])
def test_reopen_with_different_config_refused(tmp_path, override, key):
    root = tmp_path / "run"
    run = RunDir.open(config_for(root))
    run.mark_done(1, "prompts")
    before = snapshot(root)
    with pytest.raises(RunDirError) as e:
        RunDir.open(config_for(root, override, "iterations=5"))
    message = str(e.value)
    assert key in message
    assert "iterations" not in message  # a resumable key is not reported as a difference
    assert snapshot(root) == before  # nothing overwritten, nothing added


def test_non_empty_directory_without_run_json_refused(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="no run.json"):
        RunDir.open(config_for(root))
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    assert (root / "notes.txt").read_text() == "mine"


def test_empty_existing_directory_accepted(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    RunDir.open(config_for(root))
    assert (root / "run.json").is_file() and (root / "config.yaml").is_file()


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", '{"seed": 0}'])
def test_corrupt_run_json_reported(tmp_path, content):
    c = config_for(tmp_path / "run")
    RunDir.open(c)
    (tmp_path / "run" / "run.json").write_text(content)
    with pytest.raises(RunDirError, match="corrupt"):
        RunDir.open(c)


def test_missing_config_yaml_reported_corrupt(tmp_path):
    c = config_for(tmp_path / "run")
    RunDir.open(c)
    (tmp_path / "run" / "config.yaml").unlink()
    with pytest.raises(RunDirError, match="corrupt"):
        RunDir.open(c)


def test_done_markers_and_paths(tmp_path):
    run = RunDir.open(config_for(tmp_path / "run"))
    assert run.iteration(3) == tmp_path / "run" / "iter_03"
    assert run.adapter_dir(2, "math") == tmp_path / "run" / "iter_02" / "adapters" / "math"
    assert not run.is_done(1, "combat")
    run.mark_done(1, "combat")
    assert run.is_done(1, "combat")
    assert not run.is_done(2, "combat") and not run.is_done(1, "pairs")


# ---- JSONL -----------------------------------------------------------------------------------------

ROWS = [{"a": 1, "text": "hello\nworld"}, {"b": [1, 2, {"c": None}]}, {"u": "caf\u00e9 \u2713"}]


def test_write_read_jsonl_round_trip(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl_atomic(path, ROWS)
    assert read_jsonl(path) == ROWS
    assert read_jsonl(path, journal=True) == ROWS
    assert path.read_text().count("\n") == len(ROWS)
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temp file left behind


def test_write_jsonl_empty_and_missing(tmp_path):
    path = tmp_path / "empty.jsonl"
    write_jsonl_atomic(path, [])
    assert read_jsonl(path) == []
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_append_jsonl_accumulates(tmp_path):
    path = tmp_path / "j.jsonl"
    append_jsonl(path, ROWS[:2])
    append_jsonl(path, ROWS[2:])
    assert read_jsonl(path) == ROWS


def test_journal_drops_and_truncates_torn_last_line(tmp_path):
    path = tmp_path / "combat.jsonl"
    append_jsonl(path, ROWS[:2])
    intact = path.read_bytes()
    with open(path, "a") as f:
        f.write('{"torn": tr')  # a kill mid-write
    assert read_jsonl(path, journal=True) == ROWS[:2]
    assert path.read_bytes() == intact  # truncated back to the last complete line
    append_jsonl(path, [{"next": 3}])
    assert read_jsonl(path) == [*ROWS[:2], {"next": 3}]  # strict read: the file is valid again


def test_non_journal_read_of_torn_file_raises(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(path, ROWS[:1])
    with open(path, "a") as f:
        f.write('{"torn"')
    before = path.read_bytes()
    with pytest.raises(ValueError, match="incomplete"):
        read_jsonl(path)
    assert path.read_bytes() == before  # a strict read never modifies the file


def test_corrupt_middle_line_names_line_number(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\nnot json\n{"d": 4}\n')
    for journal in (False, True):
        with pytest.raises(ValueError, match=r"rows\.jsonl:3: not valid JSON"):
            read_jsonl(path, journal=journal)


def test_journal_truncation_with_non_ascii_rows(tmp_path):
    path = tmp_path / "combat.jsonl"
    path.write_text(json.dumps({"t": "caf\u00e9"}, ensure_ascii=False) + "\n" + '{"torn', encoding="utf-8")
    assert read_jsonl(path, journal=True) == [{"t": "caf\u00e9"}]
    append_jsonl(path, [{"next": 1}])
    assert read_jsonl(path) == [{"t": "caf\u00e9"}, {"next": 1}]


def test_read_json_corrupt_names_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"k": [1, 2]})
    assert read_json(path) == {"k": [1, 2]}
    path.write_text("{")
    with pytest.raises(ValueError, match=r"x\.json: not valid JSON"):
        read_json(path)


# ---- records ---------------------------------------------------------------------------------------


def make_duel() -> Duel:
    return Duel(
        iteration=2, round=1, index=17, prompt_id="gsm8k:5", prompt="What is 2+2?", a="math", b="com2",
        response_a=Response("math", "4", finish_reason="stop", n_tokens=3),
        response_b=Response("com2", None, error="boom", finish_reason="", prompt_shortened=True),
        judgments=[Judgment("normad", "a", 7.5, "ok", raw='{"7": 0.5, "8": 0.5}'),
                   Judgment("normad", "b", None, "unparsed", raw="meh", prompt_shortened=True)],
        weights={"normad": 101.5}, score_a=7.5, score_b=None, outcome="a",
        update={"ratings": {"math": 101.0, "com2": 99.0}, "K": 10.0},
    )


def test_duel_round_trip_through_json():
    duel = make_duel()
    row = json.loads(json.dumps(to_json(duel)))
    back = Duel.from_dict(row)
    assert back == duel
    assert isinstance(back.response_a, Response) and isinstance(back.judgments[0], Judgment)
    assert to_json(back) == row


def test_duel_round_trip_through_journal(tmp_path):
    path = tmp_path / "combat.jsonl"
    duels = [make_duel(), Duel(1, 0, 0, "p:0", "p", "x", "y", Response("x", "t"), Response("y", "u"))]
    append_jsonl(path, [to_json(d) for d in duels])
    assert [Duel.from_dict(r) for r in read_jsonl(path, journal=True)] == duels


def test_prompt_round_trip():
    p = Prompt("gsm8k:3", "text", "gsm8k")
    assert Prompt(**to_json(p)) == p


def test_saved_config_yaml_is_plain_yaml(tmp_path):
    RunDir.open(config_for(tmp_path / "run", "pool.members=[x, y, z]"))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["pool"]["members"] == [{"name": n, "model": None, "adapter": None, "expert": None}
                                        for n in ("x", "y", "z")]


def test_run_made_before_a_config_key_existed_still_resumes(tmp_path):
    """A newer sparta adds `data.user_data` (default ""): a run whose saved config lacks it reopens, unless the
    new key is set to something else."""
    config = load_config(None, [f"run_dir={tmp_path / 'old'}"])
    run = RunDir.open(config)
    saved = yaml.safe_load((run.root / "config.yaml").read_text())
    del saved["data"]["user_data"]
    (run.root / "config.yaml").write_text(yaml.safe_dump(saved))
    RunDir.open(config)
    with pytest.raises(RunDirError, match="data.user_data"):
        RunDir.open(load_config(None, [f"run_dir={tmp_path / 'old'}", "data.user_data=/x"]))
