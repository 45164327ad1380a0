"""Every random choice of a row is derived from what identifies it, never from a global stream.

So a rewrite depends only on (seed, meta set, row identity, rewrite index, attempt): not on the shard
count, the batch size, engine scheduling or how often the job was restarted.
"""
from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts, stable across processes, machines and Python versions."""
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") >> 1


def example_rng(seed: int, source: str, identity: str, index: int, attempt: int, example_sets: int = 0) -> random.Random:
    """The generator a row's examples are drawn with: fresh for every row (LaCLIP's way), or with
    `example_sets` K > 0 one of K fixed draws per (seed, source), picked by the row, so that rows
    drawing the same set share their prompt prefix and an engine computes it once."""
    if example_sets:
        which = derive_seed(seed, source, identity, index, attempt, "set") % example_sets
        return random.Random(derive_seed(seed, source, which, "example set"))
    return random.Random(derive_seed(seed, source, identity, index, attempt, "examples"))


def generation_seed(seed: int, source: str, identity: str, index: int, attempt: int) -> int:
    return derive_seed(seed, source, identity, index, attempt, "generate") % (2**31)
