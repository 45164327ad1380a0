import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import CAPTIONS, write_parquet
from rewrite.workdir import layout
from rewrite.workdir.manifest import InputFile, Piece, format_shard_spec, load_manifest, parse_shard_spec
from rewrite.inputs import plan


@pytest.mark.parametrize("spec, expected", [
    ("7", [7]), ("0-3", [0, 1, 2, 3]), ("0,3,9-11", [0, 3, 9, 10, 11]), (" 2 , 1 ", [1, 2]), ("all", list(range(12))),
])
def test_shard_specs(spec, expected):
    assert parse_shard_spec(spec, 12) == expected
    if spec != "all":
        assert parse_shard_spec(format_shard_spec(expected), 12) == expected


@pytest.mark.parametrize("spec, message", [
    ("1-x", "not a shard id"), ("5-2", "runs backwards"), ("12", "not in the plan"), ("", "not a shard id"), ("-1", "not a shard id"),
])
def test_malformed_shard_specs_name_the_option(spec, message):
    with pytest.raises(plan.PlanError, match=f"--shards.*{message}"):
        parse_shard_spec(spec, 12)


def test_bounds_and_pieces():
    assert plan.shard_bounds(10, num_shards=3) == [(0, 3), (3, 6), (6, 10)]
    assert plan.shard_bounds(10, rows_per_shard=4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(plan.PlanError, match="more than the 10 input rows"):
        plan.shard_bounds(10, num_shards=11)
    files = [InputFile("a", "a", "parquet", 4, "a"), InputFile("b", "b", "parquet", 0, "b"),
             InputFile("c", "c", "parquet", 5, "c")]
    assert plan.pieces(files, 2, 7) == [Piece(0, 2, 4), Piece(2, 0, 3)]


def test_parquet_folder_plan_reads_only_metadata(parquet_dir, tmp_path):
    # Corrupt the data pages of one file but keep its footer: planning (metadata only) still works,
    # reading the rows then fails with an error that names the file.
    victim = parquet_dir / "00001.parquet"
    data = bytearray(victim.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i in range(4, len(data) - footer):
        data[i] = 0xFF
    victim.write_bytes(bytes(data))
    m = plan.plan([str(parquet_dir)], tmp_path / "work", num_shards=3)
    assert m.total_rows == len(CAPTIONS) and m.key_column == "key" and m.num_shards == 3
    assert [f.format for f in m.files] == ["parquet", "parquet"]
    assert load_manifest(tmp_path / "work").to_dict() == m.to_dict()
    with pytest.raises(plan.PlanError, match="00001.parquet"):
        for s in range(3):
            list(plan.iter_shard(m, s, 4))


def test_shards_cover_every_row_once_in_order(parquet_dir, tmp_path):
    m = plan.plan([str(parquet_dir / "*.parquet")], tmp_path / "work", num_shards=4)
    keys, caps = [], []
    for s in range(m.num_shards):
        chunks = list(plan.iter_shard(m, s, 2))
        assert all(c.num_rows == 2 for c in chunks[:-1])
        keys += [k for c in chunks for k in c.column(layout.KEY).to_pylist()]
        caps += [k for c in chunks for k in c.column(layout.CAPTION).to_pylist()]
    assert keys == [f"{i:09d}" for i in range(len(CAPTIONS))]
    assert caps == CAPTIONS
    full = pa.concat_tables(list(plan.iter_shard(m, 0, 100, columns=None)))
    assert full.column_names == ["key", "caption", "image", "width"]


def test_text_csv_and_tsv_inputs_get_stable_derived_keys(tmp_path, text_file):
    csv = tmp_path / "pairs.csv"
    csv.write_text('url,text\nhttp://a/1.jpg,"a caption, with a comma"\nhttp://a/2.jpg,"two\nlines"\n', encoding="utf-8")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("filepath\ttitle\n1.jpg\tfirst title\n2.jpg\t12345\n", encoding="utf-8")
    m = plan.plan([str(text_file)], tmp_path / "w1", num_shards=2)
    assert m.key_column is None and m.total_rows == len(CAPTIONS)
    rows = [r for s in range(2) for c in plan.iter_shard(m, s, 5) for r in c.to_pylist()]
    assert rows[0] == {"key": "captions-000000000", "caption": CAPTIONS[0]}
    assert rows[10] == {"key": "captions-000000010", "caption": ""}  # blank lines keep their row
    m2 = plan.plan([str(csv)], tmp_path / "w2", num_shards=1, caption_column="text")
    assert [r["caption"] for r in next(plan.iter_shard(m2, 0, 10)).to_pylist()] == ["a caption, with a comma", "two\nlines"]
    m3 = plan.plan([str(tsv)], tmp_path / "w3", num_shards=1, caption_column="title")
    assert next(plan.iter_shard(m3, 0, 10)).column("caption").to_pylist() == ["first title", "12345"]


def test_hugging_face_layout(tmp_path):
    write_parquet(tmp_path / "hf" / "data" / "train-00000-of-00002.parquet", CAPTIONS[:6])
    write_parquet(tmp_path / "hf" / "data" / "train-00001-of-00002.parquet", CAPTIONS[6:], 6)
    (tmp_path / "hf" / "README.md").write_text("---\n---\n")
    m = plan.plan([str(tmp_path / "hf")], tmp_path / "work", rows_per_shard=5)
    assert m.num_shards == 3 and m.total_rows == len(CAPTIONS)


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "nope.parquet"), "input path .*nope.parquet does not exist"),
    (lambda d: str(d / "*.parquet"), "matches no"),
    (lambda d: (d / "empty.txt").write_text("") or str(d / "empty.txt"), "hold no rows"),
    (lambda d: (d / "x.json").write_text("{}") and str(d / "x.json"), "unsupported file type"),
    (lambda d: str(write_parquet(d / "p.parquet", ["a"]).parent / "p.parquet"), None),
])
def test_bad_inputs_name_the_path(tmp_path, make, message):
    d = tmp_path / "in"
    d.mkdir()
    arg = make(d)
    if message is None:
        assert plan.plan([arg], tmp_path / "w").total_rows == 1
    else:
        with pytest.raises(plan.PlanError, match=message):
            plan.plan([arg], tmp_path / "w")


