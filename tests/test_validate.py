"""Every rejection reason, driven by crafted completions through the parser and the checks."""
import pytest

from rewrite.rewriting import clip_tokens, prompt, validate
from rewrite.engines.base import Completion

SOURCE = "dog on the beach"
TARGETS = ["A golden dog races along the wet sand as the tide comes in."]


def reason(completion_text: str, finish: str = "stop") -> str | None:
    comp = Completion(completion_text, 50, 10, finish)
    return validate.check(prompt.parse_completion(comp.text), SOURCE, comp, TARGETS, clip_tokens.count)


@pytest.mark.parametrize("text, finish, expected", [
    (" A brown dog runs through shallow waves at sunset.\n", "stop", None),
    ("", "stop", validate.EMPTY),
    ("   \n", "stop", validate.EMPTY),
    (" ...!\n", "stop", validate.EMPTY),  # nothing but punctuation
    (" Dog, on the BEACH.\n", "stop", validate.ECHO),  # case, spaces and punctuation do not hide an echo
    (" a golden dog races along the wet sand as the tide comes in\n", "stop", validate.COPIED_EXAMPLE),
    (" A dog on sand => a cat\n", "stop", validate.LEAKED_ARROW),
    (" A dog runs along the beach, chasing the", "length", validate.CUT_AT_MAX_TOKENS),
    (" A dog runs along the beach.\n\nold city => A town", "length", None),  # ran on past a whole rewrite
    (" A dog\x07 runs on the beach.\n", "stop", validate.CONTROL_CHARACTERS),
    (" A dog runs\u200b on the beach.\n", "stop", validate.CONTROL_CHARACTERS),
    (" A dog runs past a cafÃ© on the beach.\n", "stop", validate.MOJIBAKE),
    (" The dogâ€™s paws leave prints on the beach.\n", "stop", validate.MOJIBAKE),
    (" A dog runs on the beach \ufffd.\n", "stop", validate.MOJIBAKE),
    (" " + "a very long sentence about a dog " * 12 + "\n", "stop", validate.TOO_LONG_FOR_CLIP),
    (" whatever", "error", validate.ENGINE_ERROR),
])
def test_reasons(text, finish, expected):
    assert reason(text, finish) == expected


def test_clip_token_count_matches_clips_context():
    assert clip_tokens.count("a photo of a dog") == 7  # 5 words, start and end tokens
    just_fits = " ".join(["dog"] * 75)
    assert clip_tokens.count(just_fits) == 77 and validate.check(
        just_fits, SOURCE, Completion(just_fits, 1, 1, "stop"), [], clip_tokens.count) is None
    one_over = just_fits + " dog"
    assert validate.check(one_over, SOURCE, Completion(one_over, 1, 1, "stop"), [], clip_tokens.count) \
        == validate.TOO_LONG_FOR_CLIP


def test_mojibake_already_in_the_source_is_not_held_against_the_rewrite():
    comp = Completion(" The cafÃ© by the sea at night.\n", 1, 1, "stop")
    assert validate.check(prompt.parse_completion(comp.text), "cafÃ© at night", comp, []) is None


def test_comparable_of_ascii_text_is_what_the_regex_gives():
    """comparable's byte table for ASCII text (the usual rewrite) against its regex, which any other text takes."""
    import random

    rng = random.Random(3)
    chars = [chr(i) for i in range(128)]
    texts = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 40))) for _ in range(20_000)]
    texts += ["Dog, on the BEACH.", "  _under_score_ ", "a\tb\nc\x00d", "3rd-floor's 'balcony' -- !", ""]
    assert [validate.comparable(t) for t in texts] == [validate._NOT_WORD.sub(" ", t.casefold()).strip() for t in texts]
    assert validate.comparable("Café, ÉCOLE!") == "café école"  # not ASCII: the regex way
