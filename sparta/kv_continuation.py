"""Run prefixes once and continue their rows on copies of their KV cache.

Sequences that start alike (DPO's chosen and rejected after one prompt, the options of a question, a judge's prompts
after the same instructions) need not each run their common start: a first pass runs each prefix once with
use_cache=True, its cache rows are copied to the rows that continue it, and a second pass runs only the
continuations, each at the positions it has in its whole sequence. Training (sparta.training) and the HF backend
(sparta.backends.hf) both do it here.
"""

from __future__ import annotations

import torch

from .hf_compat import kv_cache, with_cache


def padded(rows: list[list[int]], pad_id: int, device, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one tensor, padded with `pad_id` on the right (`left`: on the left) to the longest, and its
    attention mask."""
    width = max(len(r) for r in rows)
    pads = [width - len(r) for r in rows]
    ids = [[pad_id] * n + r if left else r + [pad_id] * n for r, n in zip(rows, pads)]
    mask = [[0] * n + [1] * len(r) if left else [1] * len(r) + [0] * n for r, n in zip(rows, pads)]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a padded batch: each row's real tokens count from 0 (left padding must not shift them)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def continue_rows(forward, first, prefix_mask: torch.Tensor, expand, ids: torch.Tensor, mask: torch.Tensor,
                  **kwargs):
    """Run rows `ids` (attention mask `mask`, padded on either side) after the prefixes of a first pass: row r
    continues prefix expand[r]. `first` is that pass's output (run with use_cache=True) and `prefix_mask` its
    attention mask (prefixes padded on either side); its cache is copied in place to one row per continuation.
    `forward` is the model or decoder to call, with `kwargs` besides. Returns its output (the continuations')."""
    expand = torch.as_tensor(expand, device=ids.device)
    cache = kv_cache(first)
    cache.reorder_cache(expand)
    # the prefix's and the continuation's padding may sit between the two: masked out, and the positions continue
    # from the prefix's number of real tokens, as in the whole sequence
    positions = prefix_mask.sum(-1)[expand][:, None] + position_ids(mask)
    return forward(input_ids=ids, attention_mask=torch.cat([prefix_mask[expand], mask], -1), position_ids=positions,
                   use_cache=False, **with_cache(cache), **kwargs)
