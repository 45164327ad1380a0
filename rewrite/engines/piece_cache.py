"""Short texts tokenized from a cache of their pieces' ids, for byte-level BPE tokenizers.

A tokenizer of this kind (GPT-2's, or LLaMA-3's and Qwen2's: a regex split, then byte-level mapping)
cuts a text into pieces with its regex and tokenizes each piece on its own, so a text's ids are its
pieces' ids one after another. Captions repeat their words: once a few thousand are seen, a caption's
ids are a regex split and a dict lookup a piece, ~4 us against ~14 us a 40-character caption in the
Rust tokenizer's batch call (most of that its per-text objects; measured on set coco's captions).

The split is taken for the tokenizer's own only where they provably agree: printable-ASCII text (there
the regex's Unicode classes mean the same in Python as in the tokenizer's regex engine: \\p{L} is
[A-Za-z], so the usual splits run in `re`, others in the `regex` module), holding no added token (the
tokenizer cuts those out first), under a normalizer that leaves ASCII as it is, and with the regex's
matches covering the whole text. Every other text goes to the tokenizer. A tokenizer of any other kind
gets no cache (`PieceCache.of` gives None), and an engine takes the cache only once it gives the
tokenizer's ids on probes (engines.base.TokenizerEngine).
"""
from __future__ import annotations

import json
import re
from typing import Callable, Sequence

import regex

# GPT-2's split, which a ByteLevel pre-tokenizer with use_regex applies (the tokenizers library's own).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PRINTABLE_ASCII = re.compile(r"[ -~]*")
_ASCII_KEEPING_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")  # Unicode normal forms: ASCII is its own
CACHE_MAX = 200_000  # pieces kept; the dict is replaced (never cleared under a reader) when full


