"""Shard patterns: bash/webdataset brace expansion of shard lists given on the command line."""
from __future__ import annotations

import re

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")


def expand_braces(pattern: str) -> list[str]:
    """Expand bash/webdataset brace patterns (`{00000..00127}`, `{a,b}`, several, nested) in order.

    Shard lists are given this way on the command line; zero padding is kept as bash keeps it. Braces
    that are neither a range nor a comma list stay literal, as in bash."""
    start, end = _first_group(pattern)
    if start < 0:
        return [pattern]
    prefix, body, suffix = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
    alternatives = _range_items(body)
    if alternatives is None:
        parts = _split_top_commas(body)
        if len(parts) < 2:  # `{x}`: literal; expand what follows it
            return [prefix + "{" + body + "}" + rest for rest in expand_braces(suffix)]
        alternatives = [item for part in parts for item in expand_braces(part)]
    tails = expand_braces(suffix)
    return [prefix + alt + tail for alt in alternatives for tail in tails]


def _first_group(pattern: str) -> tuple[int, int]:
    """Index of the first `{` that has a matching `}` (nesting counted), and of that `}`; -1s if none."""
    for start, char in enumerate(pattern):
        if char != "{":
            continue
        depth = 0
        for end in range(start, len(pattern)):
            depth += {"{": 1, "}": -1}.get(pattern[end], 0)
            if depth == 0:
                return start, end
    return -1, -1


def _split_top_commas(body: str) -> list[str]:
    """Split a brace body at the commas that are not inside a nested group."""
    parts, depth, current = [], 0, []
    for char in body:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current.append(char)
    parts.append("".join(current))
    return parts


def _range_items(body: str) -> list[str] | None:
    """`a..b[..step]` as bash expands it (either end with a leading zero pads all); None if not a range."""
    match = _RANGE.match(body)
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    step = abs(int(match.group(3) or 1)) or 1
    padded = any(re.match(r"^-?0\d", end) for end in match.group(1, 2))
    width = max(len(match.group(1)), len(match.group(2))) if padded else 0
    numbers = range(first, last + 1, step) if first <= last else range(first, last - 1, -step)
    return [f"{n:0{width}d}" for n in numbers]
