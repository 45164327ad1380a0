"""Checks on a rewrite: pure functions from (rewrite, source caption, completion) to a reason or None.

A rejected rewrite is tried again with fresh examples and seed; after the last attempt it is stored
as null with its reason, never silently replaced by the original.
"""
from __future__ import annotations

import re
from typing import Sequence

from .engines.base import Completion
from .prompt import ARROW

EMPTY = "empty"
ECHO = "echo"
COPIED_EXAMPLE = "copied_example"
LEAKED_ARROW = "leaked_arrow"
CUT_AT_MAX_TOKENS = "cut_at_max_tokens"
ENGINE_ERROR = "engine_error"
EMPTY_CAPTION = "empty_caption"  # the input caption itself is null or blank (row skipped)

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def comparable(text: str) -> str:
    """Lower case, punctuation and spacing removed: what 'the same caption' means for echo checks."""
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def check(rewrite: str, source: str, completion: Completion, example_targets: Sequence[str]) -> str | None:
    """The reason to reject `rewrite`, or None when it is usable."""
    if completion.finish_reason == "error":
        return ENGINE_ERROR
    if not rewrite:
        return EMPTY
    if completion.finish_reason == "length" and "\n" not in completion.text:
        return CUT_AT_MAX_TOKENS  # (an engine not stopping at the line break may run on past a whole rewrite)
    if ARROW in rewrite:
        return LEAKED_ARROW
    flat = comparable(rewrite)
    if not flat:
        return EMPTY
    if flat == comparable(source):
        return ECHO
    if any(flat == comparable(t) for t in example_targets):
        return COPIED_EXAMPLE
    return None
