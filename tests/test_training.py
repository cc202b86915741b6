"""Tests for sparta.training: our DPO loss against trl's, and DPO/SFT on the HF backend's LoRA adapters.

Everything runs on the random tiny Llama (char-level ChatML tokenizer) on CPU. Torch is held to one thread
for this module: on a small shared machine, intra-op threads contending with other processes make a
32-wide model hundreds of times slower.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import pytest
import torch

from sparta.backends import MemberModel
from sparta.backends.hf import HFBackend, HFTrainer, LoraShape, ModelStore, TrainSlot
from sparta.config import ExpertsConfig, TrainingConfig
from sparta.models import ResolvedModel, resolve_model
from sparta.training import (
    dpo_loss,
    dpo_steps,
    encode_example,
    scored_steps,
    sequence_logprobs,
    train_dpo,
    train_sft,
)

LN2 = math.log(2)
BETA = 0.1


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ResolvedModel:
    return resolve_model("tiny", tmp_path_factory.mktemp("training-cache"))


@pytest.fixture(scope="module")
def tiny_tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.source)


def conversation(prompt: str, chosen: str, rejected: str) -> dict:
    """One preference pair in trl's conversational format."""
    return {"prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


PAIRS = [
    conversation("What is 2+2?", "4", "five, I think"),
    conversation("Name a colour.", "Blue.", "No."),
    conversation("Say hi.", "hi", "bye bye"),
    conversation("Capital of France?", "Paris", "Rome"),
]


def trainer(tiny, seed: int = 7, store: ModelStore | None = None, **lora) -> HFTrainer:
    return HFTrainer(LoraShape(**lora), seed, store or ModelStore("cpu"))


@contextmanager
def slot(tiny, name: str = "a", adapter_dir=None, seed: int = 7, store: ModelStore | None = None, **lora):
    """A trainable copy of member `name`'s adapter on the tiny base (its own store unless one is given)."""
    with trainer(tiny, seed, store, **lora).slot(MemberModel(name, tiny, adapter_dir)) as s:
        yield s


def snapshot(s: TrainSlot) -> dict[str, torch.Tensor]:
    """Every parameter of the shared PEFT model (base and all adapters), cloned."""
    return {n: p.detach().clone() for n, p in s.model.named_parameters()}


def changed(s: TrainSlot, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in s.model.named_parameters() if not torch.equal(p, before[n])}


def lora_names(s: TrainSlot) -> set[str]:
    return {n for n, p in s.model.named_parameters() if any(p is q for q in s.parameters())}


def perturb_adapter(s: TrainSlot, seed: int, scale: float = 0.5) -> None:
    """Give the slot's (zero-initialised) LoRA B matrices random values, so the adapter is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "lora_B" in n and any(p is q for q in s.parameters()):
                p.add_(scale * torch.randn(p.shape, generator=g))


def hand_logprob(model, ids: list[int], start: int) -> float:
    """sum_{t=start}^{n-1} log softmax(logits[t-1])[ids[t]] on the unpadded sequence (full logits)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


def mean_nll(s: TrainSlot, examples: list[tuple[list[int], int]]) -> float:
    s.model.set_adapter(s.adapter)
    s.model.eval()
    with torch.no_grad():
        logp, counts = sequence_logprobs(s.model, examples, s.tokenizer.pad_token_id, "cpu")
    return (-logp.sum() / counts.sum()).item()


# ------------------------------------------------------------------------------------------------------------------
# 1. the loss against trl's


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dpo_loss_matches_trl(tiny, tiny_tok, tmp_path):
    """Our `sequence_logprobs` + `dpo_loss` reproduce trl 1.16's DPOTrainer sigmoid loss on the same tokens.

    How trl scores a completion (dpo_trainer.py `_compute_loss` and trainer/utils.py `add_fused_lm_head`):
    the collator lays the batch out as [chosen..., rejected...], each row prompt_ids + completion_ids,
    right-padded; `completion_mask` is 0 on the prompt, 1 on the completion, 0 on the padding.
    `labels = input_ids.masked_fill(completion_mask == 0, -100)`, and the fused LM head shifts:
    hidden_states[:, :-1] score labels[:, 1:], i.e. token t is scored by the logits at t-1 and counted iff
    completion_mask[t] == 1. The per-sequence log-prob is the plain sum (no length normalisation) and the
    loss is mean_i -logsigmoid(beta * ((pc - rc) - (pr - rr))). Ours: `sequence_logprobs` scores targets
    ids[1:] with logits[:-1] and counts position t iff start <= t < len(ids) -- the same set, once `start`
    is the first index where completion_mask == 1 and len(ids) the row's attention_mask sum. For a
    conversational pair trl's completion is everything after the generation prompt
    "<|im_start|>assistant\\n": the response text plus the template's "<|im_end|>\\n", which is also what
    `encode_example` counts as the response (checked at the end).
    """
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny.source, dtype=torch.float32)
    reference = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # policy != reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))

    pairs = PAIRS[:2]
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), bf16=False, use_cpu=True, report_to=[], beta=BETA,
                         per_device_train_batch_size=2, max_length=1024, precompute_ref_log_probs=False,
                         gradient_checkpointing=False, loss_type=["sigmoid"], seed=0)
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(pairs),
                             processing_class=tiny_tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    model, ref_model = trainer.model, trainer.ref_model
    model.eval()
    ref_model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch).item()

    # trl's own per-sequence log-probs (what `_compute_loss` sums), from its fused head
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        trl_policy = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                           fused_lm_head=True).log_probs.sum(1)
        trl_ref = ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                            fused_lm_head=True).log_probs.sum(1)

    # the same token ids, as ours takes them: each row's real tokens and where its completion starts
    examples = []
    for ids, attention, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                          strict=True):
        n = int(attention.sum())
        assert attention[:n].all() and not attention[n:].any()  # right padding
        start = int(completion.nonzero()[0])
        assert completion[start:n].all() and not completion[:start].any() and not completion[n:].any()
        examples.append((ids[:n].tolist(), start))

    pad = tiny_tok.pad_token_id
    with torch.no_grad():
        ours_policy, counts = sequence_logprobs(model, examples, pad, "cpu")
        ours_ref, ref_counts = sequence_logprobs(ref_model, examples, pad, "cpu")
    assert counts.tolist() == batch["completion_mask"].sum(1).tolist() == ref_counts.tolist()
    torch.testing.assert_close(ours_policy, trl_policy, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours_ref, trl_ref, rtol=0, atol=1e-4)

    k = len(pairs)  # layout [chosen..., rejected...]
    ours_loss, chosen_reward, rejected_reward = dpo_loss(ours_policy[:k], ours_policy[k:], ours_ref[:k],
                                                         ours_ref[k:], BETA)
    assert abs(ours_loss.item() - trl_loss) < 1e-5
    assert abs(ours_loss.item() - LN2) > 1e-3  # the perturbation made the comparison non-trivial
    metrics = trainer._metrics["eval"]
    assert metrics["rewards/chosen"][-1] == pytest.approx(chosen_reward.mean().item(), abs=1e-5)
    assert metrics["rewards/rejected"][-1] == pytest.approx(rejected_reward.mean().item(), abs=1e-5)

    # each chosen/rejected log-prob by hand: log_softmax over the full logits of the unpadded sequence
    for row, (ids, start) in enumerate(examples):
        assert ours_policy[row].item() == pytest.approx(hand_logprob(model, ids, start), abs=1e-4)
        assert ours_ref[row].item() == pytest.approx(hand_logprob(ref_model, ids, start), abs=1e-4)

    # and `encode_example` (what train_dpo uses) tokenises a pair exactly as trl does
    for i, p in enumerate(pairs):
        prompt = p["prompt"][0]["content"]
        assert encode_example(tiny_tok, prompt, p["chosen"][0]["content"], 1024) == examples[i]
        assert encode_example(tiny_tok, prompt, p["rejected"][0]["content"], 1024) == examples[k + i]


