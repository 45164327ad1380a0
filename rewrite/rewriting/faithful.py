"""How faithful a rewrite is to its caption, measured without any model: pure functions over strings.

A caption's content words are its words less English function words, lower-cased, with a light
suffix stripping (plural and verb endings) so that "dogs play" and "a dog playing" share "dog" and
"play". Of the caption's content words, `recall` is the share the rewrite keeps; of the rewrite's,
`novelty` is the share the caption does not have. `faithfulness` is their F1 (2PR / (P + R), with
P = 1 - novelty): 1 for a rewrite that says the same things in other function words, near 0 for one
about something else. LaCLIP's own example targets add detail by design (about twice the source's
length), so a good rewrite scores about 0.4-0.7, not 1.
"""
from __future__ import annotations

import re
from functools import lru_cache

# English function words: articles, pronouns, prepositions, conjunctions, auxiliaries, and the filler
# words of captions ("image", "photo", ...) that say nothing about what is in the picture.
STOPWORDS = frozenset("""
a an the this that these those there here it its it's they them their theirs he him his she her hers
we us our ours you your yours i me my mine one ones some any each every all both either neither no not
nor none other another such own same so than too very just only also even still yet ever never
and or but if then else because as while when where whence why how what which who whom whose
of in on at by for from to into onto upon with without within about above below over under between
among through across along around behind beside besides beyond near toward towards against during
before after since until till off out up down away back again together
is are was were be been being am do does did doing done have has had having will would shall should
can could may might must get gets got getting make makes made let lets
very really quite rather much many more most less least few several lot lots
image images photo photos photograph photographs picture pictures pic stock view shot
""".split())

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_SUFFIXES = ("ies", "ing", "ed", "es", "s")


def stem(word: str) -> str:
    """A light suffix strip: plurals and common verb endings (not a full stemmer: two spellings of one
    word meet; different words stay apart)."""
    if word.endswith("'s"):
        word = word[:-2]
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)] + ("y" if suffix == "ies" else "")
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":  # running -> runn -> run
        word = word[:-1]
    return word


def _content_word(word: str) -> str | None:
    """A word as `_WORD` finds it, stemmed; None for a function word or a single letter."""
    word = word.casefold()
    return None if word in STOPWORDS or (len(word) == 1 and word.isalpha()) else stem(word)


_WORD_CACHE_MAX = 200_000
_content: dict[str, str | None] = {}  # word -> _content_word(word): rewrites repeat their words; replaced when full


def content_words(text: str) -> frozenset[str]:
    """The stemmed content words of `text` (function words and numbers' punctuation dropped)."""
    global _content
    known, out = _content, set()
    for word in _WORD.findall(text):
        got = known.get(word, False)
        if got is False:
            got = known[word] = _content_word(word)
        if got is not None:
            out.add(got)
    if len(known) > _WORD_CACHE_MAX:
        _content = {}
    return frozenset(out)


_caption_words = lru_cache(maxsize=1 << 14)(content_words)  # a caption is judged against each of its rewrites


def recall(caption: str, rewrite: str) -> float | None:
    """Share of the caption's content words that the rewrite keeps; None when the caption has none."""
    source = content_words(caption)
    if not source:
        return None
    return len(source & content_words(rewrite)) / len(source)


def novelty(caption: str, rewrite: str) -> float | None:
    """Share of the rewrite's content words that the caption does not have; None when it has none."""
    new = content_words(rewrite)
    if not new:
        return None
    return len(new - content_words(caption)) / len(new)


def faithfulness(caption: str, rewrite: str) -> float | None:
    """F1 of content words between caption and rewrite (see the module docstring); None when either
    side has no content word (nothing to judge: a caption like "here it is!" holds none)."""
    source, target = _caption_words(caption), content_words(rewrite)
    if not source or not target:
        return None
    kept = len(source & target)
    if not kept:
        return 0.0
    r, p = kept / len(source), kept / len(target)
    return 2 * p * r / (p + r)
