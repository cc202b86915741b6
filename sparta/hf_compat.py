"""The one place that knows which transformers is installed (sparta supports 5.17 to 5.24: pyproject.toml).

Two names sparta uses changed within that range; each is chosen by asking transformers whether it has the new
one (not by version number, so any release that carries a name gets it):
- the KV cache of model outputs and of forward()'s arguments: `cache` from 5.24, `past_key_values` before (5.24
  still takes the old name, with a warning, until 5.40);
- gradient checkpointing: `activation_checkpointing_enable/_disable/is_...` from 5.23, `gradient_checkpointing_...`
  before (kept as aliases that warn, until v6).
"""

from __future__ import annotations

import functools


@functools.cache
def cache_name() -> str:
    """The name of the KV cache on a model's output and in its forward()'s keyword arguments."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def kv_cache(output):
    """The KV cache a forward pass with use_cache=True returned."""
    return getattr(output, cache_name())


def with_cache(cache) -> dict:
    """Keyword arguments that hand `cache` to a model's forward()."""
    return {cache_name(): cache}


def _new_checkpointing(model) -> bool:
    return hasattr(model, "activation_checkpointing_enable")


def is_checkpointing(model) -> bool:
    """Whether gradient (activation) checkpointing is on for `model` (a PEFT model passes it through)."""
    return model.is_activation_checkpointing if _new_checkpointing(model) else model.is_gradient_checkpointing


def set_checkpointing(model, on: bool) -> None:
    """Turn gradient checkpointing on (non-reentrant: LoRA's inputs need no grad) or off."""
    if _new_checkpointing(model):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