# ------------------------------------------------------------------------------------------------------------------
# 2. the loss by hand


def test_dpo_loss_by_hand():
    """policy_chosen=-10, policy_rejected=-12, ref_chosen=-11, ref_rejected=-11, beta=0.1:
    chosen reward = 0.1*(-10+11) = 0.1, rejected reward = 0.1*(-12+11) = -0.1, margin = 0.2,
    loss = -log sigmoid(0.2) = log(1 + e^-0.2) = log(1.8187307531) = 0.5981388693."""
    loss, rc, rr = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                            torch.tensor([-11.0]), 0.1)
    assert loss.item() == pytest.approx(0.5981388693, abs=1e-7)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)
    # a batch is the mean of its rows; a zero margin gives ln 2 = 0.6931471806
    loss2, _, _ = dpo_loss(torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -5.0]), torch.tensor([-11.0, -5.0]),
                           torch.tensor([-11.0, -5.0]), 0.1)
    assert loss2.item() == pytest.approx((0.5981388693 + LN2) / 2, abs=1e-7)
    assert not rc.requires_grad and not rr.requires_grad


# ------------------------------------------------------------------------------------------------------------------
# 3. train_dpo on a trainable slot


def test_train_dpo_trains_only_its_adapter(tiny, monkeypatch):
    import sparta.training as training

    store = ModelStore("cpu")
    be = HFBackend([MemberModel(n, tiny, None) for n in "abc"], LoraShape(), seed=7, store=store)
    calls: list[tuple[bool, list[tuple[int, ...]]]] = []

    def counting(model, examples, pad_id, device, **options):
        calls.append((torch.is_inference_mode_enabled(), [tuple(ids) for ids, _ in examples]))
        return sequence_logprobs(model, examples, pad_id, device, **options)

    monkeypatch.setattr(training, "sequence_logprobs", counting)
    s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=1, warmup_ratio=0.0, beta=BETA, epochs=2)
    with slot(tiny, "a", store=store) as sl:
        assert store.loads == 1  # training shares the inference backend's loaded base
        before = snapshot(sl)
        metrics = train_dpo(sl, "a", PAIRS, s, seed=3)
        moved = changed(sl, before)
        trained = lora_names(sl)
        assert sl.model.training is False  # back in eval mode

    assert metrics["pairs"] == 4 and metrics["steps"] == dpo_steps(4, 2, 2) == 4
    assert metrics["truncated"] == 0 and metrics["skipped_prompt_too_long"] == 0
    assert len(metrics["history"]) == 4
    assert {"loss", "reward_margin", "reward_accuracy", "grad_norm", "lr"} <= set(metrics["history"][0])
    # policy == reference at step one (fresh adapter = base), so the first loss is -log sigmoid(0) = ln 2
    assert metrics["loss_first"] == pytest.approx(LN2, abs=1e-4)
    assert metrics["history"][0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    # measured on all pairs after training: the member now prefers the chosen responses
    assert metrics["after"]["loss"] < metrics["loss_first"] and metrics["after"]["reward_margin"] > 0

    # the reference: one inference-mode pass over every (pair, side) sequence, exactly once, before any update
    # (both epochs use one-pair micro-batches here, so each layout is computed once)
    tok = be.tokenizer("a")
    every = sorted(tuple(encode_example(tok, p["prompt"][0]["content"], p[side][0]["content"], s.max_length)[0])
                   for p in PAIRS for side in ("chosen", "rejected"))
    first_step = next(i for i, c in enumerate(calls) if not c[0])
    last_step = max(i for i, c in enumerate(calls) if not c[0])
    reference, after = calls[:first_step], calls[last_step + 1:]
    assert all(c[0] for c in reference + after)  # no-grad passes: the reference before, the evaluation after
    assert sorted(seq for _, seqs in reference for seq in seqs) == every  # the reference: each sequence once
    assert sorted(seq for _, seqs in after for seq in seqs) == every
    steps = [c for c in calls if not c[0]]
    assert len(steps) == 4 * 2  # 4 steps x 2 micro-batches of one pair (chosen + rejected)
    assert all(len(seqs) == 2 for _, seqs in steps)

    # only the trained copy's LoRA tensors moved; the base and the inference slots are bit-identical
    assert moved and moved <= trained
    assert any("lora_B" in n for n in moved)
    assert not any(n.split("lora_B.")[-1].startswith(("a__", "b__", "c__")) for n in moved)


def test_train_dpo_first_step_is_ln2_for_a_trained_adapter(tiny):
    """DPO runs without LoRA dropout (as trl does), so policy == reference at step one even for a trained adapter."""
    with slot(tiny) as sl:  # default LoraShape: dropout 0.05
        perturb_adapter(sl, seed=0)
        s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=2, warmup_ratio=0.0, beta=BETA)
        metrics = train_dpo(sl, "a", PAIRS, s, seed=3)
    assert metrics["loss_first"] == pytest.approx(LN2, abs=1e-4)


