import dataclasses

import pytest

from rewrite.rewriting import prompt
from rewrite.run.config import RunConfig

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
    from rewrite.rewriting import validate
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


@pytest.mark.parametrize("completion, expected", [
    ('"A red bike leans on a wall."\nmore', "A red bike leans on a wall."),
    ("\u201cA red bike.\u201d", "A red bike."),
    ('"Stop" sign and "Go" sign', '"Stop" sign and "Go" sign'),  # not one quote around the whole answer
    ("'tis a bike", "'tis a bike"),
])
def test_parse_completion_takes_an_answer_out_of_its_quotes(completion, expected):
    assert prompt.parse_completion(completion) == expected


def show(messages):
    """A stand-in chat renderer (the real ones are models' templates, tested below)."""
    return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


CHAT_EXAMPLES = [("a cat", "A cat naps."), ("a red car", "A shiny red car.")]


def test_chat_template_turns_and_message_forms(tmp_path):
    turns = prompt.load_template("chat")
    assert turns.chat and turns.examples_as == "turns"
    msgs = turns.messages(CHAT_EXAMPLES, "a dog")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in msgs[1:]] == ["a cat", "A cat naps.", "a red car", "A shiny red car.", "a dog"]
    head, tail = turns.frame(CHAT_EXAMPLES, show)
    assert turns.render(CHAT_EXAMPLES, "a  dog => x", show) == head + "a dog -> x" + tail
    assert tail == "</user><assistant>" and head.endswith("<user>")

    path = tmp_path / "inline.toml"
    path.write_text('format = "chat"\nexamples = "message"\ninstruction = "Rewrite."\nexample = "{source} -> {target}"\n'
                    'separator = "\\n"\nquery = "Caption: {caption}"\n')
    inline = prompt.load_template(str(path))
    msgs = inline.messages(CHAT_EXAMPLES, "a dog")
    assert msgs == [{"role": "system", "content": "Rewrite.\na cat -> A cat naps.\na red car -> A shiny red car."},
                    {"role": "user", "content": "Caption: a dog"}]
    with pytest.raises(prompt.TemplateError, match="needs an engine with a chat template"):
        inline.frame(CHAT_EXAMPLES)


@pytest.mark.parametrize("body, message", [
    ('format = "chat"\ninstruction = "x"\nexample = "{source}"\nquery = "{caption}"\n', "answer"),
    ('format = "chat"\nexamples = "message"\ninstruction = "x"\nexample = "{source}"\nseparator = ""\nquery = "{caption}"\n', "needs {target}"),
    ('format = "chat"\nexamples = "both"\n', "must be"),
    ('format = "poem"\n', "`format` must be"),
])
def test_chat_template_errors(tmp_path, body, message):
    path = tmp_path / "t.toml"
    path.write_text(body)
    with pytest.raises(prompt.TemplateError, match=message):
        prompt.load_template(str(path))


def test_chat_prompts_in_the_packaged_models_own_template(engine):
    """The embedded SmolLM2 is an instruct model with a chat template: prompts keep the examples ahead of
    the caption (a shared prefix), and a long caption is cut inside its own turn."""
    t = prompt.load_template("chat")
    a = t.render(CHAT_EXAMPLES, "a dog on a beach", engine.chat_prompt)
    b = t.render(CHAT_EXAMPLES, "two kids on bikes", engine.chat_prompt)
    head = t.head(CHAT_EXAMPLES, engine.chat_prompt)
    assert a.startswith(head) and b.startswith(head) and "<|im_start|>system" in head
    assert a.endswith("a dog on a beach<|im_end|>\n<|im_start|>assistant\n")
    text, ids, cut = prompt.fit_prompt(t, CHAT_EXAMPLES, "word " * 400, engine.encode, engine.decode, 200, engine.chat_prompt)
    assert cut and len(ids) <= 200 and text.startswith(head) and text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_chat_frames_are_rendered_once_and_do_not_hold_their_engine():
    import gc
    import weakref

    class Renderer:
        calls = 0

        def chat_prompt(self, messages):
            Renderer.calls += 1
            return "|".join(m["role"] + ":" + m["content"] for m in messages)

    t, owner = prompt.load_template("chat"), Renderer()
    first = t.render(CHAT_EXAMPLES, "a dog", owner.chat_prompt)
    assert t.render(CHAT_EXAMPLES, "a cat", owner.chat_prompt) == first.replace("a dog", "a cat")
    assert Renderer.calls == 1  # the frame is rendered once for a set of examples
    gone = weakref.ref(owner)
    del owner
    gc.collect()
    assert gone() is None


def test_an_engine_without_a_chat_template_says_so():
    from rewrite.engines.base import Engine, EngineError

    class Plain(Engine):
        name, model = "plain", "m"
        context_length = 100
        encode = decode = generate = None

    with pytest.raises(EngineError, match="completion template"):
        Plain().chat_prompt([{"role": "user", "content": "x"}])


