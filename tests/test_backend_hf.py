"""The HF backend at real-model settings: only sparta's sampling settings apply, and errors that are not about one
input stop the caller instead of becoming failed rows."""

import json
import math
import shutil

import pytest
import torch

from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, LoraShape
from sparta.hf_compat import is_checkpointing, kv_cache, with_cache
from sparta.models import resolve_model


@pytest.fixture(scope="module")
def opinionated(tmp_path_factory):
    """The tiny model shipped with a generation_config that is not neutral, as Qwen2.5's (temperature 0.7,
    top_p 0.8, repetition_penalty 1.05) is; here extreme so that any leak shows."""
    cache = tmp_path_factory.mktemp("cache")
    target = tmp_path_factory.mktemp("opinionated") / "model"
    shutil.copytree(resolve_model("tiny", cache).source, target)
    path = target / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(do_sample=True, temperature=1e-4, top_k=1, top_p=0.5, repetition_penalty=50.0,
                  no_repeat_ngram_size=1)
    path.write_text(json.dumps(config))
    return resolve_model(str(target), cache)


@pytest.fixture(scope="module")
def backend(opinionated):
    return HFBackend([MemberModel(n, opinionated, None) for n in "ab"], LoraShape(dropout=0.0), seed=0)


def prompts(backend, n):
    tok = backend.tokenizer("a")
    return [tok.encode(f"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\n") for i in range(n)]


def test_greedy_is_plain_argmax_whatever_the_model_ships(backend):
    """Greedy decoding = argmax of the model's own logits at every step: no repetition penalty, no n-gram ban."""
    ids = prompts(backend, 3)
    out = backend.generate(["a"] * 3, ids, max_new_tokens=12, temperature=0.0, top_p=1.0, batch_size=3, seed=0)
    model, _ = backend.adapter("a")
    tok = backend.tokenizer("a")
    for prompt, got in zip(ids, out):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(12):
                nxt = int(model(input_ids=torch.tensor([seq], device=model.device)).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                seq.append(nxt)
        assert got.text == tok.decode(seq[len(prompt):], skip_special_tokens=True).strip()
    # the random tiny model repeats itself greedily: a leaked no_repeat_ngram_size=1 would have forbidden it
    assert any(len(set(g.text)) < len(g.text) for g in out)


def test_a_kv_cache_read_from_one_pass_continues_the_next_on_this_transformers(backend):
    """The KV cache goes by the installed transformers' name (`cache` from 5.24, `past_key_values` before): a
    prefix's cache handed to the next pass gives the whole sequence's logits. Under a wrong name the cache is
    not found, or the next pass ignores it and sees its 3 tokens alone."""
    model, _ = backend.adapter("a")
    x = torch.tensor(prompts(backend, 1))
    with torch.no_grad():
        whole = model(input_ids=x).logits[0, -1]
        first = model(input_ids=x[:, :-3], use_cache=True)
        rest = model(input_ids=x[:, -3:], use_cache=False, **with_cache(kv_cache(first))).logits[0, -1]
    assert torch.allclose(rest, whole, atol=1e-5)


def test_continuations_on_a_cached_prefix_score_as_whole_sequences(backend):
    """continuation_logprobs (left-padded prefixes run once, continuations right-padded on copies of their cache)
    gives the log-probs of each prefix + continuation scored whole in its own row: prefixes and continuations of
    different lengths, so that padding sits on both sides and a wrong position or mask shows."""
    ids = prompts(backend, 3)
    prefixes = [ids[0], ids[1][:-4], ids[2] + [11, 12, 13]]
    continuations = [[[5], [6, 7, 8, 9]], [[10, 11, 12]], [[13, 14], [15], [16, 17, 18, 19, 20]]]
    got = backend.continuation_logprobs("a", prefixes, continuations, batch_size=2)
    model, adapter = backend.adapter("a")
    model.set_adapter(adapter)
    expected = []
    with torch.no_grad():
        for prefix, options in zip(prefixes, continuations):
            row = []
            for c in options:
                logits = model(input_ids=torch.tensor([prefix + c])).logits[0, len(prefix) - 1:-1]
                row.append(sum(torch.log_softmax(logits, -1)[k, t].item() for k, t in enumerate(c)))
            expected.append(row)
    assert [len(r) for r in got] == [2, 1, 3]
    assert [x for r in got for x in r] == pytest.approx([x for r in expected for x in r], abs=1e-4)

def test_sampling_uses_only_sparta_temperature_and_top_p(backend):
    """top_k=1 and temperature 1e-4 from the model's file would make sampling greedy; ours (T=1, top_p=1) samples."""
    ids = prompts(backend, 8)
    greedy = backend.generate(["a"] * 8, ids, max_new_tokens=12, temperature=0.0, top_p=1.0, batch_size=8, seed=0)
    sampled = backend.generate(["a"] * 8, ids, max_new_tokens=12, temperature=1.0, top_p=1.0, batch_size=8, seed=0)
    assert sum(g.text != s.text for g, s in zip(greedy, sampled)) >= 6


def test_out_of_memory_raises_instead_of_failing_rows(backend, monkeypatch):
    model, _ = backend.adapter("a")

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model, "generate", oom)
    with pytest.raises(torch.OutOfMemoryError):
        backend.generate(["a", "b"], prompts(backend, 2), max_new_tokens=4, temperature=0.7, top_p=0.9,
                         batch_size=2, seed=0)