def test_train_dpo_first_step_is_exactly_ln2_in_bfloat16(tiny):
    """In bf16 a sequence's log-prob moves with the padding of its batch; the reference is computed in the very
    micro-batches the steps use, so at step one policy and reference agree bit for bit (loss = ln 2)."""
    store = ModelStore("cpu", dtype="bfloat16")
    with slot(tiny, store=store, dropout=0.0) as sl:
        perturb_adapter(sl, seed=0)
        # micro-batches of 2 pairs of different lengths: the reference used to run in other batches
        s = TrainingConfig(lr=1e-2, batch_size=4, micro_batch_size=2, warmup_ratio=0.0, beta=BETA)
        metrics = train_dpo(sl, "a", PAIRS, s, seed=3)
    assert metrics["history"][0]["reward_margin"] == 0.0
    assert metrics["loss_first"] == pytest.approx(LN2, abs=1e-7)


def test_dpo_cuts_an_over_long_response_from_its_end_and_never_splices(tiny, tiny_tok):
    """An over-long pair: the response is cut from its end (no " [...] " spliced into it); an over-long prompt is
    shortened in its content as combat shortened it, the same for chosen and rejected whatever their lengths;
    a prompt over max_length is left out. Each case is counted."""
    from sparta.chat import ELLIPSIS
    from sparta.training import encode_truncated

    prompt, long = "Tell me a story.", "Once upon a time " * 40
    ids, start, cut, shortened = encode_truncated(tiny_tok, prompt, long, 120)
    full, full_start, _, _ = encode_truncated(tiny_tok, prompt, long, 10**6)
    assert cut and not shortened and len(ids) == 120 and start == full_start and ids == full[:120]
    assert ELLIPSIS.strip() not in tiny_tok.decode(ids)
    chosen = encode_truncated(tiny_tok, "x" * 300, "a", 120)
    rejected = encode_truncated(tiny_tok, "x" * 300, "b" * 200, 120)
    assert chosen[3] and rejected[2] and chosen[0][:chosen[1]] == rejected[0][:rejected[1]]  # one prompt for both
    assert chosen[1] <= 60 and tiny_tok.decode(chosen[0]).endswith("<|im_start|>assistant\na<|im_end|>\n")
    pairs = [conversation(prompt, long, "No."), conversation("x" * 300, "a", "b"), *PAIRS[:2]]
    with slot(tiny) as sl:
        s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=2, warmup_ratio=0.0, max_length=120, beta=BETA)
        metrics = train_dpo(sl, "a", pairs, s, seed=3)
        s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=2, max_length=120, beta=BETA)
        left_out = train_dpo(sl, "a", pairs, s, seed=3, prompt_tokens=200)
    assert metrics["pairs"] == 4 and metrics["truncated"] == 1 and metrics["prompt_shortened"] == 1
    assert left_out["pairs"] == 3 and left_out["skipped_prompt_too_long"] == 1


