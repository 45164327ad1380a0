"""Meta sets imported from LaCLIP's rewrite/utils.py and from a COCO captions file, and the provenance line.

The LaCLIP-style file here is a stand-in: the same variable names as LaCLIP's, with sentences made up for
this test (the project holds none of the paper's), and code around them that must never run."""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rewrite import meta
from rewrite.meta import importers as metasets

# Stray whitespace as the paper's strings have it: trailing spaces, double spaces, a leading space.
SETS = {
    "coco_caption_list": [
        ["A yellow kayak resting on a pebble beach. ", "A  small boat pulled up on the stones.",
         "Someone left a kayak by the water."],
        ["Three pigeons on a park bench.", "Birds sitting on a wooden bench in a park. ",
         "Three pigeons on a park  bench.", "Pigeons gather on a bench."],  # the third repeats the first
    ],
    "chatgpt_source_caption_list": ["old typewriter on a desk ", "fresh  lemons in a basket"],
    "chatgpt_target_caption_list": ["A dusty typewriter waits on an oak desk beside a stack of letters.",
                                    "A wicker basket overflows with bright, freshly picked lemons."],
    "bard_source_caption_list": ["lighthouse at dusk", "a fox in the snow"],
    "bard_target_caption_list": ["As the sky fades, the lighthouse sweeps its beam across the quiet bay.",
                                 "A red fox pauses in the deep snow, listening for mice below."],
    "human_source_caption_list": [" tram crossing a bridge", "stack of pancakes"],
    "human_target_caption_list": ["A green tram crosses a stone bridge over the river.",
                                  "A tall stack of pancakes with syrup on a white plate."],
}

HEAD = '''"""A stand-in for LaCLIP's rewrite/utils.py."""
import nonexistent_module_for_this_test
from pathlib import Path

Path({marker!r}).write_text("this file ran")
raise SystemExit("this file must never run")

'''

TAIL = '''

def rewrite(captions):
    return [c.upper() for c in chatgpt_source_caption_list]


if __name__ == "__main__":
    rewrite(coco_caption_list)
'''


def laclip_file(tmp_path: Path, sets: dict | None = None, extra: str = "", raw: dict | None = None) -> Path:
    """A utils.py holding `sets` (written out as multi-line list literals), or the raw text given for a name."""
    sets = dict(SETS if sets is None else sets)
    body = ""
    for name, value in sets.items():
        text = (raw or {}).get(name) or "[\n" + "".join(f"    {item!r},\n" for item in value) + "]"
        body += f"{name} = {text}\n\n"
    path = tmp_path / "utils.py"
    path.write_text(HEAD.format(marker=str(tmp_path / "ran")) + body + extra + TAIL)
    return path