def test_a_row_over_the_context_window_fails_as_data(backend):
    ids = prompts(backend, 2)
    ids[1] = ids[1] * 200  # far beyond the tiny model's 2048 positions
    out = backend.generate(["a", "b"], ids, max_new_tokens=4, temperature=0.0, top_p=1.0, batch_size=2, seed=0)
    assert out[0].text is not None and out[0].error is None
    assert out[1].text is None and "exceed the model's context window of 2048 tokens" in out[1].error


def test_precision_attention_and_device_map_reach_the_loaded_model(tmp_path):
    from sparta.backends.hf import ModelStore

    tiny = resolve_model("tiny", tmp_path)
    store = ModelStore("cpu", dtype="bfloat16", attn_implementation="eager", device_map="auto")
    be = HFBackend([MemberModel("a", tiny, None)], LoraShape(), seed=0, store=store)
    base = store.bases[tiny.fingerprint]
    assert base.base.dtype == torch.bfloat16 and base.base.config._attn_implementation == "eager"
    assert base.device == base.base.get_input_embeddings().weight.device  # inputs go where the embeddings are
    [out] = be.generate(["a"], prompts(be, 1), max_new_tokens=4, temperature=0.0, top_p=1.0, batch_size=1, seed=0)
    assert out.text is not None
    assert ModelStore("cpu", dtype="auto").dtype == torch.float32  # auto on a CPU: fp32


PAIRS = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
          "rejected": [{"role": "assistant", "content": r}]}
         for q, c, r in [("2+2?", "4", "five"), ("Say hi.", "hi", "bye bye"), ("Sky?", "Blue.", "Green")]]


def _dpo_counting_layer_calls(tiny, checkpointing: bool, lora_dropout: float = 0.0):
    """A DPO run on the tiny model; (metrics, trained weights, how many times layer 0's attention ran)."""
    from sparta.backends.hf import HFTrainer, ModelStore
    from sparta.config import TrainingConfig
    from sparta.training import train_dpo

    # one row per sequence either way (checkpointing turns shared prompts off: training.sequence_logprobs), so the
    # forward passes match and the calls differ by the recomputation alone
    s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=1, warmup_ratio=0.0, share_prompts=False, beta=0.1,
                       epochs=2)
    trainer = HFTrainer(LoraShape(dropout=lora_dropout), 3, ModelStore("cpu"), gradient_checkpointing=checkpointing)
    with trainer.slot(MemberModel("a", tiny, None)) as slot:
        calls = []
        layer = slot.model.get_base_model().get_decoder().layers[0]
        hook = layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
        metrics = train_dpo(slot, "a", PAIRS, s, seed=1)
        hook.remove()
        assert is_checkpointing(slot.model) == checkpointing
        return metrics, [p.detach().clone() for p in slot.parameters()], len(calls)