def test_a_run_with_the_chat_template_on_the_packaged_model(engine, text_file, tmp_path):
    import pyarrow.parquet as pq

    from conftest import Recording
    from rewrite.inputs import plan
    from rewrite.run import runner

    work = tmp_path / "work"
    plan.plan([str(text_file)], work, num_shards=1)
    recording = Recording(engine)
    stats = runner.run(work, RunConfig(source="human", template="chat"), [0], recording, progress=False)[0]
    assert all(r.prompt.startswith("<|im_start|>system\n") and r.prompt.endswith("<|im_start|>assistant\n")
               for r in recording.requests)
    rows = pq.read_table(work / "rewrites" / "human" / "00000.parquet").to_pylist()
    assert stats["ok"] >= stats["rows"] - stats["skipped"] - 3
    assert all("<|im" not in r["rewrite"] and "\n" not in r["rewrite"] for r in rows if r["status"] == "ok")


# -- prompt ids put together from pieces (prompt.PromptIds) -----------------------------------------------

HARD_CAPTIONS = ["a dog", "Two  DOGS\tplay", "3 cats.", "'quoted'", '"double"', "(x)", "-dash", "café au lait",
                 "東京 タワー", "🐶 emoji first", "ends with =", "a => b", "word " * 200, "x" * 3000, "it's fine!"]


@pytest.mark.parametrize("source", ["chatgpt", "bard", "coco", "human"])
def test_prompt_ids_from_pieces_equal_the_whole_prompt_tokenized(engine, source):
    """With the packaged model's tokenizer, every set's requests are the same whether their ids are put
    together from pieces or the prompt is tokenized whole: text, ids, seed, group, targets and cuts
    (over-long captions, and a budget that cuts prompts, included)."""
    import dataclasses

    from rewrite import meta
    from rewrite.run import shardwork
    from rewrite.run.config import RunConfig

    config = RunConfig(source=source)
    meta_set, template = meta.load_usable(source), prompt.load_template()
    pieces = shardwork.prompting(config, meta_set, template, engine)
    assert pieces.ids is not None  # the packaged tokenizer agrees: the fast way is taken
    whole = dataclasses.replace(pieces, ids=None, encode_many=None)
    tight = dataclasses.replace(pieces, budget=200)  # some prompts no longer fit: the cut path
    fitted = pieces.captions(HARD_CAPTIONS)
    assert [(t, c) for t, _, c in fitted] == [prompt.cap_caption(c, engine.encode, engine.decode, config.max_caption_tokens)
                                             for c in HARD_CAPTIONS]
    assert all(ids == engine.encode(text) for text, ids, _ in fitted)
    cuts = 0
    for i, caption in enumerate(fitted):
        for attempt in range(3):
            request, targets, cut = pieces.request(str(i), caption, 0, attempt)
            assert (request, targets, cut) == whole.request(str(i), caption, 0, attempt)
            assert list(request.prompt_ids) == engine.encode(request.prompt)
            assert tight.request(str(i), caption, 0, attempt) == dataclasses.replace(whole, budget=200).request(
                str(i), caption, 0, attempt)
            cuts += tight.request(str(i), caption, 0, attempt)[2]
    assert cuts  # the tight budget did cut


