"""Mixed-adapter batches (sparta.mixed_lora) and the top-p sampler give the same numbers as PEFT and
Hugging Face do, while staying off their slow paths."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from sparta.backends.hf import TopP
from sparta.mixed_lora import row_lora
from sparta.models import resolve_model


@pytest.fixture(scope="module")
def peft_pool(tmp_path_factory):
    """A tiny model with three adapters of different shapes, their B matrices random (fresh LoRA is a no-op)."""
    source = resolve_model("tiny:3", tmp_path_factory.mktemp("cache"), build=True).source
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0),
                           adapter_name="big")
    model.add_adapter("small", LoraConfig(r=4, lora_alpha=4, target_modules="all-linear", lora_dropout=0.0))
    model.add_adapter("q_only", LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"], lora_dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return model.eval()


def _ids(batch: int, length: int = 12) -> torch.Tensor:
    return torch.randint(3, 60, (batch, length), generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize("rows", [["big", "small", "q_only", "big"], ["small", "small", "small"], ["q_only", "big"]])
@torch.inference_mode()
def test_stacked_rows_match_peft_mixed_batches(peft_pool, rows):
    ids = _ids(len(rows))
    expected = peft_pool(input_ids=ids, adapter_names=rows).logits
    with peft_pool.disable_adapter():
        base = peft_pool(input_ids=ids).logits
    with row_lora(peft_pool, rows) as stacked:
        got = peft_pool(input_ids=ids).logits
    assert stacked
    assert (expected - base).abs().max() > 1e-2  # the adapters matter, so agreement below means something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_stacked_rows_match_peft_while_generating(peft_pool):
    rows = ["big", "q_only", "small"]
    ids = _ids(3)
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8, pad_token_id=0)
    expected = peft_pool.generate(**kw, adapter_names=rows)
    with row_lora(peft_pool, rows):
        got = peft_pool.generate(**kw)
    assert torch.equal(got, expected)


def test_context_restores_peft_state(peft_pool):
    peft_pool.set_adapter("big")
    grads = {n: p.requires_grad for n, p in peft_pool.named_parameters()}
    with row_lora(peft_pool, ["big", "small"]):
        pass
    assert {n: p.requires_grad for n, p in peft_pool.named_parameters()} == grads
    with torch.inference_mode():  # PEFT's own path is live again: the active adapter changes the output
        ids = _ids(1)
        with peft_pool.disable_adapter():
            base = peft_pool(input_ids=ids).logits
        assert (peft_pool(input_ids=ids).logits - base).abs().max() > 1e-2


def test_dora_adapters_fall_back_to_peft(peft_pool):
    peft_pool.add_adapter("dora", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    try:
        with row_lora(peft_pool, ["big", "dora"]) as stacked:
            assert stacked is False
        with row_lora(peft_pool, ["big", "small"]) as stacked:
            assert stacked is True
    finally:
        peft_pool.delete_adapter("dora")


@pytest.mark.parametrize("temperature,top_p,spread", [(0.7, 0.95, 3.0), (1.0, 0.5, 8.0), (0.7, 0.95, 0.01),
                                                      (1.3, 1.0, 3.0), (0.5, 1e-9, 3.0)])
def test_top_p_keeps_the_tokens_hugging_face_keeps(temperature, top_p, spread):
    """spread 0.01: an almost flat distribution whose nucleus is far larger than the top-k shortcut."""
    scores = torch.randn(6, 5000, generator=torch.Generator().manual_seed(1)) * spread
    expected = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = TopP(temperature, top_p, k=64)(None, scores.clone())
    assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
    torch.testing.assert_close(got[torch.isfinite(got)], expected[torch.isfinite(expected)])
    if spread == 0.01:
        assert torch.isfinite(got).sum(-1).min() > 64  # the full-sort fallback was needed and taken


def test_top_p_rejects_impossible_settings():
    with pytest.raises(ValueError, match="temperature"):
        TopP(0.0, 0.9)
    with pytest.raises(ValueError, match="top_p"):
        TopP(0.7, 0.0)


def test_grouped_logprobs_equal_scoring_each_prompt_whole(tmp_path):
    """Shared-prefix judging (one prefix pass, its cache copied per prompt) gives next_token_logprobs' numbers,
    with mixed adapters, groups of 1-3 prompts and prefixes of different lengths."""
    from sparta.backends import MemberModel
    from sparta.backends.hf import HFBackend, LoraShape

    backend = HFBackend([MemberModel(m, resolve_model("tiny:5", tmp_path), None) for m in ("jx", "jy")],
                        LoraShape(dropout=0.0), seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        model, jx = backend.adapter("jx")
        for name, p in model.named_parameters():
            if "lora_B" in name and f".{jx}." in name:
                p.normal_(std=0.3)
    stem = torch.randint(3, 60, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    groups = [[stem[:20] + [5, 6, 7, 8], stem[:20] + [9, 10, 11, 12, 13, 14]],
              [stem[:7] + [4, 4, 4], stem[:7] + [5, 5, 5], stem[:9] + [6, 6]],
              [stem[:30]]]
    members = ["jx", "jy", "jx"]
    grouped = backend.grouped_next_token_logprobs(members, groups, [3, 4, 5, 6], last=2, batch_size=2)
    flat = backend.next_token_logprobs([m for m, g in zip(members, groups) for _ in g], [p for g in groups for p in g],
                                       [3, 4, 5, 6], last=2, batch_size=8)
    got = torch.tensor([row for g in grouped for row in g])
    torch.testing.assert_close(got, torch.tensor(flat), atol=1e-4, rtol=1e-4)
    assert (got[0] - got[1]).abs().max() > 1e-3  # different prompts really were scored apart


@torch.inference_mode()
def test_stacking_costs_the_same_device_work_whatever_the_number_of_rows(peft_pool):
    """Entering row_lora runs a fixed number of tensor ops per layer, not one per row per layer: on a GPU each op
    is a kernel launch, and the row mask was once filled row by row in every layer (thousands per batch)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for rows in (["big", "small", "q_only"], ["big", "small", "q_only"] * 8):
        with Count() as count, row_lora(peft_pool, rows):
            pass
        counts.append(count.ops)
    assert counts[0] == counts[1]
