"""`random:` model specs: real architectures (Qwen2.5-7B, -0.5B) with seeded random weights and a tokenizer of the
real vocabulary, built in code and never written to disk (GPU checks without a download)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from sparta.backends import BackendError, MemberModel, single_base
from sparta.backends.hf import HFBackend, LoraShape, ModelStore
from sparta.chat import encode_chat
from sparta.models import RANDOM_SPECIAL_TOKENS, ModelSpecError, load_random_model, resolve_model

MINI = "random:qwen2.5-mini"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("random-cache")


@pytest.fixture(scope="module")
def mini(cache):
    return resolve_model(MINI, cache)


@pytest.fixture(scope="module")
def mini_tok(mini):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(mini.source)


def test_the_cache_holds_config_and_tokenizer_but_no_weights(mini, cache, monkeypatch):
    assert mini.kind == "random" and mini.fingerprint == "random:qwen2.5-mini:0:v1"
    source = Path(mini.source)
    assert source == cache / "models" / "random-qwen2.5-mini-0"
    files = {p.name for p in source.iterdir()}
    assert {"config.json", "tokenizer.json", "random.json"} <= files
    assert not any(name.endswith((".safetensors", ".bin")) for name in files)
    from sparta import models

    monkeypatch.setattr(models, "build_random_model_dir", lambda *a, **k: pytest.fail("rebuilt a cached model"))
    again = resolve_model(MINI + ":0", cache)  # built once: the same directory, the same fingerprint
    assert (again.source, again.fingerprint) == (mini.source, mini.fingerprint)


def test_shapes_have_the_published_parameter_counts():
    """Built on the meta device (no memory): Qwen2.5-7B has 7,615,616,512 parameters (6.53 B without the embedding
    and the untied output layer), Qwen2.5-0.5B 494,032,768 (0.36 B without its tied embedding), as their cards say;
    the weights come out on the device and in the dtype asked for."""
    import tempfile

    for spec, total, body in (("random:qwen2.5-7b", 7_615_616_512, 6_525_621_760),
                              ("random:qwen2.5-0.5b", 494_032_768, 357_898_112)):
        with tempfile.TemporaryDirectory() as tmp:
            model = load_random_model(resolve_model(spec, Path(tmp)).source, torch.bfloat16, "meta")
        params = list(model.parameters())
        embeddings = model.get_input_embeddings().weight.numel()
        head = 0 if model.config.tie_word_embeddings else model.get_output_embeddings().weight.numel()
        assert sum(p.numel() for p in params) == total
        assert sum(p.numel() for p in params) - embeddings - head == body
        assert {p.device.type for p in params} == {"meta"} and {p.dtype for p in params} == {torch.bfloat16}


def test_weights_follow_the_seed(cache):
    a = load_random_model(resolve_model(MINI, cache).source, torch.float32, "cpu")
    again = load_random_model(resolve_model(MINI, cache).source, torch.float32, "cpu")
    other = load_random_model(resolve_model(MINI + ":1", cache).source, torch.float32, "cpu")
    key = "model.layers.0.mlp.up_proj.weight"
    weights = [dict(m.named_parameters())[key] for m in (a, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_tokenizer_has_qwens_vocabulary_size_special_ids_and_chat_template(mini_tok):
    assert len(mini_tok) == 151646  # Qwen2.5: 151643 regular tokens, then its specials (the model pads to 151936)
    assert mini_tok.convert_tokens_to_ids(list(RANDOM_SPECIAL_TOKENS)) == [151643, 151644, 151645]
    assert (mini_tok.eos_token, mini_tok.pad_token, mini_tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    text = mini_tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = mini_tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 151644 and ids.count(151645) == 1  # the specials are matched whole
    assert mini_tok.decode(mini_tok("Any text: é, 漢字, {\"score\": 10}")["input_ids"]) == \
        "Any text: é, 漢字, {\"score\": 10}"


def test_a_random_answer_encodes_back_to_its_own_tokens(mini_tok):
    """What a random model mostly emits (its words) decodes to text that encodes back to the same tokens: judged
    and trained on, an answer keeps its length."""
    rng = random.Random(0)
    words = [rng.randrange(256 + 26 + 26**2, 151643) for _ in range(300)]
    assert mini_tok(mini_tok.decode(words), add_special_tokens=False)["input_ids"] == words


def test_logprob_judging_reads_single_digit_tokens(mini_tok):
    from sparta.arena.judging import ScoreTokens

    st = ScoreTokens(mini_tok)
    assert len(set(st.candidates)) == 10 and st.positions == 2  # "10" is "1" then "0", as in Qwen's tokenizer


def test_the_hf_backend_builds_it_on_its_device_and_generates_forced_lengths(mini):
    store = ModelStore("cpu", dtype="bfloat16")
    backend = HFBackend([MemberModel(m, mini, None) for m in "ab"], LoraShape(), seed=0, store=store)
    base = store.bases[mini.fingerprint]
    assert base.base.dtype == torch.bfloat16 and base.device.type == "cpu"
    assert base.eos_ids == {151645}
    tok = backend.tokenizer("a")
    prompt = encode_chat(tok, [("user", "{0}")], ["2+2?"], max_tokens=64).ids
    out = backend.generate(["a", "b"], [prompt, prompt], max_new_tokens=5, min_new_tokens=5, temperature=0.7,
                           top_p=0.95, batch_size=2, seed=0)
    assert [g.n_tokens for g in out] == [5, 5] and all(g.text for g in out)


def test_errors_name_the_spec_and_the_fix(cache, mini):
    with pytest.raises(ModelSpecError, match="unknown random shape 'qwen9'.*qwen2.5-7b"):
        resolve_model("random:qwen9", cache)
    with pytest.raises(ModelSpecError, match="seed 'x' is not an integer"):
        resolve_model("random:qwen2.5-7b:x", cache)
    unbuilt = resolve_model("random:qwen2.5-7b:5", cache, build=False)  # validation: nothing is built
    assert unbuilt.kind == "random" and unbuilt.fingerprint == "" and not Path(unbuilt.source).exists()
    with pytest.raises(ValueError, match="built on one device"):
        ModelStore("cpu", device_map="auto").get(mini)
    with pytest.raises(BackendError, match="no weights on disk.*backend.kind=hf"):
        single_base([MemberModel("a", mini, None)], "vllm")
