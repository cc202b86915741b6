"""Tests for sparta.cli: `validate` checks without building anything, and `run` refuses bad configs early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sparta.cli import DEFAULT_CONFIG, main


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def write_config(tmp_path: Path, cache: Path, **changes) -> Path:
    data = {
        "run_dir": str(tmp_path / "run"),
        "cache_dir": str(cache),
        "pool": {"base": "tiny", "members": ["a", "b", "c"]},
        "data": {"prompts": "gsm8k", "prompts_per_iteration": 4},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_valid_tiny_config_builds_nothing(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid: 3 members, 7473 prompts in pool 'gsm8k'" in out
    assert "base: tiny" in out  # the resolved config is printed
    assert not (cache / "models").exists()
    assert not (cache / "experts").exists()
    assert not (tmp_path / "run").exists()  # validate never creates the run directory


def test_validate_with_overrides_and_expert_members(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache)
    members = "pool.members=[{name: m, expert: math}, {name: s, expert: self_instruct}, {name: c, expert: com2}]"
    assert main(["validate", str(path), members, "arena.alpha=0.4"]) == 0
    out = capsys.readouterr().out
    assert "valid: 3 members" in out
    assert "alpha: 0.4" in out
    assert not (cache / "models").exists() and not (cache / "experts").exists()


def test_validate_packaged_demo_config_is_the_default():
    from sparta import cli

    assert DEFAULT_CONFIG.is_file()
    assert cli.make_parser().parse_args(["validate"]).config == str(DEFAULT_CONFIG)


def test_overrides_without_a_config_apply_to_the_demo(capsys):
    """`sparta validate iterations=1 seed=3`: the first word is an override, not a missing file."""
    assert main(["validate", "iterations=1", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "\niterations: 1\n" in out and "\nseed: 3\n" in out and "run_dir: runs/demo" in out


def test_validate_unknown_key(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache, arena__bogus=1)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "'arena.bogus'" in err


def test_validate_unknown_key_in_override(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache)
    assert main(["validate", str(path), "judge.mood=logprob"]) == 2
    assert "'judge.mood'" in capsys.readouterr().err


def test_validate_missing_config_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_validate_missing_prompt_file(tmp_path, cache, capsys):
    prompts = tmp_path / "missing_prompts.jsonl"
    path = write_config(tmp_path, cache, data__prompts=str(prompts))
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert "invalid" in captured.err and str(prompts) in captured.err
    assert "valid:" not in captured.out


def test_validate_user_prompt_file(tmp_path, cache, capsys):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"q{i}"}) + "\n" for i in range(5)))
    path = write_config(tmp_path, cache, data__prompts=str(prompts))
    assert main(["validate", str(path)]) == 0
    assert f"valid: 3 members, 5 prompts in pool {str(prompts)!r}" in capsys.readouterr().out


def test_validate_missing_local_model(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache)
    assert main(["validate", str(path), "pool.base=/nonexistent/model"]) == 2
    captured = capsys.readouterr()
    assert "invalid" in captured.err and "/nonexistent/model" in captured.err and "does not exist" in captured.err
    assert "valid:" not in captured.out


def test_validate_missing_member_model(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache)
    assert main(["validate", str(path), "pool.members=[a, b, {name: c, model: /nonexistent/other}]"]) == 2
    assert "/nonexistent/other" in capsys.readouterr().err


def test_validate_adapter_without_adapter_config(tmp_path, cache, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    path = write_config(tmp_path, cache)
    assert main(["validate", str(path), f"pool.members=[a, b, {{name: c, adapter: '{adapter}'}}]"]) == 2
    err = capsys.readouterr().err
    assert "invalid" in err and str(adapter) in err and "adapter_config.json" in err
    assert "pool.members[c].adapter" in err


def test_validate_adapter_with_adapter_config(tmp_path, cache, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    path = write_config(tmp_path, cache)
    assert main(["validate", str(path), f"pool.members=[a, b, {{name: c, adapter: '{adapter}'}}]"]) == 0
    assert "valid: 3 members" in capsys.readouterr().out


def test_validate_eval_evaluator(tmp_path, cache, capsys):
    """eval.evaluator: a member's name or a model spec (checked without building it); else an error naming it."""
    path = write_config(tmp_path, cache)
    for ok in ("eval.evaluator=b", "eval.evaluator=null", "eval.evaluator=tiny:3"):
        assert main(["validate", str(path), ok]) == 0
    assert "evaluator: tiny:3" in capsys.readouterr().out  # the last one, in the printed config
    assert not (cache / "models").exists()  # nothing built
    assert main(["validate", str(path), "eval.evaluator=nosuch"]) == 2
    err = capsys.readouterr().err
    assert "eval.evaluator: 'nosuch' is neither a pool member (a, b, c) nor a model spec" in err
    assert main(["validate", str(path), "eval.evaluator=' '"]) == 2
    assert "eval.evaluator must be" in capsys.readouterr().err


