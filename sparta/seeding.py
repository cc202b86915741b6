"""Explicit randomness: every random choice derives its seed from the run seed and where it happens."""

import hashlib
import random


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from (seed, parts): same inputs, same seed, on every machine and Python version."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def rng(seed: int, *parts: object) -> random.Random:
    return random.Random(derive_seed(seed, *parts))
