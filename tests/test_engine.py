"""The transformers engine on the real embedded model."""
import torch

from rewrite import prompt, seeds
from rewrite.engines import Request, load
from rewrite.engines.transformers import MIN_SHARED_PREFIX, prefix_plan, sample_rows, shared_prefix_length
from rewrite.settings import Sampling

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


def test_unknown_engine_lists_the_known_ones():
    import pytest
    from rewrite.engines import EngineError

    with pytest.raises(EngineError, match="unknown engine 'nope'.*transformers"):
        load("nope")
