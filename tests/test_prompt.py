import pytest

from rewrite import prompt

EXAMPLES = [("a dog", "A brown dog runs."), ("a cat", "A grey cat sleeps."), ("a car", "A red car waits.")]


def test_laclip_format():
    t = prompt.load_template("laclip")
    assert t.render(EXAMPLES, "a bird") == (
        "write image captions differently,\n\n"
        "a dog => A brown dog runs.\n\n"
        "a cat => A grey cat sleeps.\n\n"
        "a car => A red car waits.\n\n"
        "a bird =>"
    )


@pytest.mark.parametrize("caption, expected", [
    ("sunset => dunes", "sunset -> dunes"),
    ("line one\nline two\r\nthree", "line one line two three"),
    ('the "best" pizza', 'the "best" pizza'),
    ("  café\tmünchen  ", "café münchen"),
    ("東京 タワー", "東京 タワー"),
])
def test_captions_are_normalised_so_the_format_holds(caption, expected):
    out = prompt.load_template().render(EXAMPLES, caption)
    assert out.endswith(expected + " =>")
    assert out.count("=>") == 4  # three examples and the query, nothing from the caption
    assert out.split("\n\n")[-1] == expected + " =>"


@pytest.mark.parametrize("completion, expected", [
    (" A bird sings.\n\nnext => thing", "A bird sings."),
    ("  spaced out  ", "spaced out"),
    ("\nafter a newline", ""),
    (' "Quoted" café ünïcode 東京\n', '"Quoted" café ünïcode 東京'),
])
def test_parse_completion_takes_the_first_line(completion, expected):
    assert prompt.parse_completion(completion) == expected


def test_over_long_prompt_is_cut_in_the_caption_and_still_ends_with_the_arrow():
    t = prompt.load_template()
    encode = lambda s: s.split(" ")
    decode = lambda ids: " ".join(ids)
    long_caption = " ".join(f"w{i}" for i in range(500))
    text, ids, cut = prompt.fit_prompt(t, EXAMPLES, long_caption, encode, decode, max_tokens=60)
    assert cut and text.endswith(" =>") and len(encode(text)) <= 60 and ids == encode(text)
    assert text.startswith("write image captions differently,")
    assert "w0 w1 w2" in text and "w499" not in text
    short, _, cut = prompt.fit_prompt(t, EXAMPLES, "a bird", encode, decode, max_tokens=60)
    assert not cut and short == t.render(EXAMPLES, "a bird")


def test_over_long_prompt_with_the_real_tokenizer(engine):
    t = prompt.load_template()
    text, ids, cut = prompt.fit_prompt(t, EXAMPLES, "a very long caption " * 400, engine.encode, engine.decode, 120)
    assert cut and text.endswith(" =>") and len(engine.encode(text)) <= 120 and ids == engine.encode(text)


def test_template_errors(tmp_path):
    with pytest.raises(prompt.TemplateError, match="unknown template 'nope'.*laclip"):
        prompt.load_template("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('instruction = "x"\nexample = "{source}"\nseparator = "\\n"\nquery = "{caption} =>"\n')
    with pytest.raises(prompt.TemplateError, match="needs"):
        prompt.load_template(str(bad))


def test_a_completion_cut_at_max_tokens_after_its_line_break_is_whole():
    from rewrite import validate
    from rewrite.engines.base import Completion

    ran_on = Completion(" A dog runs on the sand.\n dog =>", 10, 77, "length")
    cut = Completion(" A dog runs on the", 10, 77, "length")
    assert validate.check(prompt.parse_completion(ran_on.text), "dog on beach", ran_on, []) is None
    assert validate.check(prompt.parse_completion(cut.text), "dog on beach", cut, []) == validate.CUT_AT_MAX_TOKENS


def test_a_caption_is_capped_at_its_token_budget():
    encode = lambda text: text.split()  # one "token" per word
    decode = lambda ids: " ".join(ids)
    assert prompt.cap_caption("a  short\ncaption", encode, decode, 5) == ("a short caption", False)
    text, cut = prompt.cap_caption("word " * 1000, encode, decode, 8)
    assert (text, cut) == (" ".join(["word"] * 8), True)
    # A megabyte is never tokenized whole: only max_tokens x 32 characters reach the tokenizer.
    seen = []
    text, cut = prompt.cap_caption("x" * 1_000_000, lambda t: seen.append(len(t)) or [t], lambda ids: ids[0], 4)
    assert cut and seen == [4 * prompt.CHARS_PER_TOKEN_BOUND]