def test_training_leaves_inference_slots_alone_until_set_pool(tiny, tmp_path):
    """Inference answers from directories: a trained, saved adapter is served only once set_pool names it."""
    store = ModelStore("cpu")
    be = HFBackend([MemberModel(n, tiny, None) for n in "abc"], LoraShape(), seed=7, store=store)
    prompt = [be.tokenizer("a").encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")]
    before = be.next_token_logprobs(["a"], prompt, list(range(8)), last=1, batch_size=1)
    with slot(tiny, "a", store=store) as sl:
        perturb_adapter(sl, seed=2)
        sl.save(tmp_path / "a")
    assert be.next_token_logprobs(["a"], prompt, list(range(8)), last=1, batch_size=1) == before
    be.set_pool([MemberModel("a", tiny, tmp_path / "a")])
    after = be.next_token_logprobs(["a"], prompt, list(range(8)), last=1, batch_size=1)
    assert after != before
    with slot(tiny, "a", store=store) as sl:  # the same directory rewritten: another adapter
        perturb_adapter(sl, seed=3)
        sl.save(tmp_path / "a")
    be.set_pool([MemberModel("a", tiny, tmp_path / "a")])
    assert be.next_token_logprobs(["a"], prompt, list(range(8)), last=1, batch_size=1) not in (before, after)
    be.set_pool([MemberModel("a", tiny, None)])  # back to a fresh adapter: the base's own outputs again
    assert be.next_token_logprobs(["a"], prompt, list(range(8)), last=1, batch_size=1) == before
    assert store.loads == 1


# Member names may look like module-path segments ("mlp", "0", "layers"): adapter lookup must be exact.


def test_adapter_parameters_are_exact_for_a_member_named_like_a_module(tiny, tmp_path):
    store = ModelStore("cpu")
    with slot(tiny, "mlp", store=store) as mlp:
        with trainer(tiny, store=store).slot(MemberModel("b", tiny, None)) as b:
            assert len(mlp.parameters()) == len(b.parameters()) > 0
            mlp.save(tmp_path / "mlp")
    HFBackend([MemberModel("mlp", tiny, tmp_path / "mlp")], LoraShape(), seed=0, store=store)  # loads cleanly


def test_train_dpo_without_pairs_does_nothing(tiny):
    with slot(tiny) as sl:
        before = snapshot(sl)
        s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=2, beta=BETA, epochs=2)
        assert train_dpo(sl, "a", [], s, seed=3) == {"member": "a", "pairs": 0, "steps": 0}
        assert not changed(sl, before)


