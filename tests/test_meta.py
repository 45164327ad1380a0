import json
import random

import pytest

from rewrite import meta, seeds, settings


@pytest.mark.parametrize("name", settings.SOURCES)
def test_shipped_sets_are_valid_and_look_like_laclip(name):
    m = meta.load(name)
    assert len(m) == 16
    assert meta.problems(m) == []
    st = meta.stats(m)
    assert st["max_target_words"] < 30
    assert 0.15 < st["mean_word_overlap"] < 0.4
    if m.pairs:  # targets about twice as long as web-style sources
        assert 1.5 < st["mean_target_words"] / st["mean_source_words"] < 2.5
    else:
        assert all(len(g) == 5 for g in m.groups)


def test_mscoco_is_an_alias_of_coco():
    assert meta.load("mscoco").name == "coco"


def test_unknown_source_is_a_clear_error():
    with pytest.raises(meta.MetaSetError, match="unknown source 'laion'.*chatgpt"):
        meta.load("laion")


def test_sampling_is_deterministic_and_varies_by_row():
    m = meta.load("chatgpt")
    draw = lambda ident, attempt=0: meta.sample_examples(m, seeds.example_rng(0, "chatgpt", ident, 0, attempt), 3)
    assert draw("row-1") == draw("row-1")
    assert len(set(draw("row-1"))) == 3
    assert len({tuple(draw(f"row-{i}")) for i in range(20)}) > 15
    assert draw("row-1", attempt=0) != draw("row-1", attempt=1)


def test_coco_examples_are_two_distinct_captions_of_one_group():
    m = meta.load("coco")
    group_of = {c: i for i, g in enumerate(m.groups) for c in g}
    for i in range(50):
        examples = meta.sample_examples(m, seeds.example_rng(1, "coco", str(i), 0, 0), 3)
        assert len({group_of[s] for s, _ in examples}) == 3  # three different scenes
        for s, t in examples:
            assert s != t and group_of[s] == group_of[t]


def test_custom_meta_set_file_and_its_errors(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text("\n".join(json.dumps({"source": f"s{i}", "target": f"t {i}"}) for i in range(4)))
    assert len(meta.load(str(good))) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\n{"src": "x"}\n')
    with pytest.raises(meta.MetaSetError, match=r"bad.jsonl:2"):
        meta.load(str(bad))
    arrow = tmp_path / "arrow.jsonl"
    arrow.write_text('{"source": "a => b", "target": "c"}\n{"source": "a", "target": "c"}\n')
    problems = meta.problems(meta.load(str(arrow)))
    assert any("=>" in p for p in problems)


def test_k_larger_than_the_set_is_refused():
    with pytest.raises(meta.MetaSetError, match="fewer than k=17"):
        meta.sample_examples(meta.load("human"), random.Random(0), 17)


def test_meta_cli_show_and_validate(tmp_path):
    from conftest import run_cli

    shown = run_cli("meta", "show", "mscoco").stdout
    assert shown.startswith("# coco: 16 groups") and shown.count("\n\n") >= 16
    ok = run_cli("meta", "validate").stdout
    assert [line.split(":")[0] for line in ok.splitlines()] == list(settings.SOURCES)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a => b", "target": "c"}\n{"source": "x", "target": "x"}\n')
    proc = run_cli("meta", "validate", str(bad), check=False)
    assert proc.returncode == 1 and "INVALID" in proc.stdout and "'=>' inside" in proc.stdout


def test_example_sets_share_a_few_fixed_draws():
    m = meta.load("chatgpt")
    draw = lambda ident, sets, attempt=0: tuple(
        meta.sample_examples(m, seeds.example_rng(0, "chatgpt", ident, 0, attempt, sets), 3))
    shared = {draw(str(i), 4) for i in range(200)}
    fresh = {draw(str(i), 0) for i in range(200)}
    assert len(shared) == 4 and len(fresh) > 150
    assert draw("a", 4) == draw("a", 4)
    assert len({draw("a", 4, attempt) for attempt in range(8)}) > 1  # a retry may move to another set


def test_schedule_groups_by_examples_then_length():
    from rewrite.rows import schedule_order
    from rewrite.settings import Schedule

    ex_a, ex_b = "head with examples a =>", "head with examples b =>"  # the prompts' shared starts
    prompts = ["bbbb", "a", "bb", "aaa", "b"]
    examples = [ex_b, ex_a, ex_b, ex_a, ex_b]
    assert schedule_order(prompts, examples, Schedule()) == [1, 3, 4, 2, 0]
    assert schedule_order(prompts, examples, Schedule(group_by_examples=False)) == [1, 4, 2, 3, 0]
    assert schedule_order(prompts, examples, Schedule(False, False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("given, name", [
    ("chatgpt", "chatgpt"), ("mscoco", "coco"), ("sets/mine.jsonl", "mine"), ("/abs/path/my-set_2.jsonl", "my-set_2"),
])
def test_a_source_goes_by_a_name_never_a_path(given, name):
    assert meta.source_name(given) == name


@pytest.mark.parametrize("given, message", [
    ("../x", "unknown source"), ("/abs/chatgpt.jsonl", "name of a shipped meta set"),
    ("sets/mscoco.jsonl", "name of a shipped meta set"), ("a b.jsonl", "may hold only letters"),
    ("sets/.jsonl", "may hold only letters"), ("sets/x.y.jsonl", "may hold only letters"),
])
def test_a_source_name_that_could_escape_or_collide_is_refused(given, message):
    with pytest.raises(meta.MetaSetError, match=message):
        meta.source_name(given)


def test_run_refuses_what_validate_rejects(tmp_path):
    arrow = tmp_path / "arrow.jsonl"
    arrow.write_text('{"source": "a => b", "target": "c"}\n{"source": "x", "target": "y"}\n')
    with pytest.raises(meta.MetaSetError, match="not usable in a prompt: '=>' inside"):
        meta.load_usable(str(arrow))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(meta.MetaSetError, match="binary.jsonl: not UTF-8"):
        meta.load(str(binary))
