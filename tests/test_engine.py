"""The transformers engine on the real embedded model."""
import torch

from rewrite import prompt, seeds
from rewrite.engines import Request, load
from rewrite.engines.transformers import SeededSampler
from rewrite.settings import Sampling

EXAMPLES = [
    ("dog on the beach", "A golden dog races along the wet sand as the tide comes in."),
    ("city at night", "Tall towers glow above a dark river in the middle of the city."),
    ("woman cooking pasta", "A young woman stirs a steaming pot of pasta in a bright kitchen."),
]


def test_seeded_sampler_keeps_only_the_top_p_mass():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2))
    picks = set()
    for s in range(200):
        out = SeededSampler([s, s + 1000], temperature=1.0, top_p=0.8)(None, scores.clone())
        assert (out == 0).sum(dim=-1).tolist() == [1, 1]  # exactly one token left per row
        picks.update(out.argmax(dim=-1).tolist())
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are never drawn


def test_seeded_sampler_rows_do_not_depend_on_their_neighbours():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    a = SeededSampler([1, 2, 3], 0.9, 0.95)(None, scores.clone()).argmax(-1)
    b = SeededSampler([9, 2, 7], 0.9, 0.95)(None, scores.clone()).argmax(-1)
    assert a[1] == b[1]


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
    other_seed = engine.generate([Request(reqs[0].prompt, reqs[0].seed + 1)], Sampling())
    assert len({other_seed[0].text, together[0].text}) in (1, 2)  # (runs; texts may rarely coincide)


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