def split_pattern(config: dict) -> str | None:
    """The regex a tokenizer (its JSON: `Tokenizer.to_str()`) splits text with before its byte-level
    mapping, or None when it is not one of the two forms the cache knows, or could split any other way
    (a normalizer that changes ASCII, a prefix space added, BPE dropout, truncation or padding)."""
    normalizer, pre, model = config.get("normalizer"), config.get("pre_tokenizer"), config.get("model") or {}
    if normalizer is not None and normalizer.get("type") not in _ASCII_KEEPING_NORMALIZERS:
        return None
    if model.get("dropout") or config.get("truncation") or config.get("padding") or pre is None:
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_SPLIT
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", ())) == 2:
        split, byte_level = pre["pretokenizers"]
        if (split.get("type") == "Split" and "Regex" in split.get("pattern", {}) and split.get("behavior") == "Isolated"
                and not split.get("invert") and byte_level.get("type") == "ByteLevel"
                and not byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space")):
            return split["pattern"]["Regex"]
    return None


# ASCII texts the cache is checked against the tokenizer with (beside engines.base.BATCH_PROBES): each
# alternative of the usual splits (contractions in both cases, runs of digits, punctuation and spaces).
PROBES = ("Dogs' toys aren't HERE; it's a dog's; they'RE gone, I'M sure we'LL see, he'D've", "  12345  6.78e9 x2  ", "!!! ... ?! (a) [b] {c} #1 @x $5 100%",
          "a  b   c    d", " leading and trailing ", "don't 'quote' \"me\" -- ok", "CamelCase snake_case kebab-case")


def _added_contents(backend) -> tuple[str, ...]:
    """The texts of `backend`'s added tokens (the tokenizer cuts them out before its split)."""
    return tuple(t.content for t in backend.get_added_tokens_decoder().values() if t.content)


def probes(backend) -> list[str]:
    """PROBES, and a text around each added token of `backend` (the cache must leave those to it)."""
    try:
        added = _added_contents(backend)
    except AttributeError:
        added = ()
    return [*PROBES, *(f"a {content} b{content}c" for content in added)]


def _config(backend) -> dict:
    """What `split_pattern` reads of a tokenizer's JSON, from its parts (its whole JSON, vocabulary and
    merges included, takes ~20 ms to write out)."""
    def state(part) -> dict | None:
        return None if part is None else json.loads(part.__getstate__())

    return {"normalizer": state(backend.normalizer), "pre_tokenizer": state(backend.pre_tokenizer),
            "model": {"dropout": getattr(backend.model, "dropout", None)},
            "truncation": backend.truncation, "padding": backend.padding}


# The Unicode properties of the usual splits, as their printable-ASCII members.
_ASCII_MEMBERS = {r"\p{L}": "A-Za-z", r"\p{N}": "0-9"}


def ascii_pattern(pattern: str) -> str | None:
    """`pattern` in `re`'s syntax for printable-ASCII text (twice as fast as `regex` on a caption): each
    \\p{L} and \\p{N} as its ASCII members, in a class or as one. None where the pattern has another
    Unicode property or a class this reading could get wrong (nested, or starting with "]")."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        if pattern.startswith(("\\p{", "\\P{"), i):
            end = pattern.find("}", i)
            members = _ASCII_MEMBERS.get(pattern[i:end + 1])
            if members is None:
                return None
            out.append(members if in_class else f"[{members}]")
            i = end + 1
            continue
        if pattern[i] == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if pattern[i] == "[":
            if in_class or pattern.startswith(("[]", "[^]"), i):
                return None
            in_class = True
        elif pattern[i] == "]":
            in_class = False
        out.append(pattern[i])
        i += 1
    try:
        re.compile("".join(out))
    except re.error:
        return None
    return "".join(out)


class PieceCache:
    """`encode_many` of a byte-level BPE tokenizer (a `tokenizers.Tokenizer`) through the cache of its
    pieces' ids; `batch` (the tokenizer's own batch call) takes the texts the cache may not."""

    def __init__(self, backend, pattern: str, batch: Callable[[list[str]], list[list[int]]]):
        from tokenizers import pre_tokenizers

        plain = ascii_pattern(pattern)
        self._split = re.compile(plain).findall if plain is not None else regex.compile(pattern).findall
        self._added = _added_contents(backend)
        self._added_first = frozenset(content[0] for content in self._added)
        self._byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str
        self._model, self._batch = backend.model, batch
        self._ids: dict[str, list[int]] = {}

    @classmethod
    def of(cls, backend, batch: Callable[[list[str]], list[list[int]]]) -> PieceCache | None:
        """The cache for `backend`, or None where its split is not one the cache knows (`split_pattern`)."""
        try:
            pattern = split_pattern(_config(backend))
            return cls(backend, pattern, batch) if pattern is not None else None
        except (AttributeError, TypeError, ValueError, regex.error):  # not a tokenizers.Tokenizer, or a regex `regex` reads otherwise
            return None

    def pieces(self, text: str) -> list[str] | None:
        """The pieces the tokenizer cuts `text` into, or None where the cache cannot know them."""
        if not _PRINTABLE_ASCII.fullmatch(text):
            return None
        if not self._added_first.isdisjoint(text) and any(content in text for content in self._added):
            return None
        pieces = self._split(text)
        return pieces if sum(map(len, pieces)) == len(text) else None  # (a gap the regex left: not the usual form)

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        out: list[list[int] | None] = []
        other = []  # (position, text) the tokenizer takes
        ids = self._ids
        for text in texts:
            pieces = self.pieces(text)
            if pieces is None:
                other.append((len(out), text))
                out.append(None)
                continue
            row: list[int] = []
            for piece in pieces:
                got = ids.get(piece)
                if got is None:
                    got = ids[piece] = self._piece_ids(piece)
                row += got
            out.append(row)
        if len(ids) > CACHE_MAX:
            self._ids = {}
        if other:
            for (at, _), row in zip(other, self._batch([text for _, text in other])):
                out[at] = row
        return out

    def _piece_ids(self, piece: str) -> list[int]:
        """One piece tokenized as the tokenizer does after its split: byte-level mapped, then its model."""
        if not piece:  # (an empty match: the tokenizer drops it)
            return []
        (mapped, _), = self._byte_level(piece)
        return [token.id for token in self._model.tokenize(mapped)]
