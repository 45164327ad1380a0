"""Counting CLIP text tokens with the BPE tokenizer that ships inside the open-clip-torch package.

Only open_clip's tokenizer module is loaded, from its file: importing the `open_clip` package would
import its models, transforms and torchvision, none of which counting needs. Nothing is downloaded:
the BPE vocabulary is a file inside the package.

Two paths give the same counts. open_clip's `SimpleTokenizer` (ftfy, html.unescape, Python BPE: about
150-250 µs a text) is the reference and counts every text the fast path does not take. The fast path
takes the texts where it provably agrees: plain printable ASCII (see `_fast_path_ok`), which
SimpleTokenizer's cleaning leaves unchanged apart from lower-casing and whitespace. It splits such a text
with SimpleTokenizer's own regex (in its ASCII form) into pieces, BPE works on each piece on its own, and
a piece's token count comes from a cache or, for the pieces not seen yet, from one `encode_batch` call
to a `tokenizers.Tokenizer` (Rust) built here from that SimpleTokenizer's vocabulary and merges. A
whitespace-separated word's count (the sum of its pieces') is cached too, so a text seen word by word
costs a split and a lookup a word (~4 µs a rewrite against ~6 through pieces). (Giving whole texts to
encode_batch works too, but its per-word bookkeeping made it 60-75 µs a caption against about 15 for
the piece cache.) When the Rust tokenizer cannot be built (a tokenizers version lacking
something) or fails its self-check, everything goes the slow way.
"""
from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

INSTALL_HINT = "pip install --no-deps open-clip-torch ftfy"


class ClipTokenizerError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def _tokenizer():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ClipTokenizerError(f"checking rewrites against CLIP's 77 tokens needs open-clip-torch: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("rewrite._open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ImportError as e:
        raise ClipTokenizerError(f"open_clip's tokenizer needs {e.name}: {INSTALL_HINT}") from None
    return module.SimpleTokenizer()


# SimpleTokenizer's regex, without its special-token alternatives (texts naming those go the slow way).
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# The regex for text that passed _fast_path_ok, lower-cased: there [\p{L}] is [a-z], [\p{N}] is [0-9]
# and \s is [ \t\n\r] (no other whitespace passes), so it finds the same pieces as _CLIP_SPLIT.
_ASCII_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^ \t\n\ra-z0-9]+""")
_PIECE_CACHE_MAX = 200_000
_piece_tokens: dict[str, int] = {}  # piece -> its BPE token count; replaced (never cleared) when full
# Whitespace-separated word (lower-cased) -> the token count of its pieces. No piece spans whitespace and
# the regex looks at nothing outside its match, so a text's pieces are its words' pieces one after another.
_word_tokens: dict[str, int] = {}

# Texts the fast path counts: ASCII printable characters (space to "~") and the whitespace
# space, tab, LF, CR, with no "&". On such text ftfy.fix_text changes nothing but CR / CRLF to LF
# (its other fixes need non-ASCII characters, control characters or HTML entities), html.unescape
# changes nothing (no "&"), and what is left of SimpleTokenizer's cleaning (whitespace collapsing,
# str.lower) does not change the regex's pieces but for their case. Vertical tab and form feed are
# excluded: ftfy removes some control characters, which would join the words around them.
_FAST_TEXT = re.compile(r"[ -%'-~\t\n\r]*")
# SimpleTokenizer's regex matches its special tokens whole (its text is lower-cased first).
_SPECIAL = ("<start_of_text>", "<end_of_text>")


def _fast_path_ok(text: str) -> bool:
    if not _FAST_TEXT.fullmatch(text):
        return False
    lowered = text.lower()
    return not any(s in lowered for s in _SPECIAL)


_SELF_CHECK = [
    "A red bicycle, leaning against the brick wall.",
    "it's DON'T they're we've I'm you'll he'd 'S",
    "3.5mm jack 1234 -- !!! ... ?! (x) [y] {z} a_b #1 @home $5 100%",
    "  multiple   spaces\tand\ttabs\nand\r\nnewlines  ",
    "zzzzzzzz qqqq antidisestablishmentarianism xkcd",
    "",
]


@lru_cache(maxsize=1)
def _rust_tokenizer():
    """A tokenizers.Tokenizer reproducing SimpleTokenizer on fast-path text, or None."""
    simple = _tokenizer()
    try:
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

        merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.__getitem__)
        tokenizer = Tokenizer(models.BPE(vocab=dict(simple.encoder), merges=merges, dropout=None,
                                         continuing_subword_prefix="", end_of_word_suffix="</w>",
                                         fuse_unk=False))
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            # keep the regex's matches, drop what lies between them (whitespace)
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        for text in _SELF_CHECK:
            got = tokenizer.encode_batch([text], add_special_tokens=False)[0].ids
            if list(got) != simple.encode(text):
                return None
        return tokenizer
    except Exception:  # an older or newer tokenizers lacking something: the slow path counts all
        return None


def count_many_routed(texts: Sequence[str]) -> tuple[list[int], list[bool]]:
    """The counts of `count_many`, and for each text whether the fast (Rust) path counted it."""
    global _piece_tokens, _word_tokens
    simple = _tokenizer()
    rust = _rust_tokenizer()
    fast = [rust is not None and _fast_path_ok(t) for t in texts]
    counts = [0] * len(texts)
    fast_at = [i for i, f in enumerate(fast) if f]
    if fast_at:
        known = _word_tokens
        words = [texts[i].lower().split() for i in fast_at]
        new_words = list(dict.fromkeys(w for text_words in words for w in text_words if w not in known))
        if new_words:
            cache = _piece_tokens
            pieces = [_ASCII_SPLIT.findall(w) for w in new_words]
            missing = list(dict.fromkeys(p for word_pieces in pieces for p in word_pieces if p not in cache))
            if missing:
                encodings = rust.encode_batch(missing, add_special_tokens=False)
                cache.update((p, len(e.ids)) for p, e in zip(missing, encodings))
            known.update((w, sum(map(cache.__getitem__, word_pieces))) for w, word_pieces in zip(new_words, pieces))
            if len(cache) > _PIECE_CACHE_MAX:
                _piece_tokens = {}
            if len(known) > _PIECE_CACHE_MAX:
                _word_tokens = {}
        for i, text_words in zip(fast_at, words):
            counts[i] = sum(map(known.__getitem__, text_words)) + 2
    for i, f in enumerate(fast):
        if not f:
            counts[i] = len(simple.encode(texts[i])) + 2
    return counts, fast


def count_many(texts: Sequence[str]) -> list[int]:
    """Tokens CLIP's text encoder sees for each text, its start and end tokens included:
    `[count(t) for t in texts]`, plain ASCII texts counted by the fast path."""
    return count_many_routed(texts)[0]


def count(text: str) -> int:
    """Tokens CLIP's text encoder sees for `text`, its start and end tokens included."""
    return count_many([text])[0]


def check_available() -> None:
    """Load CLIP's tokenizer and build the fast path now, before a run's first rewrite is judged: in a
    stream, their ~0.1-2 s would otherwise hold the GIL while the engine waits for requests."""
    _tokenizer()
    _rust_tokenizer()