def test_validate_unknown_expert_recipe(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache)
    assert main(["validate", str(path), "pool.members=[a, b, {name: c, expert: no_such_recipe}]"]) == 2
    assert "no_such_recipe" in capsys.readouterr().err


def test_run_with_two_members_refused_before_run_dir(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache, pool__members=["a", "b"])
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "at least 3 members" in err
    assert not (tmp_path / "run").exists()
    assert not cache.exists()


def test_run_with_two_members_via_override(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache)
    assert main(["run", str(path), "pool.members=[a, b]"]) == 2
    assert "at least 3 members" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fight"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_experts_builds_once_then_reuses_the_cache(tmp_path, cache, capsys):
    members = [{"name": "m", "expert": "math"}, {"name": "n", "expert": "normad"}, "plain"]
    path = write_config(tmp_path, cache, pool={"base": "tiny", "members": members, "experts": {"steps": 2}})
    assert main(["experts", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fresh adapter" in out and out.count("experts/") == 2
    built = sorted((cache / "experts").iterdir())
    assert [p.name.split("-")[0] for p in built] == ["math", "normad"]
    assert all((p / "adapter_config.json").exists() and (p / "sft_metrics.json").exists() for p in built)
    stamps = [(p / "adapter_model.safetensors").stat().st_mtime_ns for p in built]
    assert main(["experts", str(path)]) == 0  # second call: cached, nothing rebuilt
    assert [(p / "adapter_model.safetensors").stat().st_mtime_ns for p in built] == stamps
    assert not (tmp_path / "run").exists()  # building experts makes no run directory


def test_run_prints_leaderboard_and_resumes_as_a_no_op(tmp_path, cache, capsys):
    path = write_config(tmp_path, cache, iterations=1, generation={"max_new_tokens": 8}, arena={"k": 1})
    assert main(["run", str(path)]) == 0
    first = capsys.readouterr().out
    assert "== iteration 1" in first and "reputation" in first and "run complete" in first
    # where to look next, each printed path a file the run wrote (the browser: written whole at the run's end)
    run = tmp_path / "run"
    assert f"report:   {run / 'report.md'}" in first and (run / "report.md").exists()
    assert f"duels:    {run / 'view' / 'index.html'}" in first and (run / "view" / "index.html").exists()
    assert main(["run", str(path)]) == 0
    assert "== iteration 1" in capsys.readouterr().out  # the summary is shown again, nothing is recomputed


def test_experts_trained_at_another_precision_are_other_experts(tmp_path, capsys):
    """The experts cache key holds the precision and device kind: an fp32 CPU expert is not reused for bf16."""
    cache = tmp_path / "cache"
    members = [{"name": "m", "expert": "normad"}, "plain", "other"]
    for dtype in ("float32", "bfloat16"):
        path = write_config(tmp_path, cache, pool={"base": "tiny", "members": members, "experts": {"steps": 1}},
                            model={"dtype": dtype})
        assert main(["experts", str(path)]) == 0
    built = sorted((cache / "experts").iterdir())
    assert len(built) == 2
    assert {json.loads((p / "sft_metrics.json").read_text())["steps"] for p in built} == {1}