def test_gradient_checkpointing_recomputes_the_layers_and_gives_the_same_dpo_step(tmp_path):
    """With checkpointing, backward runs every layer again (one extra call per micro-batch stepped); the result
    does not change: same losses, same trained weights. (DPO once trained with every layer in eval mode, where
    transformers does not checkpoint: the results matched and no activation was recomputed.)"""
    tiny = resolve_model("tiny", tmp_path)
    (m_a, w_a, calls_a), (m_b, w_b, calls_b) = (_dpo_counting_layer_calls(tiny, c) for c in (False, True))
    micro_batches_stepped = 2 * 3  # two epochs of 3 pairs at micro-batch 1
    assert calls_b - calls_a == micro_batches_stepped
    assert [h["loss"] for h in m_a["history"]] == pytest.approx([h["loss"] for h in m_b["history"]], abs=1e-6)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(w_a, w_b))


def test_dpo_under_checkpointing_runs_without_dropout(tmp_path):
    """The layers train (for checkpointing) but LoRA's dropout stays off: at step one the policy is the reference,
    so the first loss is exactly log 2 even with lora dropout 0.5."""
    metrics, _, _ = _dpo_counting_layer_calls(resolve_model("tiny", tmp_path), True, lora_dropout=0.5)
    assert metrics["history"][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_model_dtype_is_one_precision_for_the_vllm_server_and_the_hf_backend(monkeypatch):
    """`model.dtype=auto` reaches vLLM as the precision the HF backend picks on the same machine (vLLM's own auto
    keeps a converted model's fp32 on a GPU, while the HF backend and training use bf16)."""
    from sparta.backends.hf import ModelStore
    from sparta.backends.vllm import precision

    for gpu in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
        hf = ModelStore("cuda" if gpu else "cpu", dtype="auto").dtype
        assert precision("auto") == str(hf).removeprefix("torch.") == ("bfloat16" if gpu else "float32")
        assert precision("float32") == "float32" and precision("bfloat16") == "bfloat16"


def test_a_base_is_loaded_onto_its_device_not_moved_there(tmp_path, monkeypatch):
    """from_pretrained places the weights on the store's device (device_map); the loaded model is never moved
    afterwards (loading on the host first would take a 7B bf16 base's 15 GB of host memory on the way to a GPU)."""
    from transformers import AutoModelForCausalLM

    from sparta.backends.hf import ModelStore

    load, asked = AutoModelForCausalLM.from_pretrained, []

    def placed(source, **kwargs):
        asked.append(kwargs.get("device_map"))
        model = load(source, **kwargs)
        model.to = model.cuda = lambda *a, **k: pytest.fail(f"the loaded model was moved: .to{a}")
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", placed)
    store = ModelStore("cpu")
    HFBackend([MemberModel("a", resolve_model("tiny", tmp_path), None)], LoraShape(), seed=0, store=store)
    assert asked == ["cpu"]


def test_a_bf16_base_scores_with_its_output_layer_in_fp32(tmp_path):
    """Judging and evaluation read logits as scores: on a bf16 base they come from the output layer applied in fp32 to
    the bf16 hidden states (as DPO's log-probs do), not from bf16 logits, which round by ~0.1."""
    from sparta.backends.hf import ModelStore

    tiny = resolve_model("tiny", tmp_path)
    be = HFBackend([MemberModel("a", tiny, None)], LoraShape(), seed=0, store=ModelStore("cpu", dtype="bfloat16"))
    ids = prompts(be, 2)
    candidates = list(range(3, 40))
    got = torch.tensor(be.next_token_logprobs(["a", "a"], ids, candidates, last=2, batch_size=2))
    model, _ = be.adapter("a")
    inner = model.get_base_model()
    with torch.inference_mode():
        outputs = []
        for seq in ids:  # one at a time: no padding
            hidden = inner.get_decoder()(input_ids=torch.tensor([seq])).last_hidden_state[0, -2:]
            for head in (inner.get_output_embeddings().weight.float(), inner.get_output_embeddings().weight):
                outputs.append(torch.log_softmax((hidden.to(head.dtype) @ head.T).float(), -1)[:, candidates])
    fp32_head, bf16_head = torch.stack(outputs[0::2]), torch.stack(outputs[1::2])
    # the tiny model's logits are small, so bf16 rounds them by ~1e-3 only: still ten times the tolerance
    torch.testing.assert_close(got, fp32_head, atol=5e-5, rtol=0)
    assert (got - bf16_head).abs().max() > 5e-4