# ------------------------------------------------------------------------------------------------------------------
# 4. train_sft


def test_train_sft_lowers_nll_and_trains_only_its_adapter(tiny):
    examples = [("Say hi.", "hi there"), ("What is 2+2?", "4"), ("Name a colour.", "Blue."),
                ("Capital of France?", "Paris")]
    store = ModelStore("cpu")
    HFBackend([MemberModel(n, tiny, None) for n in "ac"], LoraShape(), seed=7, store=store)
    with slot(tiny, "b", store=store) as sl:
        encoded = [encode_example(sl.tokenizer, p, r, 512) for p, r in examples]
        nll_before = mean_nll(sl, encoded)
        before = snapshot(sl)
        s = ExpertsConfig(steps=10, batch_size=2, lr=1e-2, max_length=512)
        metrics = train_sft(sl, "b", examples, s, seed=5)
        nll_after = mean_nll(sl, encoded)
        moved, mine = changed(sl, before), lora_names(sl)
    assert metrics["steps"] == 10 and len(metrics["history"]) == 10
    assert nll_after < nll_before - 0.05, (nll_before, nll_after)
    assert moved and moved <= mine


# ------------------------------------------------------------------------------------------------------------------
# 5. determinism


def test_train_dpo_is_deterministic(tiny):
    s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=1, beta=BETA, epochs=2)
    runs = []
    for _ in range(2):
        with slot(tiny, "c", seed=11) as sl:
            metrics = train_dpo(sl, "c", PAIRS, s, seed=9)
            runs.append((metrics["history"], [p.detach().clone() for p in sl.parameters()]))
    (history1, weights1), (history2, weights2) = runs
    assert history1 == history2
    assert len(weights1) == len(weights2) > 0
    assert all(torch.equal(w1, w2) for w1, w2 in zip(weights1, weights2))
    assert any(torch.count_nonzero(w) for w in weights1[1::2])  # it did train (lora_B moved)


# ------------------------------------------------------------------------------------------------------------------
# 6. save / load


def logits(model, adapter: str, ids: torch.Tensor) -> torch.Tensor:
    model.set_adapter(adapter)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_save_then_load_adapter_restores_outputs(tiny, tmp_path):
    target = tmp_path / "adapters" / "a"
    with slot(tiny) as sl:
        ids = torch.tensor([encode_example(sl.tokenizer, "What is 2+2?", "4", 512)[0]])
        fresh_out = logits(sl.model, sl.adapter, ids)
        perturb_adapter(sl, seed=1)
        out_a = logits(sl.model, sl.adapter, ids)
        assert not torch.allclose(out_a, fresh_out)  # the perturbation shows in the outputs
        sl.save(target)
        sl.save(target)  # overwriting an existing adapter goes through the same temp dir
    assert sorted(p.name for p in target.parent.iterdir()) == ["a"]  # no `.a.tmp` left behind
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in target.iterdir()}

    # the directory is PEFT's on-disk format: a backend serves it, and a trainer starts from it
    be = HFBackend([MemberModel("x", tiny, target), MemberModel("y", tiny, None)], LoraShape(), seed=0,
                   device="cpu")
    base = be.bases[tiny.fingerprint]
    torch.testing.assert_close(logits(base.model, base.slots["x"][0], ids), out_a, rtol=0, atol=1e-6)
    with slot(tiny, "x", adapter_dir=target) as again:
        torch.testing.assert_close(logits(again.model, again.adapter, ids), out_a, rtol=0, atol=1e-6)


