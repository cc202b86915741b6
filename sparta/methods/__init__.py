"""The methods a run can align its pool with: SPARTA (combat, `methods.sparta`) and the paper's self-alignment
baselines (`methods.self_alignment`: self-rewarding, meta-rewarding, SPIN, SPPO), as equals.

A method makes an iteration's training rows from its prompts; the engine (sparta.pipeline) does the rest: prompts,
pairs.jsonl, training every member, metrics, done-markers. Adding a method is one class that follows `Method` and
one line in `METHODS` (and its name in config.METHODS); docs/architecture.md walks through one.
"""

from __future__ import annotations

from ..config import METHODS as METHOD_NAMES
from ..config import RunConfig
from .base import Engine, Method, Played
from .self_alignment import SPPO, MetaRewarding, SelfRewarding, Spin
from .sparta import Sparta

METHODS: dict[str, type] = {"sparta": Sparta, "self_rewarding": SelfRewarding, "meta_rewarding": MetaRewarding,
                            "spin": Spin, "sppo": SPPO}
assert set(METHODS) == set(METHOD_NAMES), "config.METHODS and sparta.methods.METHODS disagree"

__all__ = ["METHODS", "Engine", "Method", "Played", "method_for"]


def method_for(config: RunConfig) -> Method:
    return METHODS[config.method](config)
