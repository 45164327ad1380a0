import json
import random
from pathlib import Path

import pytest

from rewrite import meta, defaults
from rewrite.rewriting import seeds


@pytest.mark.parametrize("name", defaults.SOURCES)
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
    assert [line.split(":")[0] for line in ok.splitlines()] == list(defaults.SOURCES)
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
    from rewrite.run.rows import schedule_order
    from rewrite.defaults import Schedule

    ex_a, ex_b = "head with examples a =>", "head with examples b =>"  # the prompts' shared starts
    prompts = ["bbbb", "a", "bb", "aaa", "b"]
    examples = [ex_b, ex_a, ex_b, ex_a, ex_b]
    assert schedule_order(prompts, examples, Schedule()) == [1, 3, 4, 2, 0]
    assert schedule_order(prompts, examples, Schedule(group_by_examples=False)) == [1, 4, 2, 3, 0]
    assert schedule_order(prompts, examples, Schedule(False, False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("given, name, is_file", [
    ("chatgpt", "chatgpt", False), ("mscoco", "coco", False), ("sets/mine.jsonl", "mine", True),
    ("/abs/path/my-set_2.jsonl", "my-set_2", True),
    # A file named like a shipped set goes by that set's name, as --meta-dir reads it (its digest keeps it apart).
    ("/abs/chatgpt.jsonl", "chatgpt", True), ("sets/mscoco.jsonl", "coco", True),
])
def test_a_source_goes_by_a_name_never_a_path(given, name, is_file):
    assert (meta.source_name(given), meta.is_file_source(given)) == (name, is_file)


@pytest.mark.parametrize("given, message", [
    ("../x", "unknown source"), ("a b.jsonl", "may hold only letters"),
    ("sets/.jsonl", "may hold only letters"), ("sets/x.y.jsonl", "may hold only letters"),
])
def test_a_source_name_that_could_escape_is_refused(given, message):
    with pytest.raises(meta.MetaSetError, match=message):
        meta.source_name(given)


def test_run_refuses_what_validate_rejects(tmp_path):
    arrow = tmp_path / "arrow.jsonl"
    arrow.write_text('{"source": "a => b", "target": "c"}\n{"source": "x", "target": "y"}\n')
    with pytest.raises(meta.MetaSetError, match="not usable in a prompt: '=>' inside"):
        meta.load_usable(str(arrow), 2)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(meta.MetaSetError, match="binary.jsonl: not UTF-8"):
        meta.load(str(binary))


# -- one set of checks: `meta validate` and `run` ------------------------------------------------------------

PAIRS = [("a red tram on a bridge", "A red tram rattles across an old stone bridge over the river."),
         ("lemons in a basket", "A wicker basket overflows with bright, freshly picked lemons."),
         ("a fox in the snow", "A red fox pauses in the deep snow, listening for mice below."),
         ("old typewriter on a desk", "A dusty typewriter waits on an oak desk beside a stack of letters.")]


def pair_file(path, pairs=PAIRS, rows=None):
    """A pair set of `pairs`, or of the raw JSON objects `rows`."""
    rows = rows if rows is not None else [{"source": s, "target": t} for s, t in pairs]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("row, message", [
    ({"source": 5, "target": "A cat sleeps."}, r'bad.jsonl:2: "source" is a number \(5\), not a string'),
    ({"source": "a cat", "target": None}, r'bad.jsonl:2: "target" is null \(null\), not a string'),
    ({"source": "a cat", "target": ["A cat", "sleeps."]}, r'bad.jsonl:2: "target" is an array'),
    ({"source": True, "target": "A cat sleeps."}, r'bad.jsonl:2: "source" is a boolean \(true\)'),
])
def test_a_value_that_is_not_a_string_is_refused_naming_file_and_line(tmp_path, row, message):
    bad = pair_file(tmp_path / "bad.jsonl", rows=[{"source": "a dog", "target": "A dog runs."}, row])
    with pytest.raises(meta.MetaSetError, match=message):
        meta.load(str(bad))
    groups = tmp_path / "groups.jsonl"
    groups.write_text('{"captions": ["A cat.", "A grey cat."]}\n{"captions": ["A dog.", 7]}\n')
    with pytest.raises(meta.MetaSetError, match=r'groups.jsonl:2: "captions"\[1\] is a number \(7\), not a string'):
        meta.load(str(groups))


def test_problems_cover_k_control_characters_line_breaks_spacing_and_length():
    def found(pairs, k=3):
        return meta.problems(meta.MetaSet("x", Path("x.jsonl"), pairs=tuple(pairs)), k)

    assert found(PAIRS) == [] and found(PAIRS, 4) == []
    assert found(PAIRS, 5) == ["--num-examples 5 is more than its 4 pairs"]
    for odd in ("a\x07dog", "a dog\u200b", "a\tdog", "a dog\u2028at night", "a dog\x85"):
        assert found([*PAIRS[1:], ("a dog", odd)]) == [f"a control character, tab or line break inside: {odd!r}"]
    assert found([*PAIRS[1:], ("a dog", "A  dog runs.")]) == ["space other than one between words: 'A  dog runs.'"]
    longest = " ".join(["dog"] * 75)  # 75 words + CLIP's start and end tokens: 77
    assert found([*PAIRS[1:], ("a dog", longest)]) == []
    [too_long] = found([*PAIRS[1:], ("a dog", longest + " dog")])
    assert too_long.startswith("78 CLIP tokens, more than the 77 an example may hold: 'dog dog") and len(too_long) < 160
    # a group set counts groups against k
    groups = meta.MetaSet("g", Path("g.jsonl"), groups=(("A cat.", "A grey cat."), ("A dog.", "A brown dog.")))
    assert meta.problems(groups, 2) == [] and meta.problems(groups, 3) == ["--num-examples 3 is more than its 2 groups"]


def _one_pair(path):
    return pair_file(path, PAIRS[:1])


def _long_example(path):
    return pair_file(path, [*PAIRS[1:], ("a dog", " ".join(["word"] * 20000))])


def _number(path):
    return pair_file(path, rows=[{"source": s, "target": t} for s, t in PAIRS[1:]] + [{"source": 5, "target": "x"}])


def _control(path):
    return pair_file(path, [*PAIRS[1:], ("a\x07dog", "A dog\u200b runs across the park.")])


@pytest.mark.parametrize("make, invalid", [
    (_one_pair, "--num-examples 3 is more than its 1 pairs"),
    (_long_example, "20002 CLIP tokens, more than the 77 an example may hold"),
    (_number, 'mine.jsonl:4: "source" is a number (5), not a string'),
    (_control, r"a control character, tab or line break inside: 'a\x07dog'"),
], ids=["one-pair", "20000-words", "number", "control"])
def test_validate_rejects_what_run_refuses_before_a_model_loads(tmp_path, make, invalid):
    """The four sets `meta validate` called ok while `run` refused them only after loading the model (or ran them)."""
    from conftest import run_cli

    mine = make(tmp_path / "sets" / "mine.jsonl")
    checked = run_cli("meta", "validate", mine, check=False)
    assert checked.returncode == 1 and "mine" in checked.stdout and "INVALID" in checked.stdout, checked.stdout
    assert invalid in checked.stdout and "Traceback" not in checked.stderr
    (tmp_path / "c.txt").write_text("a red bicycle\n")
    work = tmp_path / "work"
    run_cli("shard", tmp_path / "c.txt", "--out", work)
    ran = run_cli("run", "--work", work, "--source", mine, "--no-progress", check=False)
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), ran.stderr
    assert str(mine) in lines[0] and invalid in lines[0]
    assert "loading the" not in ran.stderr  # refused before the engine loads
    assert not (work / "rewrites" / "mine").exists()


def test_validate_takes_the_runs_k(tmp_path):
    from conftest import run_cli

    mine = pair_file(tmp_path / "mine.jsonl", PAIRS[:2])
    assert run_cli("meta", "validate", mine, "--num-examples", "2").stdout.startswith("mine: ok: 2 pairs")
    three = run_cli("meta", "validate", mine, check=False)  # defaults.NUM_EXAMPLES, as a run's default
    assert three.returncode == 1 and "--num-examples 3 is more than its 2 pairs" in three.stdout
    zero = run_cli("meta", "validate", mine, "--num-examples", "0", check=False)
    assert zero.returncode == 2 and zero.stderr.strip() == "error: --num-examples must be >= 1, got 0"
    assert meta.load_usable(str(mine), 2).pairs == tuple(PAIRS[:2])
    with pytest.raises(meta.MetaSetError, match="is more than its 2 pairs"):
        meta.load_usable(str(mine))


def test_two_sets_going_by_one_name_are_refused_before_a_model_loads(tmp_path):
    from conftest import run_cli

    mine = pair_file(tmp_path / "sets" / "chatgpt.jsonl")
    (tmp_path / "c.txt").write_text("a red bicycle\n")
    work = tmp_path / "work"
    run_cli("shard", tmp_path / "c.txt", "--out", work)
    ran = run_cli("run", "--work", work, "--source", f"chatgpt,{mine}", "--no-progress", check=False)
    assert ran.returncode == 2 and ran.stderr.strip().splitlines() == [
        f"error: --source names the set chatgpt twice (chatgpt, {mine}): each set is one folder and one column, "
        "so give each name once"], ran.stderr


def test_a_file_named_like_a_shipped_set_runs_under_that_name_and_its_digest_keeps_it_apart(tmp_path):
    """--source DIR/chatgpt.jsonl (as `meta import-laclip` writes it) is read as --meta-dir DIR reads it: the
    column caption_chatgpt, made from that file's examples; the shipped chatgpt is then "other settings"."""
    import pyarrow.parquet as pq

    from conftest import run_cli
    from rewrite.workdir import layout

    mine = pair_file(tmp_path / "paper" / "chatgpt.jsonl")
    (tmp_path / "c.txt").write_text("a red bicycle leaning on a wall\nchildren playing football\n")
    work, other = tmp_path / "work", tmp_path / "other"
    for w in (work, other):
        run_cli("shard", tmp_path / "c.txt", "--out", w, "--num-shards", "2")
    run_cli("run", "--work", work, "--source", mine, "--shards", "0", "--no-progress")
    run_cli("run", "--work", other, "--source", "chatgpt", "--meta-dir", mine.parent, "--shards", "0", "--no-progress")
    assert layout.Work(work).sources_present() == ["chatgpt"]
    made = layout.Work(work).rewrite_file("chatgpt", 0)
    assert made.read_bytes() == layout.Work(other).rewrite_file("chatgpt", 0).read_bytes()  # as --meta-dir reads it
    recorded = json.loads(layout.Work(work).settings_file("chatgpt").read_text())
    assert recorded["meta_digest"] == meta.load(str(mine)).digest() != meta.load("chatgpt").digest()
    assert pq.read_table(made).num_rows == 1
    shipped = run_cli("run", "--work", work, "--source", "chatgpt", "--no-progress", check=False)
    lines = shipped.stderr.strip().splitlines()
    assert shipped.returncode == 2 and len(lines) == 1 and "written with other settings" in lines[0], shipped.stderr
    assert "meta_digest" in lines[0] and "loading the" not in shipped.stderr
    assert made.read_bytes() == layout.Work(other).rewrite_file("chatgpt", 0).read_bytes()  # nothing lost
    summary = run_cli("export", "--work", work, "--out", tmp_path / "o", "--captions-only", "--allow-missing").stdout
    assert "caption_chatgpt" in summary
