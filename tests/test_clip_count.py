"""clip_tokens.count_many (Rust tokenizers for plain ASCII, open_clip's SimpleTokenizer for the rest)
against SimpleTokenizer itself, loaded here from open_clip's tokenizer.py on its own."""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from rewrite.rewriting import clip_tokens

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def simple():
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open-clip-torch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_test_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def reference(simple, texts):
    return [len(simple.encode(t)) + 2 for t in texts]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def file_corpus():
    texts = (ROOT / "demo" / "captions.txt").read_text(encoding="utf-8").splitlines()
    for path in sorted((ROOT / "meta_pairs").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.extend(_strings(json.loads(line)))
    return texts


HARD = [
    "", " ", "\t\n", "A RED BICYCLE Leaning Against A Wall", "it's", "DON'T", "It'S", "they're we've I'm you'll he'd",
    "'s", "''s", "'sam", "rock'n'roll", "o'clock", "dogs' bowls", "'quoted'", "1234", "3.5mm", "1,000,000 people",
    "2x4", "a1b2c3", "!!!", "?!?!", "... --- ...", "(a) [b] {c} <d>", "a_b_c", "#hashtag @user $5 100% ^*~`|\\",
    "word.word,word;word:word", "multiple   spaces", "tabs\tbetween\twords", "new\nlines\n\nhere", "cr\rlf\r\nend",
    "   leading and trailing   ", "\t tab lead", "&amp;", "fish &amp; chips", "fish & chips", "&lt;b&gt;bold&lt;/b&gt;",
    "&amp;amp;", "&#39;quoted&#39;", "&nbsp;space", "&", "café terrace in münchen", "naïve résumé", "ÉCOLE",
    "東京タワーの夜景", "一只猫", "🐶 dog with 🎾", "👩‍👩‍👧 family", "“curly” ‘quotes’", "it’s", "ﬁsh ﬂower ligatures",
    "cafÃ©", "Ã¢â‚¬â„¢", "fullwidth ＡＢＣ １２３", "ß straße", "İstanbul", "ǅ title case", "x\u00a0nbsp", "em—dash – en",
    "ellipsis…", "control\x0bvt", "form\x0cfeed", "esc\x1b[31mred", "del\x7fete", "nul\x00byte", "\x85next line",
    "<start_of_text>", "a <end_of_text> b", "<START_OF_TEXT>x", "!!<start_of_text>", "<start_of_text",
    "zzzzzzzzzzzz qqqqqq xkcd aaaaaaaaa", "antidisestablishmentarianism",
    " ".join(["word"] * 500), " ".join(f"caption{i} with, punctuation." for i in range(500)),
]


def random_ascii(rng, n):
    """Random ASCII texts heavy in the characters that matter: letters of both cases, apostrophes,
    digits, punctuation runs and whitespace."""
    pieces = ["a", "s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "LL", "D", "'", "'", "0", "7", ".",
              "!", "-", "_", " ", " ", " ", "  ", "\t", "\n", "\r", "the", "The", "dog", "xyz", "q", "&", "~"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_count_many_matches_simple_tokenizer_on_files(simple):
    texts = file_corpus()
    assert len(texts) > 200
    assert clip_tokens.count_many(texts) == reference(simple, texts)


def test_count_many_matches_simple_tokenizer_on_hard_cases(simple):
    counts, fast = clip_tokens.count_many_routed(HARD)
    expected = reference(simple, HARD)
    assert [(t, c) for t, c in zip(HARD, counts)] == [(t, c) for t, c in zip(HARD, expected)]
    assert [clip_tokens.count(t) for t in HARD] == expected
    routed = dict(zip(HARD, fast))
    assert routed["DON'T"] and routed["3.5mm"] and routed["cr\rlf\r\nend"] and routed[" ".join(["word"] * 500)]
    for slow in ("fish &amp; chips", "fish & chips", "café terrace in münchen", "it’s", "cafÃ©", "🐶 dog with 🎾",
                 "control\x0bvt", "form\x0cfeed", "esc\x1b[31mred", "<start_of_text>", "<START_OF_TEXT>x"):
        assert not routed[slow], slow


def test_count_many_matches_simple_tokenizer_on_random_ascii(simple, monkeypatch):
    monkeypatch.setattr(clip_tokens, "_piece_tokens", {})  # every piece counted by encode_batch afresh
    monkeypatch.setattr(clip_tokens, "_word_tokens", {})
    texts = random_ascii(random.Random(1234), 1500)
    counts, fast = clip_tokens.count_many_routed(texts)
    assert counts == reference(simple, texts)
    assert sum(fast) > 700  # the rest hold "&"
    assert clip_tokens.count_many(texts) == counts  # now from the word and piece caches


def test_rust_tokenizer_gives_simple_tokenizer_ids_on_whole_texts(simple):
    rust = clip_tokens._rust_tokenizer()
    assert rust is not None
    texts = [t for t in file_corpus() + HARD + random_ascii(random.Random(99), 300) if clip_tokens._fast_path_ok(t)]
    got = [list(e.ids) for e in rust.encode_batch(texts, add_special_tokens=False)]
    assert got == [simple.encode(t) for t in texts]


def test_plain_ascii_goes_the_rust_way():
    assert clip_tokens._rust_tokenizer() is not None, "the Rust tokenizer could not be built"
    texts = [t for t in file_corpus() if t.isascii() and "&" not in t]
    counts, fast = clip_tokens.count_many_routed(texts)
    assert len(texts) > 200 and all(fast)
    assert clip_tokens.count_many_routed(["a dog", "ein Hund über"])[1] == [True, False]


def test_count_many_edge_inputs():
    assert clip_tokens.count_many([]) == []
    assert clip_tokens.count_many(["", ""]) == [2, 2]
    assert clip_tokens.count("a red bicycle") == 5
