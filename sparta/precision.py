"""The output layer in fp32: what DPO's log-probs and the judges' scores read.

bf16 logits round by ~0.1 at typical magnitudes, about the size of DPO's rewards, so the vocabulary-sized product
runs on fp32 copies of its input and weights. On a GPU an fp32 matmul without TF32 runs on the CUDA cores at a
fifteenth of the tensor cores' bf16 rate; at 7B shapes that head would be the largest part of a DPO step. When
both inputs are half precision (bf16: 8 significant bits, fp16: 11), TF32's 11 significant bits hold them exactly,
so TF32 computes the same products, summed in fp32 (only the order of the sums differs): the head asks for TF32
then, and for full fp32 when an input is fp32 (a CPU model), where TF32 would round.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

HALF = (torch.bfloat16, torch.float16)


def fp32_linear(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)` in fp32: fp32 copies of input and weights, under an outer autocast too."""
    exact_in_tf32 = hidden.dtype in HALF and head.weight.dtype in HALF
    bias = head.bias.float() if head.bias is not None else None
    with torch.autocast(hidden.device.type, enabled=False), tf32_matmuls(exact_in_tf32):
        return F.linear(hidden.float(), head.weight.float(), bias)


@contextmanager
def tf32_matmuls(on: bool):
    """While open, CUDA fp32 matmuls may use TF32 (`on`), or must not; the setting is restored after."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32" if on else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = before