def test_missing_caption_column_names_file_and_column(parquet_dir, tmp_path):
    with pytest.raises(plan.PlanError, match=r"00000.parquet has no caption column 'text' \(columns: key, caption, image, width\)"):
        plan.plan([str(parquet_dir)], tmp_path / "w", caption_column="text")
    csv = tmp_path / "a.csv"
    csv.write_text("url,title\nx,y\n")
    with pytest.raises(plan.PlanError, match="a.csv has no caption column 'caption'"):
        plan.plan([str(csv)], tmp_path / "w")


def test_non_string_caption_column_is_refused(tmp_path):
    pq.write_table(pa.table({"caption": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(plan.PlanError, match="ints.parquet: caption column 'caption' holds int64"):
        plan.plan([str(tmp_path / "ints.parquet")], tmp_path / "w")


def test_invalid_utf8_names_the_line(tmp_path):
    t = tmp_path / "bad.txt"
    t.write_bytes(b"good line\nbad \xff\xfe line\n")
    with pytest.raises(plan.PlanError, match="bad.txt, line 2: not valid UTF-8"):
        plan.plan([str(t)], tmp_path / "w")
    c = tmp_path / "bad.csv"
    c.write_bytes(b"caption\nok\nfine\nbad \xff\n")
    with pytest.raises(plan.PlanError, match="bad.csv, line 4: not valid UTF-8"):
        plan.plan([str(c)], tmp_path / "w")


def test_missing_plan_is_a_clear_error(tmp_path):
    with pytest.raises(plan.PlanError, match="has no shard plan.*rewrite shard"):
        load_manifest(tmp_path)


def test_a_csv_key_column_is_the_key_and_every_csv_column_stays_text(tmp_path):
    """A CSV header counts like a parquet schema, and cells are kept as written (no type inference)."""
    csv = tmp_path / "pairs.csv"
    csv.write_text("key,caption,id,score\nk0,a red apple,007,1.50\nk1,a green pear,,true\nk2,a blue plum,1e3,\n",
                   encoding="utf-8")
    m = plan.plan([str(csv)], tmp_path / "w")
    assert m.key_column == "key" and m.columns == ["key", "caption", "id", "score"]
    assert next(plan.iter_shard(m, 0, 10)).column("key").to_pylist() == ["k0", "k1", "k2"]
    full = next(plan.iter_shard(m, 0, 10, columns=None))
    assert full.schema == pa.schema([(c, pa.string()) for c in ["key", "caption", "id", "score"]])
    assert full.column("id").to_pylist() == ["007", "", "1e3"]
    assert full.column("score").to_pylist() == ["1.50", "true", ""]


@pytest.mark.parametrize("second, message", [
    (pa.table({"caption": ["b"], "width": ["wide"]}), r"'width' is int64 in .*a.parquet and string in .*b.parquet"),
    (pa.table({"caption": ["b"], "width": [1.5]}), r"'width' is int64 in .*a.parquet and double in .*b.parquet"),
    (pa.table({"caption": ["b"], "width": pa.array([1], pa.uint64())}), r"'width' is int64 in .*a.parquet and uint64"),
])
def test_conflicting_column_types_are_refused_naming_both_files(tmp_path, second, message):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"caption": ["a"], "width": [1]}), tmp_path / "in" / "a.parquet")
    pq.write_table(second, tmp_path / "in" / "b.parquet")
    with pytest.raises(plan.PlanError, match=message):
        plan.plan([str(tmp_path / "in")], tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_csv_beside_parquet_must_agree_on_types(tmp_path):
    """CSV columns are text: a parquet column of numbers under the same name is a conflict, found at planning."""
    pq.write_table(pa.table({"caption": ["a"], "id": [7]}), tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("caption,id\nb,007\n")
    with pytest.raises(plan.PlanError, match=r"'id' is int64 in .*a.parquet and string in .*b.csv"):
        plan.plan([str(tmp_path / "a.parquet"), str(tmp_path / "b.csv")], tmp_path / "w")


def test_every_chunk_has_the_unified_schema(tmp_path):
    """A column missing from a file is null there; narrower types are widened; chunks may span files."""
    pq.write_table(pa.table({"caption": pa.array(["a0", "a1", "a2"], pa.large_string()),
                             "width": pa.array([1, 2, 3], pa.int32())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"height": [9, 8], "caption": ["b0", "b1"], "width": pa.array([4, 5], pa.int64())}),
                   tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("c0\n")
    m = plan.plan([str(tmp_path / n) for n in ("a.parquet", "b.parquet", "c.txt")], tmp_path / "w", num_shards=1)
    assert m.columns == ["caption", "width", "height", "key"]
    chunks = list(plan.iter_shard(m, 0, 2, columns=None))
    want = pa.schema([("caption", pa.large_string()), ("width", pa.int64()), ("height", pa.int64()), ("key", pa.string())])
    assert [c.schema.remove_metadata() for c in chunks] == [want] * 3
    rows = pa.concat_tables(chunks).to_pylist()
    assert [(r["caption"], r["width"], r["height"]) for r in rows] == [
        ("a0", 1, None), ("a1", 2, None), ("a2", 3, None), ("b0", 4, 9), ("b1", 5, 8), ("c0", None, None)]
    assert [r["key"] for r in rows] == ["a-000000000", "a-000000001", "a-000000002", "b-000000000", "b-000000001", "c-000000000"]
    assert next(plan.iter_shard(m, 0, 10)).schema == pa.schema([("key", pa.string()), ("caption", pa.string())])


@pytest.mark.parametrize("csv_header", ["key,caption", "caption"])
def test_a_key_column_in_some_inputs_only_is_refused(tmp_path, csv_header):
    """Like parquet, a CSV with a `key` column beside an input without one needs --key-column."""
    with_key = csv_header.startswith("key")
    (tmp_path / "a.csv").write_text(f"{csv_header}\n{'k0,' if with_key else ''}a caption\n")
    pq.write_table(pa.table({"caption": ["b"]} if with_key else {"key": ["k1"], "caption": ["b"]}), tmp_path / "b.parquet")
    has, lacks = ("a.csv", "b.parquet") if with_key else ("b.parquet", "a.csv")
    with pytest.raises(plan.PlanError, match=rf"{has} has a `key` column and .*{lacks} has none: pass --key-column"):
        plan.plan([str(tmp_path / "a.csv"), str(tmp_path / "b.parquet")], tmp_path / "w")


def test_input_columns_are_never_clobbered(tmp_path):
    """A repeated column name, or a `key` column where keys are derived, is refused at planning."""
    (tmp_path / "twice.csv").write_text("caption,id,id\na,1,2\n")
    with pytest.raises(plan.PlanError, match=r"twice.csv has more than one column named 'id'"):
        plan.plan([str(tmp_path / "twice.csv")], tmp_path / "w")
    (tmp_path / "keys.txt").write_text("k0\n")
    with pytest.raises(plan.PlanError, match=r"keys.txt has a column named 'key', where the keys derived"):
        plan.plan([str(tmp_path / "keys.txt")], tmp_path / "w", caption_column="key")


def test_a_plan_records_each_file_s_identity_and_an_older_plan_without_it_still_reads(parquet_dir, tmp_path):
    """Size and footer digest of each file read (a conversion's, for CSV); a plan made before they were
    recorded loads with its id unchanged (runs and exports recorded it) and is read without the check."""
    (tmp_path / "c.csv").write_text("key,caption\nc0,a caption\n")
    work = tmp_path / "work"
    m = plan.plan([str(parquet_dir), str(tmp_path / "c.csv")], work)
    saved = json.loads((work / "manifest.json").read_text())
    data = [m.data_path(f) for f in m.files]
    assert data[2].parent == work / "inputs"
    assert [f["size"] for f in saved["files"]] == [p.stat().st_size for p in data]
    assert len({f["digest"] for f in saved["files"]}) == 3 and all(len(f["digest"]) == 64 for f in saved["files"])

    for f in saved["files"]:
        del f["size"], f["digest"]
    (work / "manifest.json").write_text(json.dumps(saved))
    old = load_manifest(work)
    body = {k: v for k, v in saved.items() if k != "created"}
    assert old.plan_id() == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    write_parquet(parquet_dir / "00000.parquet", [c.upper() for c in CAPTIONS[:7]])  # same rows, other bytes
    assert next(plan.iter_shard(old, 0, 7)).column("caption").to_pylist() == [c.upper() for c in CAPTIONS[:7]]
    with pytest.raises(plan.PlanError, match="00000.parquet changed since it was planned"):
        list(plan.iter_shard(m, 0, 7))
