"""The transformers engine on the real embedded model; every engine's option checks."""
import re

import pytest
import torch

from rewrite.rewriting import prompt, seeds
from rewrite.engines import EngineError, Request, load
from rewrite.engines.transformers import BUCKET_RATIO, BUCKET_SLACK, MIN_SHARED_PREFIX, pack_lanes, prefill_buckets, prefix_plan, sample_rows, shared_prefix_length
from rewrite.defaults import Sampling

EXAMPLES = [
    ("dog on the beach", "A golden dog races along the wet sand as the tide comes in."),
    ("city at night", "Tall towers glow above a dark river in the middle of the city."),
    ("woman cooking pasta", "A young woman stirs a steaming pot of pasta in a bright kitchen."),
]


def generators(*seeds_):
    return [torch.Generator().manual_seed(s) for s in seeds_]


def test_sample_rows_keeps_only_the_top_p_mass():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2))
    picks = set()
    for s in range(200):
        out = sample_rows(scores, generators(s, s + 1000), temperature=1.0, top_p=0.8)
        assert out.shape == (2,)
        picks.update(out.tolist())
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are never drawn


def test_sample_rows_rows_do_not_depend_on_their_neighbours():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    draws = [sample_rows(scores, generators(a, 2, b), 0.9, 0.95)[1].item() for a, b in [(1, 3), (9, 7), (4, 4)]]
    assert len(set(draws)) == 1
    spread = {sample_rows(scores[1:2], generators(s), 0.9, 0.95).item() for s in range(50)}
    assert len(spread) > 1  # the seed does matter


def test_shared_prefix_length_leaves_each_row_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7], [7, 8]]) == 0


def test_prefix_plan_shares_a_prefix_within_a_group_only():
    head = list(range(100, 100 + MIN_SHARED_PREFIX + 2))
    ids = [head + [1, 2], head + [3], [9, 9, 9], head + [4, 5, 6]]
    which, lengths = prefix_plan(ids, ["g", "g", "h", "g"], reuse=True)
    assert which[0] == which[1] == which[3] != which[2]
    assert lengths[which[0]] == len(head) and lengths[which[2]] == 2  # alone: all but its last token
    which, lengths = prefix_plan(ids, ["g", "g", "h", "g"], reuse=False)
    assert len(set(which)) == 4 and [lengths[w] for w in which] == [len(r) - 1 for r in ids]
    short = [[1, 2, 3], [1, 2, 4]]  # a shared start shorter than MIN_SHARED_PREFIX is not worth it
    assert prefix_plan(short, ["g", "g"], reuse=True)[1] == [2, 2]


def test_prefill_buckets_pad_only_prompts_of_similar_length():
    lengths = [120, 2000, 118, 130, 125, 190, 10, 20]
    buckets = prefill_buckets(lengths)
    assert buckets == [[6, 7], [0, 2, 3, 4, 5], [1]]  # the 2,000-token prompt alone; given order kept
    for b in buckets:
        assert max(lengths[i] for i in b) <= min(lengths[i] for i in b) * BUCKET_RATIO + BUCKET_SLACK
    assert prefill_buckets([117, 125, 132, 113] * 16) == [list(range(64))]  # ordinary prompts: one pass, as before
    assert prefill_buckets([]) == []


def test_pack_lanes_parts_lanes_only_where_padding_costs_more_than_a_pass():
    columns = 10_000  # the weights' size in cache columns
    assert pack_lanes([(63, 130), (1, 2000)], columns) == [[0], [1]]  # 63 rows x 1,870 columns of padding
    assert pack_lanes([(8, 130), (1, 600)], columns) == [[0, 1]]  # 8 x 470: cheaper than another pass
    assert pack_lanes([(32, 200), (32, 125)], columns) == [[0, 1]]  # new rows join the running ones
    assert pack_lanes([(1, 2000), (30, 150), (20, 120)], columns) == [[1, 2], [0]]
    assert pack_lanes([(10, 100), (1, 1100)], columns) == [[0, 1]]  # at most `columns`: merged


