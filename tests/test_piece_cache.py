"""Captions tokenized from cached pieces give the tokenizer's own ids (engines/piece_cache.py), with the
packaged model's tokenizer (GPT-2's split) and the same vocabulary behind LLaMA-3's form of split."""
import random

import pytest
from tokenizers import Regex, pre_tokenizers

from rewrite.engines import piece_cache
from rewrite.engines.piece_cache import PieceCache, split_pattern

# LLaMA-3's split (its tokenizer.json), the form Qwen2's and others' share: a Split, then byte-level.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.fixture(scope="module")
def packaged():
    from transformers import AutoTokenizer

    from rewrite.engines import model

    return AutoTokenizer.from_pretrained(model.resolve(None))


# The same split with letters as two properties that ascii_pattern does not read: the `regex` module splits.
CASED_SPLIT = LLAMA3_SPLIT.replace(r"\p{L}+", r"[\p{Lu}\p{Ll}\p{Lt}\p{Lm}\p{Lo}]+")
SPLITS = {"llama3": LLAMA3_SPLIT, "cased": CASED_SPLIT}


def backend_of(packaged, split: str):
    backend = packaged.backend_tokenizer
    if split in SPLITS:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLITS[split]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return backend


def texts_to_try() -> list[str]:
    rng = random.Random(7)
    ascii_chars = [chr(i) for i in range(32, 127)] + [" "] * 20 + list("aeiouAEIOU'0123") * 3
    made = ["".join(rng.choice(ascii_chars) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    crafted = ["a dog", "A Dog's toys AREN'T here; they'RE   gone", "12345 678 9", "  two  leading, trailing  ",
               "!!! ... ?! (x) [y] {z}", "x'", "'s", "don''t", "Ends with a space ", " ", "", "a\tb\nc", "café au lait",
               "日本語", "an emoji 🐶", "<|endoftext|>", "a <|im_start|>b", "<repo_name>x", "1,000,000 people"]
    return crafted + made


@pytest.mark.parametrize("split", ["gpt2", "llama3", "cased"])
def test_pieces_give_the_tokenizers_own_ids(packaged, split):
    backend = backend_of(packaged, split)
    given_to_tokenizer = []

    def batch(texts):
        given_to_tokenizer.extend(texts)
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    cache = PieceCache.of(backend, batch)
    assert cache is not None
    assert (cache._split.__self__.__class__.__module__ == "re") == (split != "cased")  # which engine splits
    texts = texts_to_try()
    expected = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    assert cache.encode_many(texts) == expected
    assert cache.encode_many(texts) == expected  # again, from the cache
    # What the cache may not split goes to the tokenizer: tabs and line breaks, non-ASCII, added tokens.
    assert set(given_to_tokenizer) == {"a\tb\nc", "café au lait", "日本語", "an emoji 🐶", "<|endoftext|>",
                                       "a <|im_start|>b", "<repo_name>x"}


def test_split_pattern_only_for_splits_it_can_follow():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert split_pattern({"pre_tokenizer": byte_level}) == piece_cache.GPT2_SPLIT
    assert split_pattern({"pre_tokenizer": byte_level, "normalizer": {"type": "NFC"}}) == piece_cache.GPT2_SPLIT
    sequence = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "x"}, "behavior": "Isolated", "invert": False},
        {**byte_level, "use_regex": False}]}
    assert split_pattern({"pre_tokenizer": sequence}) == "x"
    refused = [
        {"pre_tokenizer": None},  # one piece a text (SentencePiece's way): nothing to cache
        {"pre_tokenizer": byte_level, "normalizer": {"type": "Lowercase"}},
        {"pre_tokenizer": {**byte_level, "add_prefix_space": True}},
        {"pre_tokenizer": byte_level, "model": {"dropout": 0.1}},
        {"pre_tokenizer": byte_level, "truncation": {"max_length": 8}},
        {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}},
        {"pre_tokenizer": {**sequence, "pretokenizers": [{**sequence["pretokenizers"][0], "behavior": "Removed"},
                                                         sequence["pretokenizers"][1]]}},
        {"pre_tokenizer": {**sequence, "pretokenizers": [sequence["pretokenizers"][0], byte_level]}},
    ]
    assert [split_pattern(config) for config in refused] == [None] * len(refused)


def test_the_engines_batch_encoder_is_the_piece_cache_for_the_packaged_model(engine):
    encode_many = engine._batch_encoder()
    assert isinstance(getattr(encode_many, "__self__", None), PieceCache)
    texts = texts_to_try()[:300]
    assert engine.encode_many(texts) == [engine.encode(t) for t in texts]


def test_ascii_pattern_reads_letters_and_digits_only():
    assert piece_cache.ascii_pattern(r" ?\p{L}+|[^\s\p{L}\p{N}]+") == r" ?[A-Za-z]+|[^\sA-Za-z0-9]+"
    assert piece_cache.ascii_pattern(r"\\p{L}") == r"\\p{L}"  # an escaped backslash, then "p{L}" as text
    for unread in (r"\p{Lu}+", r"\P{L}", r"[]a]", r"[^]a]", r"[[a]b]", r"(unclosed"):
        assert piece_cache.ascii_pattern(unread) is None, unread
