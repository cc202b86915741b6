"""`sparta export` on a tiny run: the adapter and the merged model load with peft/transformers alone and compute what
the run's own adapter computes, `best` picks on dev, the card carries the evaluation files' numbers and the citation,
the pairs come back exactly, writes are whole or nothing, and a push without the hub fails clearly, token-free."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from sparta.cli import main
from sparta.eval_results import EvalFile
from sparta.export import BIBTEX, decode_row
from sparta.records import read_jsonl, write_json_atomic
from tests.conftest import tiny

TOKEN = "secret-test-token"


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_cache):
    """Two iterations of a 3-member tiny run, evaluated on medqa dev and test (2 items) after each."""
    from sparta.pipeline import Pipeline

    config = tiny(tmp_path_factory.mktemp("export") / "run", model_cache, "pool.members=[a, b, c]", "arena.k=1",
                  "data.prompts_per_iteration=4", "eval.tasks=[medqa]", "eval.splits=[dev, test]", "eval.limit=2",
                  "eval.max_new_tokens=4")
    return Pipeline(config).run_all().root


def export(run, out, *args):
    return main(["export", str(run), "--out", str(out), *args])


def tokens():
    return torch.tensor([[5, 17, 30, 8, 41, 12, 9, 3], [22, 6, 19, 33, 2, 27, 14, 40]])


def logits_of(model):
    with torch.no_grad():
        return model(input_ids=tokens()).logits


def with_adapter(base_source, adapter):
    """Load as a user would: transformers + peft, nothing of sparta."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_source, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def test_adapter_export_loads_with_peft_and_computes_the_runs_adapter(run, tmp_path, capsys):
    out = tmp_path / "b"
    assert export(run, out, "--member", "b") == 0
    assert "exported b after iteration 2 (adapter)" in capsys.readouterr().out
    config = json.loads((out / "adapter_config.json").read_text())
    source = config["base_model_name_or_path"]
    assert (Path(source) / "config.json").exists()  # a base a user can load
    manifest = json.loads((out / "sparta_export.json").read_text())
    assert manifest["base"]["spec"] == "tiny" and manifest["base"]["source"] == source
    assert manifest["iteration"] == 2 and manifest["member"] == "b"
    got = logits_of(with_adapter(source, out))
    assert torch.equal(got, logits_of(with_adapter(source, run / "iter_02" / "adapters" / "b")))  # same weights
    # the export is iteration 2's adapter: iteration 1's, or another member's, computes something else
    assert not torch.allclose(got, logits_of(with_adapter(source, run / "iter_01" / "adapters" / "b")), atol=1e-4)
    assert not torch.allclose(got, logits_of(with_adapter(source, run / "iter_02" / "adapters" / "a")), atol=1e-4)
    # and what sparta's HF backend computes for member b at the start of iteration 3
    from sparta.backends import MemberModel
    from sparta.backends.hf import HFBackend, LoraShape, ModelStore
    from sparta.models import resolve_model

    resolved = resolve_model("tiny", Path(source).parents[1])
    backend = HFBackend([MemberModel("b", resolved, run / "iter_02" / "adapters" / "b")], LoraShape(), seed=0,
                        store=ModelStore("cpu", dtype="float32"))
    candidates = list(range(10, 20))
    served = backend.next_token_logprobs(["b", "b"], tokens().tolist(), candidates, last=1, batch_size=2)
    mine = torch.log_softmax(got[:, -1].double(), -1)[:, candidates]
    # fp32 both; the backend's batch runs through sparta's own LoRA path: equal to ~1e-6
    assert torch.allclose(mine, torch.tensor([r[0] for r in served], dtype=torch.float64), atol=1e-5)