def test_bf16_dpo_follows_fp32(tiny):
    """One member, the same pairs and start, fp32 vs a bf16 base (bf16 matmuls, the adapter's deltas and the
    residual stream in fp32): loss after training within 0.02, the same reward accuracy. (Where plain bf16 sums
    fall short, on SmolLM2, is measured by bench.backends; this tiny model's activations do not show it.)"""
    s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=1, warmup_ratio=0.0, beta=BETA, epochs=2)
    after = {}
    for dtype in ("float32", "bfloat16"):
        with slot(tiny, store=ModelStore("cpu", dtype=dtype), dropout=0.0) as sl:
            metrics = train_dpo(sl, "a", PAIRS, s, seed=3)
        after[dtype] = metrics["after"]
    assert after["float32"]["loss"] < LN2 - 0.05  # it learned
    assert abs(after["bfloat16"]["loss"] - after["float32"]["loss"]) < 0.02, after
    assert after["bfloat16"]["reward_accuracy"] == after["float32"]["reward_accuracy"]


# ------------------------------------------------------------------------------------------------------------------
# 7. the CPU cost of DPO (issue 15 §5): the prompt run once per pair, the "after" pass bounded


def shared_prompt_examples(tok) -> list[tuple[list[int], int]]:
    """Two pairs' sequences (chosen and rejected of different lengths) and one sequence whose prompt nobody shares."""
    rows = [("What is 2+2?", "4, since two and two make four"), ("What is 2+2?", "five"),
            ("Name a colour.", "Blue."), ("Name a colour.", "No, I will not name one today."), ("Say hi.", "hi")]
    return [encode_example(tok, p, r, 512) for p, r in rows]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_shared_prompt_row_scores_and_trains_as_separate_rows(tiny, attention):
    """Chosen and rejected after their prompt run once, in one row whose mask hides each response from the other:
    the same log-probs and the same gradients as one row per sequence (fp32, up to the order of sums)."""
    from sparta.training import _Layout

    with slot(tiny, store=ModelStore("cpu", attn_implementation=attention), dropout=0.0) as sl:
        perturb_adapter(sl, seed=4)
        sl.model.set_adapter(sl.adapter)
        examples = shared_prompt_examples(sl.tokenizer)
        shared, alone = _Layout(examples, True), _Layout(examples, False)
        assert (len(shared.prompts), len(shared.rests), len(alone.prompts), len(alone.rests)) == (3, 5, 5, 0)
        out, grads = {}, {}
        for share in (True, False):
            sl.model.zero_grad(set_to_none=True)
            logp, counts = sequence_logprobs(sl.model, examples, sl.tokenizer.pad_token_id, "cpu", share)
            (logp * torch.linspace(1, 2, len(examples))).sum().backward()
            out[share], grads[share] = (logp.detach(), counts), [p.grad.clone() for p in sl.parameters()]
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-4)
    assert out[True][1].tolist() == out[False][1].tolist() == [len(ids) - start for ids, start in examples]
    for shared, alone in zip(grads[True], grads[False]):
        torch.testing.assert_close(shared, alone, rtol=1e-4, atol=1e-5)


def decoder_passes(sl: TrainSlot, examples) -> tuple[int, torch.Tensor]:
    """How many passes sequence_logprobs runs through the decoder for `examples`, and the log-probs."""
    passes = []
    decoder = sl.model.get_base_model().get_decoder()
    hook = decoder.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        with torch.no_grad():
            logp, _ = sequence_logprobs(sl.model, examples, sl.tokenizer.pad_token_id, "cpu")
    finally:
        hook.remove()
    return len(passes), logp


def test_a_model_that_cannot_share_a_prompt_scores_each_sequence_whole(tiny, monkeypatch):
    """Two passes (prompts, then responses on their copied caches) where it is exact; one pass of whole sequences
    under a sliding window the padded prompt and response could exceed, or with gradient checkpointing (which drops
    the cache in training)."""
    store = ModelStore("cpu")
    with slot(tiny, store=store) as sl:
        examples = shared_prompt_examples(sl.tokenizer)
        shared, expected = decoder_passes(sl, examples)
        assert shared == 2
        config = sl.model.get_base_model().config
        monkeypatch.setattr(config, "sliding_window", 8, raising=False)
        passes, logp = decoder_passes(sl, examples)
        assert passes == 1
        torch.testing.assert_close(logp, expected, rtol=0, atol=1e-4)
    with HFTrainer(LoraShape(), 7, store, gradient_checkpointing=True).slot(MemberModel("a", tiny, None)) as sl:
        passes, logp = decoder_passes(sl, examples)
    assert passes == 1
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-4)


