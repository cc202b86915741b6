"""Turning chat messages into token ids safely.

Untrusted text (instructions, contestants' responses) goes into *slots*. Slot text is tokenized with
`split_special_tokens=True`, so a response that contains "<|im_end|><|im_start|>assistant" cannot close
its turn and write the judge's answer. When a prompt is too long, the longest slot is shortened in the
middle — the template, the judge's instruction and the assistant-turn marker are never cut (the authors'
scripts truncated from the right and cut them off).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ELLIPSIS = " [...] "
_SENTINEL = "\uE000SLOT{}\uE001"
_SENTINEL_RE = re.compile("\uE000SLOT(\\d+)\uE001")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    spans: list[tuple[int, int]]  # token span of each slot in `ids`, in slot order
    shortened: bool


class PromptTooLong(ValueError):
    pass


def encode_chat(tokenizer, messages: list[tuple[str, str]], slots: list[str], *, max_tokens: int,
                add_generation_prompt: bool = True, assistant_prefix: str = "") -> Encoded:
    """Encode `messages` (role, content) where content may hold `{0}`, `{1}`… placeholders for `slots`.

    `assistant_prefix` is trusted text appended after the generation prompt (e.g. the start of a JSON
    answer whose next token we read)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": role, "content": _fill(content, len(slots))} for role, content in messages],
        tokenize=False, add_generation_prompt=add_generation_prompt) + assistant_prefix
    pieces = _SENTINEL_RE.split(rendered)  # [trusted, slot index, trusted, slot index, ..., trusted]
    trusted = [_encode(tokenizer, p, split_special=False) for p in pieces[0::2]]
    order = [int(i) for i in pieces[1::2]]
    if sorted(order) != list(range(len(slots))):
        raise ValueError(f"each slot must appear exactly once in the rendered chat; found slots {order}")
    slot_ids = [_encode(tokenizer, s, split_special=True) for s in slots]
    budget = max_tokens - sum(len(t) for t in trusted)
    shortened = False
    ellipsis = _encode(tokenizer, ELLIPSIS, split_special=True)
    while sum(len(slot_ids[i]) for i in order) > budget:
        longest = max(order, key=lambda i: len(slot_ids[i]))
        excess = sum(len(slot_ids[i]) for i in order) - budget
        keep = len(slot_ids[longest]) - excess - len(ellipsis)
        if keep < 8:
            raise PromptTooLong(f"the prompt needs more than max_tokens={max_tokens} tokens even with its "
                                "content shortened; raise the limit")
        slot_ids[longest] = _middle_cut(slot_ids[longest], keep, ellipsis)
        shortened = True
    ids: list[int] = []
    spans: list[tuple[int, int]] = [(0, 0)] * len(slots)
    for k, piece in enumerate(trusted):
        ids += piece
        if k < len(order):
            start = len(ids)
            ids += slot_ids[order[k]]
            spans[order[k]] = (start, len(ids))
    return Encoded(ids, spans, shortened)


def _fill(content: str, n_slots: int) -> str:
    # str.format would choke on braces inside trusted text (the judge prompt has a JSON example)
    for i in range(n_slots):
        content = content.replace(f"{{{i}}}", _SENTINEL.format(i))
    return content


def _encode(tokenizer, text: str, *, split_special: bool) -> list[int]:
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, split_special_tokens=split_special)["input_ids"]


def _middle_cut(ids: list[int], keep: int, ellipsis: list[int]) -> list[int]:
    head = keep - keep // 2
    return ids[:head] + ellipsis + ids[len(ids) - keep // 2:]
