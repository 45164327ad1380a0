"""Checks on a rewrite: pure functions from (rewrite, source caption, completion) to a reason or None.

A rejected rewrite is tried again with fresh examples and seed; after the last attempt it is stored
as null with its reason, never silently replaced by the original. A request the engine could not serve
(ENGINE_UNAVAILABLE) is no verdict on anything: it is stored as failed, not final, and a later run sends it
again.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Callable, Sequence

from . import faithful
from ..engines.base import UNAVAILABLE, Completion
from .prompt import ARROW

CLIP_CONTEXT = 77  # CLIP's text context in tokens, start and end tokens included

EMPTY = "empty"
ECHO = "echo"
COPIED_EXAMPLE = "copied_example"
LEAKED_ARROW = "leaked_arrow"
CUT_AT_MAX_TOKENS = "cut_at_max_tokens"
ENGINE_ERROR = "engine_error"  # the engine refused this request (it would refuse it again): final
ENGINE_UNAVAILABLE = "engine_unavailable"  # the engine could not serve it (server down, overloaded): not final
TOO_LONG_FOR_CLIP = "over_77_clip_tokens"
CONTROL_CHARACTERS = "control_characters"
MOJIBAKE = "mojibake"
EMPTY_CAPTION = "empty_caption"  # the input caption itself is null or blank (row skipped)
UNFAITHFUL = "unfaithful"  # with --min-faithfulness: keeps too little of the caption, or adds too much (faithful.py)
CAPTION_CUT = "caption_cut"  # on an ok row: the caption was cut to --max-caption-tokens (or the context) first

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)
# UTF-8 read as Latin-1/cp1252: "Ã©" for "é", "â€™" for "’", "Â " for a no-break space, and U+FFFD.
_MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                       "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]|â€|\ufffd")


# For ASCII text, _NOT_WORD's work as one byte table: letters lower-cased, digits kept, all else a space.
_ASCII_COMPARABLE = bytes(ord(chr(b).lower()) if chr(b).isascii() and chr(b).isalnum() else 32 for b in range(256))


def comparable(text: str) -> str:
    """Lower case, punctuation and spacing removed: what 'the same caption' means for echo checks."""
    if text.isascii():  # the same string, ~5x sooner (a rewrite is judged with this)
        return " ".join(text.encode().translate(_ASCII_COMPARABLE).decode().split())
    return _NOT_WORD.sub(" ", text.casefold()).strip()


_comparable_seen = lru_cache(maxsize=1 << 14)(comparable)  # captions and example targets: judged again and again


_CONTROL = ("Cc", "Cf", "Zl", "Zp")


def has_control_characters(text: str) -> bool:
    """Control or format characters (C0/C1 controls, zero-width and direction marks), tabs included, and
    the line and paragraph separators U+2028 and U+2029: with the controls, every character that
    str.splitlines() breaks at, so a rewrite never splits a line-per-row file (LaCLIP's caption lists)."""
    if text.isprintable():  # none of those categories is printable: the usual text needs no look at each character
        return False
    return any(unicodedata.category(ch) in _CONTROL for ch in text)


def looks_like_mojibake(text: str) -> bool:
    return not text.isascii() and bool(_MOJIBAKE.search(text))  # (every pattern of it is non-ASCII)


def check(rewrite: str, source: str, completion: Completion, example_targets: Sequence[str],
          clip_tokens: Callable[[str], int] | None = None, min_faithfulness: float | None = None) -> str | None:
    """The reason to reject `rewrite`, or None when it is usable. `clip_tokens` counts CLIP tokens
    (start and end included); a rewrite CLIP would truncate is rejected. With `min_faithfulness`, so is
    one whose faithfulness score (faithful.py) is below it."""
    if completion.finish_reason == UNAVAILABLE:
        return ENGINE_UNAVAILABLE
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
    if flat == _comparable_seen(source):
        return ECHO
    if any(flat == _comparable_seen(t) for t in example_targets):
        return COPIED_EXAMPLE
    if has_control_characters(rewrite):
        return CONTROL_CHARACTERS
    if looks_like_mojibake(rewrite) and not looks_like_mojibake(source):
        return MOJIBAKE
    if clip_tokens is not None and clip_tokens(rewrite) > CLIP_CONTEXT:
        return TOO_LONG_FOR_CLIP
    if min_faithfulness is not None:
        score = faithful.faithfulness(source, rewrite)
        if score is not None and score < min_faithfulness:
            return UNFAITHFUL
    return None