def test_import_laclip_reads_never_runs_and_writes_four_usable_sets(tmp_path):
    utils = laclip_file(tmp_path)
    out = tmp_path / "made" / "paper"  # missing: created
    paths = metasets.import_laclip(utils, out)
    assert not (tmp_path / "ran").exists()  # nothing in the file ran (nor failed on its import)
    assert paths == {name: out / f"{name}.jsonl" for name in ("chatgpt", "bard", "human", "coco")}
    sets = {name: meta.load_usable(str(path), 2) for name, path in paths.items()}
    assert {name: (m.name, m.kind, len(m)) for name, m in sets.items()} == {
        "chatgpt": ("chatgpt", "pairs", 2), "bard": ("bard", "pairs", 2), "human": ("human", "pairs", 2),
        "coco": ("coco", "groups", 2)}
    assert sets["chatgpt"].pairs[:1] == (("old typewriter on a desk",
                                          "A dusty typewriter waits on an oak desk beside a stack of letters."),)
    assert sets["human"].pairs[0][0] == "tram crossing a bridge"
    assert sets["coco"].groups == (
        ("A yellow kayak resting on a pebble beach.", "A small boat pulled up on the stones.",
         "Someone left a kayak by the water."),
        ("Three pigeons on a park bench.", "Birds sitting on a wooden bench in a park.", "Pigeons gather on a bench."),
    )
    sha = hashlib.sha256(utils.read_bytes()).hexdigest()
    for name, m in sets.items():
        p = m.provenance
        assert p["made_by"] == "rewrite meta import-laclip"
        assert p["from"]["path"] == str(utils.resolve()) and p["from"]["sha256"] == sha
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["when"])
        when = datetime.strptime(p["when"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert abs(datetime.now(timezone.utc) - when) < timedelta(minutes=5)
    assert sets["chatgpt"].provenance["from"]["variables"] == ["chatgpt_source_caption_list",
                                                               "chatgpt_target_caption_list"]
    assert [sets[n].provenance["normalised"]["whitespace"] for n in ("chatgpt", "bard", "human")] == [2, 0, 1]
    assert sets["chatgpt"].provenance["counts"] == {"pairs": 2}
    assert sets["coco"].provenance["normalised"] == {"whitespace": 4, "duplicate_captions_dropped": 1}
    assert sets["coco"].provenance["counts"] == {"groups": 2, "captions": 6}
    # read_laclip_sets gives the strings as they stand in the file
    raw = metasets.read_laclip_sets(utils)
    assert raw["chatgpt"][0] == ("old typewriter on a desk ", SETS["chatgpt_target_caption_list"][0])
    assert raw["coco"] == SETS["coco_caption_list"]


def test_imported_sets_show_and_validate_with_their_provenance(tmp_path):
    from conftest import run_cli

    paths = metasets.import_laclip(laclip_file(tmp_path), tmp_path / "paper")
    ok = run_cli("meta", "validate", *paths.values(), "--num-examples", "2").stdout
    assert [line.split(":")[:2] for line in ok.splitlines()] == [[n, " ok"] for n in paths]
    three = run_cli("meta", "validate", paths["bard"], check=False)  # two pairs: too few for a run's default k
    assert three.returncode == 1 and "--num-examples 3 is more than its 2 pairs" in three.stdout
    shown = run_cli("meta", "show", paths["bard"]).stdout
    assert shown.startswith("# bard: 2 pairs") and "lighthouse at dusk => As the sky fades" in shown
    assert "provenance" not in shown


@pytest.mark.parametrize("change, message", [
    (dict(drop="bard_target_caption_list"), r"utils.py: no module-level assignment `bard_target_caption_list = \[...\]`"),
    (dict(sets={"human_target_caption_list": SETS["human_target_caption_list"][:1]}),
     r"utils.py: human_source_caption_list \(line \d+\) holds 2 strings but human_target_caption_list \(line \d+\) "
     r"holds 1"),
    (dict(raw={"chatgpt_target_caption_list": "[s.title() for s in chatgpt_source_caption_list]"}),
     r"utils.py:\d+: chatgpt_target_caption_list is not a literal"),
    (dict(raw={"bard_source_caption_list": "'lighthouse at dusk'"}),
     r"utils.py:\d+: bard_source_caption_list is a str, not a list of strings"),
    (dict(sets={"coco_caption_list": [SETS["coco_caption_list"][0], ["A plate of figs.", 42]]}),
     r"utils.py:\d+: coco_caption_list\[1\]\[1\] is a int, not a string"),
    (dict(extra="bard_source_caption_list += ['one more source']\n"),
     r"utils.py:\d+: bard_source_caption_list is bound at lines \d+, \d+; only a single"),
    (dict(sets={"chatgpt_target_caption_list": ["A desk => a typewriter.", "Lemons."]}),
     r"LaCLIP's chatgpt set \(chatgpt_source_caption_list, chatgpt_target_caption_list\) is not usable .*"
     r"'=>' inside.*nothing written"),
    (dict(sets={"coco_caption_list": [["A plate of figs.", "A plate of figs. "], ["A cat.", "A grey cat."]]}),
     r"LaCLIP's coco set \(coco_caption_list\) .*a group with fewer than 2 captions: \('A plate of figs.',\)"),
])
def test_import_laclip_errors_name_file_variable_and_line(tmp_path, change, message):
    sets = {**SETS, **change.get("sets", {})}
    sets.pop(change.get("drop"), None)
    utils = laclip_file(tmp_path, sets, extra=change.get("extra", ""), raw=change.get("raw"))
    with pytest.raises(meta.MetaSetError, match=message):
        metasets.import_laclip(utils, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written, not even some of the sets
    assert not (tmp_path / "ran").exists()


def test_import_laclip_refuses_a_missing_or_non_python_file_and_a_symlinked_target(tmp_path):
    with pytest.raises(meta.MetaSetError, match=r"nope.py: no such file \(expected LaCLIP's rewrite/utils.py\)"):
        metasets.read_laclip_sets(tmp_path / "nope.py")
    notpy = tmp_path / "notes.py"
    notpy.write_text("some notes\nchatgpt_source_caption_list = [\n")
    with pytest.raises(meta.MetaSetError, match=r"notes.py:1: not Python"):
        metasets.read_laclip_sets(notpy)
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("kept\n")
    (out / "human.jsonl").symlink_to(elsewhere)
    with pytest.raises(meta.MetaSetError, match=r"human.jsonl: is a symlink .*refusing"):
        metasets.import_laclip(laclip_file(tmp_path), out)
    assert elsewhere.read_text() == "kept\n" and sorted(p.name for p in out.iterdir()) == ["human.jsonl"]


# -- COCO --------------------------------------------------------------------------------------------------

def coco_file(tmp_path: Path) -> Path:
    """Images 1-5 eligible (5-6 usable captions), 6 with only 3, 7 with 6 of which only 4 distinct; ids out of
    order in the file, whitespace to normalise, a line break, and a caption holding '=>'."""
    captions = {
        1: ["A man rides a bicycle past a bakery.", "Cyclist on a narrow street  in the morning. ",
            "A person on a bike near a shop window.", "A bicycle passing a small bakery.",
            "A man cycling down a quiet\nstreet.", "Someone riding past a bread shop."],
        2: ["A bowl of oranges on a kitchen table.", "Oranges piled in a blue bowl.",
            "Fresh fruit on a wooden table.", "A kitchen table with a bowl of citrus.", "Several oranges in a dish."],
        3: ["Two children fly a kite on a hill.", "Kids with a red kite on a windy day.",
            "A kite above a grassy hill.", "Two kids hold the string of a kite.", "Children playing with a kite outdoors."],
        4: ["A sailboat on a calm lake.", "A white sail on blue water.", "A small boat sailing near the shore.",
            "A lake with one sailboat.", "Sailing on a quiet afternoon."],
        5: ["A clock tower in a town square.", "The old tower => a clock.", "A tall clock tower against the sky.",
            "People walk below a clock tower.", "A stone tower with a large clock.", "A square with a clock tower."],
        6: ["A teapot on a tray.", "A white teapot.", "Tea served on a tray."],
        7: ["A dog on a sofa.", "A dog on a sofa.", "A brown dog naps on a couch.", "A dog asleep on cushions.",
            "A brown dog naps on a couch. ", "A sofa with a sleeping dog."],
    }
    annotations = [{"image_id": image_id, "caption": c} for image_id, caps in captions.items() for c in caps]
    for ann_id, ann in enumerate(annotations, 100):
        ann["id"] = ann_id  # ids in the order above; the file lists them backwards
    doc = {"info": {}, "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in captions],
           "annotations": annotations[::-1]}
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(doc))
    return path


def test_import_coco_writes_a_usable_group_set_with_provenance(tmp_path):
    ann = coco_file(tmp_path)
    out = metasets.import_coco(ann, tmp_path / "sets" / "cocopick.jsonl", groups=5, seed=0)
    m = meta.load_usable(str(out))
    assert (m.name, m.kind, len(m)) == ("cocopick", "groups", 5) and all(len(g) == 5 for g in m.groups)
    assert m.groups[0] == ("A man rides a bicycle past a bakery.", "Cyclist on a narrow street in the morning.",
                           "A person on a bike near a shop window.", "A bicycle passing a small bakery.",
                           "A man cycling down a quiet street.")  # annotation-id order, whitespace normalised
    assert "The old tower => a clock." not in m.groups[4] and len(m.groups[4]) == 5
    p = m.provenance
    assert p["made_by"] == "rewrite meta import-coco"
    assert p["from"] == {"path": str(ann.resolve()), "sha256": hashlib.sha256(ann.read_bytes()).hexdigest()}
    assert (p["seed"], p["captions_per_group"], p["image_ids"]) == (0, 5, [1, 2, 3, 4, 5])
    assert p["counts"] == {"images": 7, "annotations": 36, "eligible_images": 5, "groups": 5, "captions": 25}
    assert p["normalised"] == {"whitespace": 2}
    assert p["skipped"] == {"with_arrow": 1, "empty": 0, "duplicate": 2}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["when"])


def test_import_coco_is_deterministic_for_a_seed(tmp_path):
    ann = coco_file(tmp_path)

    def pick(seed: int, name: str) -> tuple:
        m = meta.parse(metasets.import_coco(ann, tmp_path / f"{name}.jsonl", groups=3, seed=seed, overwrite=True), name)
        assert set(m.provenance["image_ids"]) <= {1, 2, 3, 4, 5} and m.provenance["image_ids"] == sorted(
            m.provenance["image_ids"])
        return m.provenance["image_ids"], m.groups

    assert pick(0, "a") == pick(0, "b")
    assert pick(0, "a")[0] != pick(1, "c")[0]
    assert (tmp_path / "a.jsonl").read_text().split("\n", 1)[1] == (tmp_path / "b.jsonl").read_text().split("\n", 1)[1]


@pytest.mark.parametrize("doc, message", [
    ("{not json", r"captions.json: not JSON \(Expecting property name.* at line 1 column 2\)"),
    ([], r"captions.json: the top level is a JSON list, not an object with 'images' and 'annotations'"),
    ({"images": []}, r"captions.json: the top level has no key 'annotations'"),
    ({"images": [{"id": 1}], "annotations": [{"image_id": 1, "id": 5}]},
     r"captions.json: annotations\[0\] has no key 'caption'"),
    ({"images": [{"id": 1}], "annotations": [{"image_id": 2, "id": 5, "caption": "A cat."}]},
     r"captions.json: annotations\[0\] has image_id 2, which no entry of 'images' has"),
    ({"images": [{"id": "1"}], "annotations": []}, r"captions.json: images\[0\]\['id'\] is '1', not a JSON integer"),
])
def test_import_coco_errors_name_file_and_key(tmp_path, doc, message):
    path = tmp_path / "captions.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(meta.MetaSetError, match=message):
        metasets.import_coco(path, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_import_coco_says_how_many_images_are_eligible(tmp_path):
    ann = coco_file(tmp_path)
    with pytest.raises(meta.MetaSetError, match=r"captions_train.json: 5 eligible image\(s\) \(with at least 5 "
                                                r"distinct usable captions\), fewer than the 6 groups asked for"):
        metasets.import_coco(ann, tmp_path / "out.jsonl", groups=6)
    with pytest.raises(meta.MetaSetError, match=r"1 eligible image\(s\) \(with at least 6"):
        metasets.import_coco(ann, tmp_path / "out.jsonl", captions_per_group=6)
    with pytest.raises(meta.MetaSetError, match=r"out.json: a meta set file's name must end in .jsonl"):
        metasets.import_coco(ann, tmp_path / "out.json")
    with pytest.raises(meta.MetaSetError, match=r"missing.json: no such file"):
        metasets.import_coco(tmp_path / "missing.json", tmp_path / "out.jsonl")


# -- the provenance line and meta.write ---------------------------------------------------------------------

def test_provenance_round_trips_and_leaves_the_digest_alone(tmp_path):
    pairs = [("a café by the harbour", "Small fishing boats rest beside a quiet café at dawn."),
             ("snow on a roof", "A thick layer of fresh snow covers a cabin's roof.")]
    # str.splitlines splits at U+2028 (a set's strings may not hold one, a path may)
    provenance = {"made_by": "a test", "from": {"path": "/nowhere/utils\u2028.py"}, "counts": {"pairs": 2}}
    with_prov = meta.write(tmp_path / "mine.jsonl", pairs=pairs, provenance=provenance)
    assert with_prov.provenance == provenance and with_prov.pairs == tuple(pairs)
    again = meta.load_usable(str(tmp_path / "mine.jsonl"), 2)
    assert again.provenance == provenance and again.pairs == tuple(pairs)
    text = (tmp_path / "mine.jsonl").read_text(encoding="utf-8")
    assert "café" in text and len(text.splitlines()) == 3  # readable UTF-8 where safe, \u-escaped where not
    without = meta.write(tmp_path / "plain.jsonl", pairs=pairs)
    assert without.provenance is None and (tmp_path / "plain.jsonl").read_text().count("\n") == 2
    assert with_prov.digest() == without.digest()  # how a set was made is not what it holds
    groups = meta.write(tmp_path / "g.jsonl", groups=[["A cat.", "A grey cat."]], provenance={"seed": 3})
    assert groups.groups == (("A cat.", "A grey cat."),) and groups.provenance == {"seed": 3}


def test_a_provenance_line_only_first(tmp_path):
    pair = '{"source": "a", "target": "b"}'
    ok = tmp_path / "ok.jsonl"
    ok.write_text('\n  \n{"provenance": {"made_by": "hand"}}\n' + pair + "\n")
    assert meta.load(str(ok)).provenance == {"made_by": "hand"}
    assert meta.load(str(ok)).digest() == hashlib.sha256((pair + "\n").encode()).hexdigest()
    for name, text, message in [
        ("late", pair + '\n{"provenance": {}}\n', r"late.jsonl:2: a provenance line may only be the file's first line"),
        ("twice", '{"provenance": {}}\n{"provenance": {}}\n' + pair, r"twice.jsonl:2: a provenance line may only"),
        ("notdict", '{"provenance": "by hand"}\n' + pair, r'notdict.jsonl:1: expected {"provenance": {...}}'),
        ("empty", '{"provenance": {}}\n', r"empty.jsonl: holds no examples"),
    ]:
        (tmp_path / f"{name}.jsonl").write_text(text)
        with pytest.raises(meta.MetaSetError, match=message):
            meta.load(str(tmp_path / f"{name}.jsonl"))


def test_write_refuses_an_unusable_set_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"source": "old", "target": "Old one."}\n')
    for kwargs, message in [
        (dict(pairs=[("a => b", "c"), ("d", "d")]), r"mine.jsonl: not written, .*'=>' inside: 'a => b'; "
                                                    r"target equals source: 'd'"),
        (dict(groups=[["A cat."]]), r"not written, .*a group with fewer than 2 captions"),
        (dict(pairs=[("a", "b")], groups=[["c", "d"]]), r"either source/target pairs or caption groups"),
        (dict(), r"either source/target pairs or caption groups \(got 0 pairs and 0 groups\)"),
        (dict(pairs=[("a", "b")], provenance={"ids": {1, 2}}), r"provenance is not plain JSON"),
        (dict(pairs=[("a", "b")], provenance=["made by hand"]), r"provenance must be a dict"),
        (dict(pairs=[("snow", "Snow\u2028on a roof.")]), r"a control character, tab or line break inside"),
        (dict(pairs=[("a", " ".join(["b"] * 80))]), r"82 CLIP tokens, more than the 77"),
    ]:
        with pytest.raises(meta.MetaSetError, match=message):
            meta.write(path, **kwargs)
    assert path.read_text() == '{"source": "old", "target": "Old one."}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.jsonl"]  # no temp file left


def test_the_papers_sets_imported_then_all_four_in_one_run(tmp_path):
    """import-laclip, then `run --source all --meta-dir`: one engine start, four columns, each made from the
    imported set (its digest is the one the run recorded), on the packaged model."""
    import pyarrow.parquet as pq

    from conftest import run_cli

    utils, paper = laclip_file(tmp_path), tmp_path / "paper"
    said = run_cli("meta", "import-laclip", utils, "--out", paper).stdout
    assert "chatgpt: 2 pairs" in said and "coco: 2 groups" in said
    captions = tmp_path / "captions.txt"
    captions.write_text("a red tram on a bridge\nthree pigeons on a bench\nlemons in a wicker basket\n")
    work = tmp_path / "work"
    run_cli("shard", captions, "--out", work, "--num-shards", "1")
    ran = run_cli("run", "--work", work, "--source", "all", "--meta-dir", paper, "--num-examples", "2", "--no-progress")
    assert ran.stderr.count("loading the") == 1
    for name in ("chatgpt", "bard", "coco", "human"):
        recorded = json.loads(layout_settings(work, name).read_text())
        assert recorded["meta_digest"] == meta.load(str(paper / f"{name}.jsonl")).digest() != meta.load(name).digest()
        rows = pq.read_table(work / "rewrites" / name / "00000.parquet").to_pylist()
        assert len(rows) == 3 and sum(r["status"] == "ok" for r in rows) >= 2
    out = tmp_path / "export"
    run_cli("export", "--work", work, "--out", out, "--captions-only")
    table = pq.read_table(next((out / "data").glob("*.parquet")))
    assert set(table.column_names) == {"key", "caption", "caption_chatgpt", "caption_bard", "caption_coco", "caption_human"}
    assert all(table.column(f"caption_{name}").null_count < 3 for name in ("chatgpt", "bard", "coco", "human"))


def layout_settings(work: Path, name: str) -> Path:
    from rewrite.workdir import layout

    return layout.Work(work).settings_file(name)


# -- a set of yours is never replaced -----------------------------------------------------------------------

def refused(proc, *names: str) -> str:
    """The one `error:` line of a refused command (exit 2, no traceback), which names each of `names`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_import_laclip_replaces_only_sets_it_wrote_and_only_with_overwrite(tmp_path):
    from conftest import run_cli

    utils = laclip_file(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "bard.jsonl").write_text('{"source": "my own", "target": "My own hand-written pair."}\n')
    (mine / "notes.txt").write_text("kept\n")
    before = snapshot(mine)
    refused(run_cli("meta", "import-laclip", utils, "--out", mine, check=False), str(mine / "bard.jsonl"), "exists")
    assert snapshot(mine) == before  # not even the three sets that were free
    said = refused(run_cli("meta", "import-laclip", utils, "--out", mine, "--overwrite", check=False),
                   str(mine / "bard.jsonl"))
    assert "did not write it" in said and snapshot(mine) == before

    paper = tmp_path / "paper"
    run_cli("meta", "import-laclip", utils, "--out", paper)
    (paper / "notes.txt").write_text("kept\n")
    refused(run_cli("meta", "import-laclip", utils, "--out", paper, check=False), str(paper / "chatgpt.jsonl"),
            "--overwrite")
    (paper / "coco.jsonl").write_text('{"captions": ["My cat.", "My grey cat."]}\n')  # now a set of the user's
    before = snapshot(paper)
    refused(run_cli("meta", "import-laclip", utils, "--out", paper, "--overwrite", check=False), str(paper / "coco.jsonl"))
    assert snapshot(paper) == before
    (paper / "coco.jsonl").unlink()
    run_cli("meta", "import-laclip", utils, "--out", paper, "--overwrite")
    assert (paper / "notes.txt").read_text() == "kept\n"
    made = {p.name: meta.load(str(p)).provenance["made_by"] for p in paper.glob("*.jsonl")}
    assert made == dict.fromkeys(["chatgpt.jsonl", "bard.jsonl", "human.jsonl", "coco.jsonl"], meta.IMPORT_LACLIP)


def test_import_coco_and_generate_replace_only_sets_they_wrote(tmp_path):
    from conftest import run_cli

    ann, sets = coco_file(tmp_path), tmp_path / "sets"
    sets.mkdir()
    hand = sets / "hand.jsonl"
    hand.write_text('{"captions": ["My cat.", "My grey cat."]}\n')
    (tmp_path / "c.txt").write_text("a dog\na cat\n")
    no_model = tmp_path / "no-model"  # an engine that tried to load would say so instead
    for overwrite in ([], ["--overwrite"]):
        refused(run_cli("meta", "import-coco", ann, "--out", hand, "--groups", "2", *overwrite, check=False), str(hand))
        said = refused(run_cli("meta", "generate", "--from", tmp_path / "c.txt", "--out", hand, "--count", "2",
                               "--model", no_model, *overwrite, check=False), str(hand))
        assert "no-model" not in said
    assert hand.read_text() == '{"captions": ["My cat.", "My grey cat."]}\n'

    made = sets / "made.jsonl"
    run_cli("meta", "import-coco", ann, "--out", made, "--groups", "2")
    first = made.read_bytes()
    refused(run_cli("meta", "import-coco", ann, "--out", made, "--groups", "3", check=False), str(made), "--overwrite")
    refused(run_cli("meta", "generate", "--from", tmp_path / "c.txt", "--out", made, "--count", "2",
                    "--model", no_model, check=False), str(made))
    assert made.read_bytes() == first
    run_cli("meta", "import-coco", ann, "--out", made, "--groups", "3", "--overwrite")
    assert len(meta.load(str(made))) == 3
    # generate may replace it too: past the check of --out, the engine is what fails here
    said = refused(run_cli("meta", "generate", "--from", tmp_path / "c.txt", "--out", made, "--count", "2",
                           "--model", no_model, "--overwrite", check=False))
    assert "no-model" in said and len(meta.load(str(made))) == 3


@pytest.mark.parametrize("name, message", [
    ("link.jsonl", "is a symlink"), ("folder.jsonl", "exists and is not a file"),
    ("set.json", "must end in .jsonl"), ("my set.jsonl", "may hold only letters"),
])
def test_generate_refuses_a_bad_out_before_the_engine_loads(tmp_path, name, message):
    from conftest import run_cli

    (tmp_path / "elsewhere.jsonl").write_text("kept\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "c.txt").write_text("a dog\na cat\n")
    said = refused(run_cli("meta", "generate", "--from", tmp_path / "c.txt", "--out", tmp_path / name, "--count", "2",
                           "--model", tmp_path / "no-model", "--overwrite", check=False), name)
    assert message in said and (tmp_path / "elsewhere.jsonl").read_text() == "kept\n"


@pytest.mark.parametrize("content", [
    b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)),  # a binary: null bytes
    b"# -*- coding: nonsense -*-\nchatgpt_source_caption_list = []\n",  # an encoding Python does not know
], ids=["binary", "unknown-coding"])
def test_import_laclip_names_a_file_that_is_not_python_without_a_line_it_does_not_have(tmp_path, content):
    from conftest import run_cli

    utils = tmp_path / "utils.py"
    utils.write_bytes(content)
    said = refused(run_cli("meta", "import-laclip", utils, "--out", tmp_path / "out", check=False))
    assert said.startswith(f"error: {utils}: not Python (") and "None" not in said and ":0:" not in said
    assert not (tmp_path / "out").exists()
