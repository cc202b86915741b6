"""Inference batches whose rows use different LoRA adapters of one PEFT model, at nearly one adapter's cost.

PEFT's own mixed batch (`adapter_names=`) loops, in every LoRA layer and every decoding step, over the
adapters present: it rebuilds Python index lists, gathers each adapter's rows, runs its two small matmuls and
scatters the result back. On a CPU that is ~6 extra small ops per adapter per layer, which cost a 135M model
~30% of its decoding speed with 4 adapters (measured, bench/). Here each layer instead concatenates the
adapters' A matrices (and their scaled B matrices) once per batch, and runs

    delta = ((x @ A_cat^T) * row_mask) @ B_cat^T

— two matmuls and one multiply whatever the number of adapters; the mask keeps each row's own adapter's
rank slots. The extra work is the other adapters' rank-r products, small next to the base layer's.

Only vanilla LoRA on linear layers takes this path; anything else (DoRA and other variants, LoRA biases,
embedding LoRA) returns None from `row_lora` and the caller falls back to PEFT's path.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _layers(model) -> list:
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if isinstance(m, Linear)]


def _supported(model, adapters: set[str]) -> bool:
    for m in model.modules():
        if any(a in getattr(m, "lora_embedding_A", {}) for a in adapters):
            return False
        if any(a in getattr(m, "lora_variant", {}) or getattr(m, "lora_bias", {}).get(a) for a in adapters):
            return False
    return True


def _stacked(layer, rows: list[str], masks: dict):
    """(A_cat [sum r, d_in], B_cat scaled [d_out, sum r], mask [rows, 1, sum r] or None) for the adapters of
    `rows` that this layer has; None if it has none of them. `masks` caches the masks of this batch by layout."""
    present = [a for a in dict.fromkeys(rows) if a in layer.lora_A]
    if not present:
        return None
    a_cat = torch.cat([layer.lora_A[a].weight for a in present])
    b_cat = torch.cat([layer.lora_B[a].weight * layer.scaling[a] for a in present], dim=1)
    if len(present) == 1 and len(set(rows)) == 1:
        return a_cat, b_cat, None  # one adapter for every row: no mask
    widths = tuple((a, layer.lora_A[a].weight.shape[0]) for a in present)
    key = (widths, a_cat.dtype, a_cat.device)
    if key not in masks:  # most layers share a layout: one mask, one host-to-device copy, per batch
        masks[key] = _row_mask(rows, dict(widths)).to(a_cat.device, a_cat.dtype)
    return a_cat, b_cat, masks[key]


def _row_mask(rows: list[str], widths: dict[str, int]) -> torch.Tensor:
    """[rows, 1, sum of widths] on the CPU: 1 in row i's own adapter's rank slots (none if its adapter is absent).
    Built as a list and made a tensor in one op: filled on the GPU it cost one small kernel per row per layer."""
    slot, start = {}, 0
    for a, width in widths.items():
        slot[a] = (start, start + width)
        start += width
    # a row whose adapter skips this layer gets no delta here
    mask = [[float(a in slot and slot[a][0] <= j < slot[a][1]) for j in range(start)] for a in rows]
    return torch.tensor(mask).unsqueeze(1)


@contextmanager
def row_lora(model, rows: list[str]):
    """While active, row i of every batch through `model` (a PeftModel) uses adapter rows[i].

    Yields False (and changes nothing) when an adapter is not vanilla LoRA: the caller then uses PEFT's path.
    Inference only: the stacked weights are detached copies made on entry."""
    layers = _layers(model)
    if not _supported(model, set(rows)):
        yield False
        return
    hooks, disabled, masks = [], [], {}
    try:
        for layer in layers:
            stacked = _stacked(layer, rows, masks)
            # PEFT's own LoRA add is switched off (its flag, not enable_adapters(): that resets requires_grad)
            disabled.append((layer, layer._disable_adapters))
            layer._disable_adapters = True
            if stacked is not None:
                hooks.append(layer.register_forward_hook(_adder(*stacked)))
        yield True
    finally:
        for h in hooks:
            h.remove()
        for layer, flag in disabled:
            layer._disable_adapters = flag


def _adder(a_cat, b_cat, mask):
    a_cat, b_cat = a_cat.detach(), b_cat.detach()

    def hook(_module, args, output):
        h = torch.nn.functional.linear(args[0].to(a_cat.dtype), a_cat)
        if mask is not None:
            h = h * mask
        return output + torch.nn.functional.linear(h, b_cat).to(output.dtype)

    return hook


@contextmanager
def fp32_lora_sums(model, adapter: str):
    """Training a LoRA on a bf16 base: matmuls in bf16 (autocast), but each adapted layer returns its base output
    plus the adapter's delta in fp32, so the residual stream downstream is fp32 too. Added to a bf16 activation, the
    small delta of a young adapter rounds away (measured: one DPO epoch moved a bf16 policy a third as far as fp32).
    Gradients flow into `adapter`'s A and B as in PEFT's own forward (with its dropout, when training)."""
    if not _supported(model, {adapter}):
        raise ValueError(f"adapter {adapter!r} is not a plain LoRA: bf16 training needs model.dtype=float32")
    layers = [m for m in _layers(model) if adapter in m.lora_A]
    hooks, disabled = [], []
    try:
        for layer in layers:
            disabled.append((layer, layer._disable_adapters))
            layer._disable_adapters = True
            hooks.append(layer.register_forward_hook(_fp32_adder(layer, adapter)))
        with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
            yield
    finally:
        for h in hooks:
            h.remove()
        for layer, flag in disabled:
            layer._disable_adapters = flag


def _fp32_adder(layer, adapter: str):
    a, b, dropout, scale = layer.lora_A[adapter], layer.lora_B[adapter], layer.lora_dropout[adapter], \
        layer.scaling[adapter]

    def hook(_module, args, output):
        with torch.autocast(output.device.type, enabled=False):
            delta = torch.nn.functional.linear(torch.nn.functional.linear(dropout(args[0]).float(), a.weight), b.weight)
            return output.float() + delta * scale

    return hook