def test_dpo_with_shared_prompts_trains_as_before(tiny):
    """The old layout (share_prompts=False) and the new one: the same steps, losses and adapter up to fp32 noise."""
    runs = {}
    for share in (False, True):
        with slot(tiny, "c", seed=11) as sl:
            s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=2, warmup_ratio=0.0, share_prompts=share,
                               beta=BETA, epochs=2)
            metrics = train_dpo(sl, "c", PAIRS, s, seed=9)
            runs[share] = (metrics, [p.detach().clone() for p in sl.parameters()])
    (old, old_weights), (new, new_weights) = runs[False], runs[True]
    assert len(old["history"]) == len(new["history"]) == 4
    for a, b in zip(old["history"], new["history"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    assert new["after"]["loss"] == pytest.approx(old["after"]["loss"], abs=1e-4)
    assert new["after"]["reward_accuracy"] == old["after"]["reward_accuracy"]
    for a, b in zip(old_weights, new_weights):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("limit, scored", [(None, 4), (2, 2), (3, 4), (0, 0)])
def test_after_limit_scores_whole_steps_or_nothing(tiny, limit, scored):
    """after_limit: at least that many pairs in whole steps of the first epoch (None: all; 0: no pass, no "after")."""
    s = TrainingConfig(lr=1e-2, batch_size=2, micro_batch_size=1, warmup_ratio=0.0, after_limit=limit, beta=BETA,
                       epochs=2)
    with slot(tiny) as sl:
        metrics = train_dpo(sl, "a", PAIRS, s, seed=3)
    assert metrics["steps"] == 4 and metrics["loss_first"] == pytest.approx(LN2, abs=1e-4)
    if scored:
        assert metrics["after"]["pairs"] == scored and set(metrics["seconds"]) == {"reference", "steps", "after"}
        assert metrics["after"]["loss"] < LN2
    else:
        assert "after" not in metrics and set(metrics["seconds"]) == {"reference", "steps"}


@pytest.mark.parametrize("dtype, expected", [("bfloat16", "tf32"), ("float32", "ieee")])
def test_the_fp32_head_asks_for_tf32_only_where_it_is_exact(tiny, monkeypatch, dtype, expected):
    """DPO's vocabulary-sized fp32 product may use TF32 (on a GPU: tensor cores) when its inputs are bf16, whose
    8 significant bits TF32 holds exactly; on an fp32 model it must not (TF32 would round). The setting is what
    the product ran under, and it is restored after."""
    from sparta import precision

    seen = []
    real = precision.F.linear  # torch's: every module's linear passes here, the head is told by its shape

    def linear(x, weight, bias=None):
        seen.append((tuple(weight.shape), torch.backends.cuda.matmul.fp32_precision, x.dtype))
        return real(x, weight, bias)

    monkeypatch.setattr(precision.F, "linear", linear)
    before = torch.backends.cuda.matmul.fp32_precision
    with slot(tiny, store=ModelStore("cpu", dtype=dtype), dropout=0.0) as sl:
        examples = shared_prompt_examples(sl.tokenizer)
        with torch.no_grad():
            sequence_logprobs(sl.model, examples, sl.tokenizer.pad_token_id, "cpu")
        vocab = sl.model.get_base_model().get_output_embeddings().weight.shape
    assert [s for s in seen if s[0] == tuple(vocab)] == [(tuple(vocab), expected, torch.float32)]
    assert torch.backends.cuda.matmul.fp32_precision == before


def test_the_after_pass_scores_whole_steps_spread_over_the_epoch():
    assert scored_steps(8, 8, 4) == [0, 4]  # 2 steps of 4 pairs, one early and one halfway
    assert scored_steps(8, 9, 4) == [0, 2, 5]  # at least 9 pairs: 3 whole steps
    assert scored_steps(8, None, 4) == list(range(8)) and scored_steps(8, 0, 4) == []
    assert scored_steps(2, 100, 4) == [0, 1]  # never more than the epoch