def test_merged_export_is_a_plain_model_with_the_adapters_function(run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert export(run, out, "--member", "c", "--iteration", "1", "--merged") == 0
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(str(out)).encode("hi")
    source = json.loads((out / "sparta_export.json").read_text())["base"]["source"]
    want = logits_of(with_adapter(source, run / "iter_01" / "adapters" / "c"))
    # W + s·BA summed once in fp32 against x·W + s·(x·A)·B: the two differ only by fp32 rounding (measured 9e-8 on
    # logits of magnitude 0.4); 1e-5 leaves a hundredfold margin and still catches another adapter (differences ~1e-2)
    assert torch.allclose(logits_of(merged), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits_of(merged), logits_of(with_adapter(source, run / "iter_02" / "adapters" / "c")),
                              atol=1e-4)


def test_iteration_0_of_a_fresh_member_is_the_base(run, tmp_path, capsys):
    assert export(run, tmp_path / "x", "--member", "a", "--iteration", "0") == 1
    err = capsys.readouterr().err
    assert "fresh LoRA adapter" in err and "--merged" in err and not (tmp_path / "x").exists()
    assert export(run, tmp_path / "base", "--member", "a", "--iteration", "0", "--merged") == 0
    from transformers import AutoModelForCausalLM

    source = json.loads((tmp_path / "base" / "sparta_export.json").read_text())["base"]["source"]
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    assert torch.equal(logits_of(exported), logits_of(base))
    assert not (tmp_path / "base" / "pairs").exists()  # no training before iteration 1
    assert export(run, tmp_path / "y", "--member", "a", "--iteration", "5") == 1
    assert "iteration 5 of" in capsys.readouterr().err


def test_best_picks_the_highest_dev_primary_metric(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "eval" / "iter_02" / "medqa-dev.json"
    data = EvalFile.read(path).to_dict()
    for member, value in {"a": 0.25, "b": 0.0, "c": 0.75}.items():  # c highest, b lowest, a first in pool order
        data["results"][member]["metrics"][data["results"][member]["primary"]]["value"] = value
    write_json_atomic(path, data)
    test_path = copy / "eval" / "iter_02" / "medqa-test.json"
    data = EvalFile.read(test_path).to_dict()
    data["results"]["a"]["metrics"][data["results"]["a"]["primary"]]["value"] = 1.0  # test must not decide
    write_json_atomic(test_path, data)
    assert export(copy, tmp_path / "best", "--member", "best", "--task", "medqa") == 0
    manifest = json.loads((tmp_path / "best" / "sparta_export.json").read_text())
    assert manifest["member"] == "c" and manifest["chosen"]["scores"] == {"a": 0.25, "b": 0.0, "c": 0.75}
    assert "exported c (best on medqa dev, letter)" in capsys.readouterr().out
    # another metric picks by its own values (a is best by loglik); one the file lacks is named with what it has
    data = EvalFile.read(path).to_dict()
    for member, value in {"a": 0.5, "b": 0.25, "c": 0.0}.items():
        data["results"][member]["metrics"]["loglik"]["value"] = value
    write_json_atomic(path, data)
    assert export(copy, tmp_path / "by_loglik", "--member", "best", "--task", "medqa", "--metric", "loglik") == 0
    manifest = json.loads((tmp_path / "by_loglik" / "sparta_export.json").read_text())
    assert manifest["member"] == "a" and manifest["chosen"]["metric"] == "loglik"
    assert "exported a (best on medqa dev, loglik)" in capsys.readouterr().out
    assert export(copy, tmp_path / "none", "--member", "best", "--task", "medqa", "--metric", "nope") == 1
    assert "--metric nope:" in capsys.readouterr().err
    # a task the run did not evaluate: the error names what exists
    assert export(copy, tmp_path / "none", "--member", "best", "--task", "gsm8k") == 1
    err = capsys.readouterr().err
    assert "no dev evaluation of 'gsm8k' after iteration 2" in err and "eval/iter_02/medqa-dev.json" in err
    assert export(copy, tmp_path / "none", "--member", "best") == 1
    assert "--member best needs --task" in capsys.readouterr().err


def test_card_has_the_evaluations_and_the_citation(run, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "a"
    assert export(run, out, "--member", "a", "--iteration", "1") == 0
    card = ModelCard.load(out / "README.md")
    assert BIBTEX in card.text and "2506.04721" in card.text
    assert card.data.library_name == "peft"
    files = sorted((run / "eval" / "iter_01").glob("*.json"))
    assert len(files) == 2
    for path in files:
        f = EvalFile.read(path)
        r = f.results["a"]
        for name, m in r.metrics.items():
            mark = "*" if name == r.primary else ""
            row = (f"| {f.task} | {f.split} | {name}{mark} | {m.value:.4f} | [{m.ci95[0]:.4f}, {m.ci95[1]:.4f}] | "
                   f"{m.n} | {m.failed} |")
            assert row in card.text
    recorded = {(e.dataset_split, e.metric_type): e.metric_value for e in card.data.eval_results}
    assert recorded == {(EvalFile.read(p).split, EvalFile.read(p).results["a"].primary):
                        EvalFile.read(p).results["a"].primary_metric.value for p in files}


def test_pairs_are_exactly_the_members_training_rows(run, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "a"
    assert export(run, out, "--member", "a") == 0
    data = load_from_disk(str(out / "pairs"))
    want = read_jsonl(run / "iter_01" / "pairs.jsonl") + read_jsonl(run / "iter_02" / "pairs.jsonl")  # pairs: all
    assert len(want) > 0 and [decode_row(row, out / "pairs") for row in data] == want
    assert (out / "pairs" / "README.md").exists()
    # training.pairs=own: each member trained on its own duels' pairs only, and exports those
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("  pairs: all\n", "  pairs: own\n"))
    for member in "abc":
        pairs = tmp_path / f"own-{member}" / "pairs"
        assert export(copy, pairs.parent, "--member", member) == 0
        own = [p for p in want if member in (p["chosen_model"], p["rejected_model"])]
        got = [decode_row(row, pairs) for row in load_from_disk(str(pairs))]
        assert 0 < len(own) < len(want) and got == own, member


def test_out_is_written_whole_or_not_at_all(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export(run, out, "--member", "a") == 1
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    import sparta.export

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(sparta.export, "_write_pairs", broken)
    with pytest.raises(OSError, match="disk full"):
        export(run, out, "--member", "a", "--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"] and (out / "keep.txt").read_text() == "mine"
    monkeypatch.undo()
    assert export(run, out, "--member", "a", "--force") == 0
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").exists()


def test_push_offline_fails_clearly_after_a_complete_export_without_the_token(run, tmp_path, capsys, monkeypatch,
                                                                             caplog):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert export(run, tmp_path / "n", "--member", "a", "--push-to-hub", "someone/sparta-a") == 1
    assert "set HF_TOKEN" in capsys.readouterr().err and (tmp_path / "n" / "README.md").exists()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "p"
    assert export(run, out, "--member", "a", "--push-to-hub", "someone/sparta-a") == 1
    printed = capsys.readouterr()
    assert "--push-to-hub someone/sparta-a failed" in printed.err and f"the local export at {out} is complete" in \
        printed.err
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "sparta_export.json",
                 "pairs/dataset_info.json"):
        assert (out / name).exists(), name
    assert TOKEN not in printed.out + printed.err + caplog.text
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