def test_a_tokenizer_that_joins_pieces_falls_back_to_whole_prompts():
    """A SentencePiece-like tokenizer (a word-start mark put before each text it is given) tokenizes a
    piece alone unlike the same piece inside a prompt: the check finds it, and prompts are tokenized whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    corpus = [prompt.load_template().render(EXAMPLES, c) for c in ("a bird", "two dogs", "a red car")] * 20
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text).ids

    def encode_many(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tokenizer.encode_batch(texts)]

    assert prompt.PromptIds(prompt.load_template(), encode).agrees(EXAMPLES, 3) is False
    assert prompt.PromptIds(prompt.load_template(), encode).agrees(EXAMPLES, 3, encode_many) is False
    assert prompt.assemble(prompt.load_template(), encode, EXAMPLES, 3, "probe-set") is None
    assert prompt.assemble(prompt.load_template(), encode, EXAMPLES, 3, "probe-set-2", encode_many) is None


def test_the_pieces_check_in_batches_decides_as_one_at_a_time(engine):
    """`agrees` with the engine's batch tokenizer gives the verdict of one call per text, for every set,
    and for a template whose pieces a tokenizer would join (no separator: an example runs into the next)."""
    from rewrite import meta

    template = prompt.load_template()
    joined = dataclasses.replace(template, separator="")
    for source in ("coco", "chatgpt", "bard", "human"):
        examples = list(meta.load(source).examples())
        for t in (template, joined):
            alone = prompt.PromptIds(t, engine.encode).agrees(examples, 3)
            batched = prompt.PromptIds(t, engine.encode).agrees(examples, 3, engine.encode_many)
            assert alone == batched
            assert alone is (t is template)  # the packaged tokenizer agrees, but not across joined pieces


def test_first_requests_made_while_the_pieces_check_runs_are_those_made_after_it(engine):
    """While a set's pieces check runs, the stream makes first requests that are the same whichever way
    it goes: with the packaged tokenizer every first attempt's (over-long captions and their cuts
    included) equals the checked Prompting's, and a later attempt waits. With a template whose pieces the
    tokenizer joins (the check says no), the requests whose assembled ids differ from the whole prompt's
    wait, and those made are the whole-prompt ones the checked Prompting makes."""
    from rewrite import meta
    from rewrite.run import rows, shardwork

    jobs = [(str(i), caption, 0, 0) for i, caption in enumerate(HARD_CAPTIONS)] + [("again", "a dog", 1, 1)]
    for source in ("coco", "human"):
        config, meta_set = RunConfig(source=source), meta.load_usable(source)
        for template in (prompt.load_template(), dataclasses.replace(prompt.load_template(), separator="")):
            ask = shardwork.unchecked(config, meta_set, template, engine)
            assert ask.ids is None
            checked = ask.checked()
            early = rows.first_requests_either_way(rows.Unchecked.of(ask), jobs)
            assert early[-1] is None  # a later attempt waits for the check
            made = [(e, r) for e, r in zip(early, rows.first_requests(checked, jobs)) if e is not None]
            assert all(e == r for e, r in made)
            if template.separator:
                assert checked.ids is not None and len(made) == len(jobs) - 1
                assert any(e[1] for e, _ in made)  # some captions were cut
            else:
                assert checked.ids is None and 0 < len(made) < len(jobs) - 1  # assembled ids differed: those wait


def test_engine_encode_many_is_encode_of_each(engine):
    texts = HARD_CAPTIONS + ["", " leading space", "trailing space ", "new\nline", "a" * 5000]
    assert engine.encode_many(texts) == [engine.encode(t) for t in texts]
    assert engine._batch_encoder() is not None  # the Rust batch path is the one taken


@pytest.mark.parametrize("template_name", ["laclip", "chat"])
def test_requests_made_together_are_those_made_one_at_a_time(engine, template_name):
    """`Prompting.requests` tokenizes the whole prompts (chat templates, tokenizers that fail the pieces
    check, empty captions) in one batch: every set's requests equal `request`'s one at a time, over-long
    captions and a budget that cuts prompts included, and `encode` is left only the cuts."""
    from rewrite import meta
    from rewrite.run import shardwork

    for source in ("chatgpt", "bard", "coco", "human"):
        config, meta_set = RunConfig(source=source, template=template_name), meta.load_usable(source)
        checked = shardwork.prompting(config, meta_set, prompt.load_template(template_name), engine)
        assert (checked.ids is None) == (template_name == "chat")
        fitted = checked.captions(HARD_CAPTIONS + [""])
        jobs = [(str(i), caption, i % 2, attempt) for i, caption in enumerate(fitted) for attempt in range(2)]
        longest = max(len(request.prompt_ids) for request, _, _ in map(checked.request, *zip(*jobs)))
        tight = dataclasses.replace(checked, ids=None, budget=longest - 10)  # the longest prompts are cut
        for ask in (dataclasses.replace(checked, ids=None), tight, checked):
            one_at_a_time = [ask.request(*job) for job in jobs]
            encoded = []
            counting = dataclasses.replace(ask, encode=lambda text: encoded.append(text) or engine.encode(text))
            assert counting.requests(jobs) == one_at_a_time
            assert len(encoded) == 4 * sum(cut for _, _, cut in one_at_a_time)  # a cut prompt: head, tail, caption, prompt
        assert any(cut for _, _, cut in map(tight.request, *zip(*jobs)))


def test_normalise_caption_is_every_run_of_whitespace_as_one_space():
    """normalise_caption's split and join against the regex it stands for (`\\s+` to one space, then
    strip), over every character Python's regex counts as whitespace and random strings of them."""
    import random
    import re
    import sys

    spaces = [chr(c) for c in range(sys.maxunicode + 1) if re.fullmatch(r"\s", chr(c))]
    assert "\u3000" in spaces and "\x1c" in spaces and "\u200b" not in spaces
    rng = random.Random(5)
    pool = spaces + list("ab=>é日\u200b") * 4
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 16))) for _ in range(20_000)]
    texts += [f"a{s}{s}b{s}" for s in spaces] + ["x => y", " a=>b ", "=>"]
    expected = [re.sub(r"\s+", " ", t.replace(prompt.ARROW, prompt.ARROW_REPLACEMENT)).strip() for t in texts]
    assert [prompt.normalise_caption(t) for t in texts] == expected
