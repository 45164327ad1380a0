"""Every random choice of a row is derived from what identifies it, never from a global stream.

So a rewrite depends only on (seed, meta set, row identity, rewrite index, attempt): not on the shard
count, the batch size, engine scheduling or how often the job was restarted.
"""
from __future__ import annotations

import hashlib
import math
import random


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts, stable across processes, machines and Python versions."""
    text = "\x1f".join(map(str, parts)).encode("utf-8")
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


def sample_indices(rng: random.Random, n: int, k: int) -> list[int]:
    """`rng.sample(range(n), k)`: the same indices in the same order, drawn as CPython's random.sample
    draws them (its pool for a small n, its set of picks for a large one), without its checks of the
    population's type, which cost as much as the draws in a loop run for every request."""
    if not 0 <= k <= n:
        raise ValueError("Sample larger than population or is negative")
    getrandbits = rng.getrandbits
    setsize = 21 + (4 ** math.ceil(math.log(k * 3, 4)) if k > 5 else 0)
    result = []
    if n <= setsize:
        pool = list(range(n))
        for i in range(k):
            left = n - i
            bits = left.bit_length()
            j = getrandbits(bits)
            while j >= left:
                j = getrandbits(bits)
            result.append(pool[j])
            pool[j] = pool[left - 1]
        return result
    bits, selected = n.bit_length(), set()
    for _ in range(k):
        j = getrandbits(bits)
        while j >= n or j in selected:
            j = getrandbits(bits)
        selected.add(j)
        result.append(j)
    return result