@pytest.mark.parametrize("shared", [True, False], ids=["shared-examples", "own-examples"])
def test_a_long_prompt_neither_widens_nor_changes_the_short_rows(engine, shared):
    """One prompt over ten times longer than the rest: every request completes, every forward pass wider
    than a short row ever gets (prefill or decode) holds the long row alone, and the short rows' rewrites
    are the ones they get without it."""
    t = prompt.load_template()
    captions = ["red car parked on the street", "bowl of fresh fruit on a table", "snowy mountains at sunrise",
                "man playing guitar on stage", "old bridge over a river", "a cat asleep on a sofa",
                "two boats in a small harbour", "kids flying a kite on a hill", "a plate of pancakes with berries",
                "a train crossing a bridge", "a lighthouse on a cliff", "a dog catching a frisbee",
                "a market stall full of fruit", "a woman reading in a park", "a snowy street at night"]
    group = t.head(EXAMPLES) if shared else ""
    short = [Request(t.render(EXAMPLES, c), seeds.generation_seed(0, "test", c, 0, 0), group) for c in captions]
    widest = max(len(engine.encode(r.prompt)) for r in short)
    ids = engine.encode(", ".join(captions * 40))
    room = 1200 - len(engine.encode(t.render(EXAMPLES, "")))
    long = Request(t.render(EXAMPLES, engine.decode(ids[:room])), 7, group)
    long_tokens = len(engine.encode(long.prompt))
    # Preconditions: one batch, and padding the short rows to the long one's width would cost more than
    # the decode pass that keeps it apart (the cache columns that weigh as much as the weights).
    assert engine.batch_size >= len(short) + 1
    cfg = engine.lm.config
    column_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * engine.lm.dtype.itemsize
    assert len(short) * (long_tokens - widest) > sum(p.nbytes for p in engine.lm.parameters()) / column_bytes
    sampling = Sampling(max_new_tokens=24)
    alone = engine.generate(short, sampling)
    passes: list[tuple[int, int]] = []  # (rows, attention width) of every forward pass of the real model
    hook = engine.lm.register_forward_pre_hook(
        lambda _, args, kwargs: passes.append(tuple(kwargs["attention_mask"].shape)), with_kwargs=True)
    try:
        together = engine.generate(short + [long], sampling)
    finally:
        hook.remove()
    for c in together:
        assert c.finish_reason in ("stop", "length") and c.generated_tokens >= 1
    assert together[-1].prompt_tokens == long_tokens
    wide = [rows for rows, width in passes if width > widest + sampling.max_new_tokens]  # no short row's
    assert wide and set(wide) == {1}
    assert [c.text for c in together[:-1]] == [c.text for c in alone]
    if shared:  # the long row still takes the examples' prefix the first row computed
        assert together[-1].cached_tokens == together[1].cached_tokens > 50


def test_generation_is_deterministic_per_request_whatever_the_batch(engine):
    t = prompt.load_template()
    captions = ["red car parked on the street", "bowl of fresh fruit on a table", "snowy mountains at sunrise",
                "man playing guitar on stage", "old bridge over a river"]
    reqs = [Request(t.render(EXAMPLES, c), seeds.generation_seed(0, "chatgpt", c, 0, 0)) for c in captions]
    together = engine.generate(reqs, Sampling())
    alone = engine.generate(reqs[2:3], Sampling())
    reversed_ = engine.generate(reqs[::-1], Sampling())
    assert alone[0].text == together[2].text
    assert [c.text for c in reversed_[::-1]] == [c.text for c in together]
    for c in together:
        assert c.finish_reason in ("stop", "length") and c.prompt_tokens > 50 and c.generated_tokens >= 1
        if c.finish_reason == "stop":
            assert prompt.parse_completion(c.text)  # something before the line break
    other_seeds = engine.generate([Request(reqs[0].prompt, reqs[0].seed + k) for k in range(1, 4)], Sampling())
    assert {c.text for c in other_seeds} - {together[0].text}  # another seed, another rewrite


def test_stream_takes_requests_while_it_decodes_and_gives_what_generate_gives(engine):
    """Requests fed in as earlier ones finish (with "nothing yet" Nones between) get the same
    completions as one generate call; each comes back once, under its position."""
    t = prompt.load_template()
    captions = ["red car parked on the street", "bowl of fresh fruit on a table", "snowy mountains at sunrise",
                "man playing guitar on stage", "old bridge over a river", "a cat asleep in the sun"]
    reqs = [Request(t.render(EXAMPLES, c), seeds.generation_seed(0, "chatgpt", c, 0, 0)) for c in captions]
    expected = [c.text for c in engine.generate(reqs, Sampling())]
    returned = []

    def fed():
        yield from reqs[:2]
        while not returned:  # the engine holds work: it decodes on between these
            yield None
        for r in reqs[2:]:
            yield r
            yield None

    batch = engine.batch_size
    engine.batch_size = 2  # so the later requests join a running batch
    try:
        for position, completion in engine.stream(fed(), Sampling()):
            returned.append((position, completion.text))
    finally:
        engine.batch_size = batch
    assert sorted(p for p, _ in returned) == list(range(len(reqs)))
    assert [text for _, text in sorted(returned)] == expected
    assert [p for p, _ in returned[:1]] in ([0], [1])  # one of the first two came back before the rest went in


def test_shared_prefix_reuse_and_stopping_do_not_change_rewrites(engine):
    t = prompt.load_template()
    captions = ["a cat asleep on a sofa", "two boats in a small harbour", "kids flying a kite on a hill",
                "a plate of pancakes with berries"]
    other = EXAMPLES[::-1]
    reqs = [Request(t.render(ex, c), 100 + k, group=t.head(ex))
            for k, c in enumerate(captions) for ex in (EXAMPLES, other)]
    short = Sampling(max_new_tokens=24)
    assert engine.prefix_reuse and engine.stop_at_newline
    reused = engine.generate(reqs, short)
    engine.prefix_reuse = False
    try:
        plain = engine.generate(reqs, short)
        engine.stop_at_newline = False
        running_on = engine.generate(reqs, short)
    finally:
        engine.prefix_reuse = engine.stop_at_newline = True
    assert [c.text for c in reused] == [c.text for c in plain]
    # Two groups of four: in each, three rows take the prefix the first one computed.
    assert sum(c.cached_tokens > 50 for c in reused) == 6 and not any(c.cached_tokens for c in plain)
    assert all(r.generated_tokens >= p.generated_tokens for r, p in zip(running_on, plain))
    assert any(r.generated_tokens > p.generated_tokens for r, p in zip(running_on, plain))  # ran past "\n"
    assert [prompt.parse_completion(c.text) for c in running_on] == [prompt.parse_completion(c.text) for c in plain]


def test_generation_stops_at_a_line_break_and_respects_max_tokens(engine):
    t = prompt.load_template()
    reqs = [Request(t.render(EXAMPLES, "a cat asleep on a sofa"), s) for s in range(6)]
    short = engine.generate(reqs, Sampling(max_new_tokens=4))
    assert all(c.generated_tokens <= 4 for c in short)
    full = engine.generate(reqs, Sampling())
    stopped = [c for c in full if c.finish_reason == "stop"]
    assert stopped, "the model never stopped at a line break"
    assert all(c.text.count("\n") <= 1 for c in full)


def test_generation_uses_no_deprecated_transformers_api(engine):
    """A user's run prints no warning: transformers renames an argument with a FutureWarning first (in
    5.2x, `past_key_values` -> `cache`), so the engine passes what the installed version asks for. Every
    forward pass kind runs here: a shared prefix, rows' own tails, decode steps, rows leaving the batch."""
    import logging
    import warnings

    t = prompt.load_template()
    reqs = [Request(t.render(EXAMPLES, c), 100 + k, group=t.head(EXAMPLES))
            for k, c in enumerate(["a cat asleep on a sofa", "two boats in a small harbour", "a red car"])]
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            out = engine.generate(reqs, Sampling(max_new_tokens=12))
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert all(c.generated_tokens >= 1 for c in out)
    assert [r.getMessage() for r in logged] == []


def test_unknown_engine_lists_the_known_ones():
    with pytest.raises(EngineError, match="unknown engine 'nope'.*transformers"):
        load("nope")


URL = "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize("name, options, message", [
    ("transformers", {"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    ("transformers", {"dtype": "nonsense"}, "--dtype must be one of float32, bfloat16, float16, auto, got 'nonsense'"),
    ("transformers", {"max_model_len": 0}, "--max-model-len must be >= 1, got 0"),
    ("vllm", {"tensor_parallel_size": 0}, "--tensor-parallel-size must be >= 1, got 0"),
    ("vllm", {"gpu_memory_utilization": 0.0}, "--gpu-memory-utilization must be in (0, 1], got 0.0"),
    ("vllm", {"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization must be in (0, 1], got 1.5"),
    ("vllm", {"max_model_len": -1}, "--max-model-len must be >= 1, got -1"),
    ("vllm", {"dtype": "fp64"}, "--dtype must be one of auto, float32, bfloat16, float16, float, half, got 'fp64'"),
    ("vllm", {"engine_args": ["block_size"]}, "--engine-arg 'block_size': expected key=value"),
    ("openai", {"base_url": URL, "timeout": 0}, "--timeout must be > 0 seconds, got 0"),
    ("openai", {"base_url": URL, "max_model_len": 0}, "--max-model-len must be >= 1, got 0"),
    ("openai", {"base_url": "127.0.0.1:8000/v1"}, "--base-url must be an http(s) URL"),
    ("openai", {"base_url": "http://127.0.0.1:abc/v1"}, "--base-url must be an http(s) URL"),
    ("openai", {"base_url": URL + "/completions"}, "--base-url is the API's root"),
])
def test_bad_engine_options_are_refused_before_the_model_loads(tmp_path, name, options, message):
    """The model named is a directory that cannot load (no config, no tokenizer): had anything been
    loaded before the options were checked, that would have failed first, with another error."""
    with pytest.raises(EngineError, match=re.escape(message)):
        load(name, str(tmp_path), **options)


def test_engine_option_checks_let_the_edges_through():
    from rewrite.engines import openai, transformers, vllm

    transformers.check_options(1, "auto", 1)
    vllm.check_options("half", 1, 1.0, 1)
    openai.check_options("https://api.example.com/v1/", "chat", 1, 0.5, 1)


def test_vllm_picks_bfloat16_on_a_cpu_with_bf16_instructions():
    from rewrite.engines.vllm import cpu_dtype

    assert cpu_dtype("processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n") == "bfloat16"
    assert cpu_dtype("flags\t\t: fpu avx2 amx_bf16 amx_tile\n") == "bfloat16"
    assert cpu_dtype("flags\t\t: fpu sse avx2 fma\n") == "float32"
    assert cpu_dtype("no flags line\n") == "float32"
