"""rewrite.tars on real webdataset shards made here: JPEG images (Pillow), keys out of order, bad tars."""
from __future__ import annotations

import copy
import gzip
import io
import json
import os
import random
import tarfile
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rewrite import tars
from rewrite.tars import ByteCounter, TarError

KEYS = ["000000007", "000000002", "000000005", "000000003"]  # download-completion order, not key order
BIG = 4 * 1024 * 1024  # bigger than the copy's window and buffers together (tars.WINDOW, COPY_BUFFER)


def jpeg(i: int, side: int = 16) -> bytes:
    """A real small JPEG, different per i."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), ((40 * i) % 256, 90, 200 - i)).save(buf, "JPEG")
    return buf.getvalue()


def info(name: str, size: int = 0, mtime: int = 1_700_000_000, type_: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.type, ti.mode = size, mtime, type_, 0o640
    ti.uid, ti.gid, ti.uname, ti.gname = 1000, 1001, "alice", "staff"
    return ti


def make_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> Path:
    """Write members in the given order; each gets a distinct mtime. A name ending in '/' is a folder."""
    with tarfile.open(path, "w", format=fmt, encoding="utf-8") as tar:
        for i, (name, data) in enumerate(members):
            if name.endswith("/"):
                tar.addfile(info(name, 0, 1_700_000_000 + i, tarfile.DIRTYPE))
            else:
                tar.addfile(info(name, len(data), 1_700_000_000 + i), io.BytesIO(data))
    return path


def meta(key: str) -> dict:
    return {"key": key, "url": f"http://example.com/{key}.jpg", "caption": f"json caption {key}",
            "status": "success", "width": 16, "height": 16}


def img2dataset_members() -> list[tuple[str, bytes]]:
    """Like an img2dataset shard: KEY.jpg, KEY.txt, KEY.json per sample; one sample without a txt and
    one without a json; non-ASCII caption."""
    members = []
    for i, key in enumerate(KEYS):
        members.append((f"{key}.jpg", jpeg(i)))
        if key != "000000005":
            members.append((f"{key}.txt", f"caption {key} café".encode()))
        if key != "000000003":
            members.append((f"{key}.json", json.dumps(meta(key), indent=4).encode()))
    return members


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return make_tar(tmp_path / "00000.tar", img2dataset_members())


def read_members(data_or_path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else open(data_or_path, "rb")
    with source, tarfile.open(fileobj=source) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def member_offsets(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


# --------------------------------------------------------------------------------------------- braces

@pytest.mark.parametrize("pattern, expected", [
    ("shards/{00000..00003}.tar", ["shards/00000.tar", "shards/00001.tar", "shards/00002.tar", "shards/00003.tar"]),
    ("{a,b}/{1..2}.tar", ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]),
    ("plain/00000.tar", ["plain/00000.tar"]),
    ("s{08..10}", ["s08", "s09", "s10"]),
    ("s{9..11}", ["s9", "s10", "s11"]),
    ("{3..1}", ["3", "2", "1"]),
    ("x{0..10..5}", ["x0", "x5", "x10"]),
    ("{a,{b,c}}d", ["ad", "bd", "cd"]),
    ("{x}{1..2}", ["{x}1", "{x}2"]),
    ("{,_v}.tar", [".tar", "_v.tar"]),
])
def test_expand_braces(pattern, expected):
    assert tars.expand_braces(pattern) == expected


def test_expand_braces_big_range_keeps_padding():
    shards = tars.expand_braces("s3://b/{00000000..00000127}.tar")
    assert len(shards) == 128 and shards[0] == "s3://b/00000000.tar" and shards[-1] == "s3://b/00000127.tar"


# --------------------------------------------------------------------------------------------- keys

@pytest.mark.parametrize("key", ["000000001", "uid0abc-3", "dir/abc", "a/b/c"])
def test_check_key_accepts(key):
    tars.check_key(key, "t.tar", f"{key}.jpg")


@pytest.mark.parametrize("key, why", [
    ("", "empty"), ("/abs", "absolute"), ("../x", "'..'"), ("a/../../x", "'..'"), ("a\\b", "backslash"),
    ("a\x00b", "control"), ("a\nb", "control"), ("a\x7fb", "control"), ("a//b", "empty or '.'"),
    ("./a", "empty or '.'"), ("dir/", "empty or '.'"), ("bad\udcff", "not UTF-8"),
])
def test_check_key_refuses(key, why):
    with pytest.raises(TarError) as e:
        tars.check_key(key, "/data/00000.tar", f"{key}.txt")
    assert why in str(e.value) and "/data/00000.tar" in str(e.value)


@pytest.mark.parametrize("member", ["img.001.txt", "img.001.json", "img.a.TXT"])
def test_check_key_refuses_dotted_key(member):
    with pytest.raises(TarError, match="dot in its key") as e:
        tars.check_key("img", "t.tar", member)
    assert repr(member) in str(e.value)


def test_split_member_follows_webdataset():
    assert tars.split_member("dir/abc.seg.png") == ("dir/abc", "seg.png")
    assert tars.split_member("a.b/c.txt") == ("a.b/c", "txt")
    assert tars.split_member("README") is None and tars.split_member("__index__") is None
    tars.check_key("img", "t.tar", "img.seg.png")  # a dotted image extension is fine


# --------------------------------------------------------------------------------------------- reading

def test_iter_samples_keeps_tar_order_and_reads_captions(shard):
    samples = list(tars.iter_samples(shard))
    assert [s.key for s in samples] == KEYS
    by_key = {s.key: s for s in samples}
    assert by_key["000000007"].caption == "caption 000000007 café"
    assert by_key["000000007"].json == meta("000000007")
    assert by_key["000000007"].members == ["000000007.jpg", "000000007.txt", "000000007.json"]
    assert by_key["000000005"].caption is None  # no txt: the caller records a status
    assert by_key["000000003"].json is None and by_key["000000003"].caption == "caption 000000003 café"


def test_iter_samples_caption_from_json_field(shard):
    samples = {s.key: s for s in tars.iter_samples(shard, caption_field="caption")}
    assert samples["000000005"].caption == "json caption 000000005"
    assert samples["000000003"].caption is None  # no json
    assert {s.caption for s in tars.iter_samples(shard, caption_field="missing")} == {None}


@pytest.mark.parametrize("value, kind", [(3, "a number"), (2.5, "a number"), (["a", "b"], "a list"),
                                         ({"en": "a cat"}, "an object"), (True, "a boolean")])
def test_a_caption_field_that_is_not_a_string_is_refused(tmp_path, value, kind):
    path = _bad(tmp_path, [("000000002.jpg", jpeg(2)), ("000000002.json", json.dumps({"caption": value}).encode()),
                           ("000000003.json", b'{"caption": null}')])
    message = _error(path, caption_field="caption")
    assert "'000000002.json'" in message and "'caption'" in message and kind in message
    assert [s.caption for s in tars.iter_samples(path)] == ["fine", None, None]  # KEY.txt captions: not read
    path = _bad(tmp_path, [("000000003.json", b'{"caption": null}'), ("000000004.json", b'{"title": "x"}')])
    assert [s.caption for s in tars.iter_samples(path, caption_field="caption")] == [None, None, None]  # skipped rows


def test_iter_samples_text_exts_without_caption_source_is_refused(shard):
    with pytest.raises(ValueError, match="text_exts"):
        tars.iter_samples(shard, text_exts=("json",))


def test_iter_samples_txt_only_leaves_json_unread(shard):
    samples = list(tars.iter_samples(shard, text_exts=("txt",)))
    assert all(s.json is None for s in samples) and samples[0].caption == "caption 000000007 café"


def test_subfolder_keys_dotted_image_ext_and_skipped_members(tmp_path):
    path = make_tar(tmp_path / "s.tar", [
        ("shard/", b""), ("README", b"not a sample"),
        ("dir/b.seg.png", jpeg(1)), ("dir/b.txt", b"second"), ("dir/a.jpg", jpeg(2)), ("dir/a.txt", b"first"),
    ])
    samples = list(tars.iter_samples(path))
    assert [(s.key, s.caption, s.members) for s in samples] == [
        ("dir/b", "second", ["dir/b.seg.png", "dir/b.txt"]), ("dir/a", "first", ["dir/a.jpg", "dir/a.txt"])]
    assert tars.count_samples(path) == 2


def test_count_samples(shard):
    assert tars.count_samples(shard) == len(KEYS) == len(list(tars.iter_samples(shard)))


def test_empty_tar_has_no_samples(tmp_path):
    path = make_tar(tmp_path / "empty.tar", [])
    assert list(tars.iter_samples(path)) == [] and tars.count_samples(path) == 0


@pytest.fixture
def big_shard(tmp_path: Path) -> Path:
    rng = random.Random(0)
    members = []
    for i, key in enumerate(["000000042", "000000017", "000000031"]):
        members += [(f"{key}.jpg", jpeg(i) + rng.randbytes(BIG)), (f"{key}.txt", f"big {key}".encode()),
                    (f"{key}.json", json.dumps(meta(key)).encode())]
    return make_tar(tmp_path / "00001.tar", members)


def test_iter_samples_skips_image_bytes(big_shard):
    counter = ByteCounter()
    samples = list(tars.iter_samples(big_shard, counter=counter))
    assert [s.caption for s in samples] == ["big 000000042", "big 000000017", "big 000000031"]
    size = big_shard.stat().st_size
    assert size > 3 * BIG
    assert 9 * 512 < counter.bytes_read < size / 100  # headers and texts counted, images not read


def test_count_samples_reads_only_headers(big_shard):
    counter = ByteCounter()
    assert tars.count_samples(big_shard, counter=counter) == 3
    assert 9 * 512 <= counter.bytes_read < 9 * 512 + 4096  # nine headers, the end block, 1-byte probes


# --------------------------------------------------------------------------------------------- bad tars

def _cut(path: Path, size: int) -> Path:
    data = path.read_bytes()
    assert size < len(data)
    path.write_bytes(data[:size])
    return path


def _cut_points(path: Path) -> dict[str, int]:
    members = member_offsets(path)
    image, last = members["000000002.jpg"], members["000000003.txt"]  # 000000003.txt: the last member
    return {
        "mid_image": image.offset_data + image.size // 2,
        "member_boundary": image.offset_data + -(-image.size // 512) * 512,
        "mid_header": members["000000002.txt"].offset + 100,
        "mid_last_text": last.offset_data + 3,
        "no_end_block": last.offset_data + -(-last.size // 512) * 512,
    }


@pytest.mark.parametrize("where", ["mid_image", "member_boundary", "mid_header", "mid_last_text", "no_end_block"])
@pytest.mark.parametrize("reader", ["iter_samples", "count_samples", "copy_with_fields"])
def test_truncated_tar_is_refused(shard, where, reader, tmp_path):
    _cut(shard, _cut_points(shard)[where])
    with pytest.raises(TarError) as e:
        if reader == "iter_samples":
            list(tars.iter_samples(shard))
        elif reader == "count_samples":
            tars.count_samples(shard)
        else:
            with open(tmp_path / "out.tar", "wb") as out:
                tars.copy_with_fields(shard, out, [(key, {}) for key in KEYS])
    assert str(shard) in str(e.value)


def test_not_a_tar_is_refused(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(b"")
    with pytest.raises(TarError, match="x.tar"):
        tars.count_samples(path)


def _bad(tmp_path: Path, members: list[tuple[str, bytes]]) -> Path:
    return make_tar(tmp_path / "bad.tar", [("000000001.jpg", jpeg(1)), ("000000001.txt", b"fine")] + members)


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(TarError) as e:
        list(tars.iter_samples(path, **kwargs))
    assert str(path) in str(e.value)
    return str(e.value)


def test_non_utf8_txt_names_tar_and_member(tmp_path):
    path = _bad(tmp_path, [("000000002.jpg", jpeg(2)), ("000000002.txt", b"caf\xe9 latin-1")])
    assert "'000000002.txt'" in _error(path) and "UTF-8" in _error(path)


def test_bad_json_names_tar_and_member(tmp_path):
    path = _bad(tmp_path, [("000000002.jpg", jpeg(2)), ("000000002.json", b'{"caption": "x",')])
    assert "'000000002.json'" in _error(path) and "invalid JSON" in _error(path)
    list(tars.iter_samples(path, text_exts=("txt",)))  # json not asked for: not read, not refused


def test_json_that_is_not_an_object_is_refused(tmp_path):
    path = _bad(tmp_path, [("000000002.json", b'["a list"]')])
    assert "'000000002.json'" in _error(path, caption_field="caption")


def test_dotted_key_is_refused(tmp_path):
    path = _bad(tmp_path, [("img.001.jpg", jpeg(2)), ("img.001.txt", b"a caption")])
    message = _error(path)
    assert "'img.001.txt'" in message and "dot" in message


@pytest.mark.parametrize("name", ["../x.txt", "/abs.txt", "a/../../x.txt", "back\\slash.txt", "ctl\x01.txt"])
def test_escaping_member_names_are_refused(tmp_path, name):
    path = _bad(tmp_path, [(name, b"caption")])
    assert repr(name) in _error(path)
    with pytest.raises(TarError):
        tars.count_samples(path)


def test_split_sample_is_refused_naming_its_members(tmp_path):
    """A key back with none of its extensions again holds the rest of an earlier sample: refused by the
    readers and the copy alike, naming the members found."""
    path = _bad(tmp_path, [("000000002.jpg", jpeg(2)), ("000000001.json", b"{}")])
    message = _error(path)
    assert "'000000001.json'" in message and "'000000001.jpg'" in message and "not adjacent" in message
    for read in (lambda: tars.count_samples(path), lambda: _copy(path, {}, keys=["000000001", "000000002", "000000001"])):
        with pytest.raises(TarError, match="not adjacent") as e:
            read()
        assert str(e.value) == message


def test_a_key_repeated_as_a_whole_sample_is_a_sample_of_its_own(tmp_path):
    """As webdataset reads it: the readers give each its own row and the copy each its own fields."""
    path = _bad(tmp_path, [("000000002.jpg", jpeg(2)), ("000000002.txt", b"two"), ("000000001.jpg", jpeg(3)),
                           ("000000001.txt", b"again"), ("000000001.json", b"{}")])
    assert [(s.key, s.caption) for s in tars.iter_samples(path)] == [
        ("000000001", "fine"), ("000000002", "two"), ("000000001", "again")]
    assert tars.count_samples(path) == 3
    samples = [("000000001", {"caption_x": "first"}), ("000000002", {"caption_x": "second"}),
               ("000000001", {"caption_x": "third"})]
    out = io.BytesIO()
    tars.copy_with_fields(path, out, samples)
    copied = io_path(tmp_path, out.getvalue())
    assert [(s.key, s.json) for s in tars.iter_samples(copied)] == [(key, fields) for key, fields in samples]


def test_duplicate_member_in_a_sample_is_refused(tmp_path):
    path = _bad(tmp_path, [("000000001.TXT", b"again")])
    assert "'000000001.TXT'" in _error(path)


# --------------------------------------------------------------------------------------------- stats

def test_stats_count_from_stats_json(shard):
    (shard.parent / "00000_stats.json").write_text(json.dumps({"count": 10, "successes": 4, "failed_to_download": 6}))
    (shard.parent / "00000.parquet").write_bytes(b"ignored: stats.json is enough")
    assert tars.stats_count(shard) == 4


def _write_status_parquet(path: Path, statuses: list[str]) -> None:
    pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(len(statuses))], "status": statuses,
                             "error_message": [None if s == "success" else "timeout" for s in statuses]}), path)


def test_stats_count_from_parquet(shard):
    _write_status_parquet(shard.parent / "00000.parquet", ["success", "failed_to_download", "success",
                                                             "success", "failed_to_resize", "success"])
    assert tars.stats_count(shard) == 4
    (shard.parent / "00000_stats.json").write_text("{truncated")  # unreadable stats: parquet still counts
    assert tars.stats_count(shard) == 4


def test_stats_count_none(shard):
    assert tars.stats_count(shard) is None
    (shard.parent / "00000_stats.json").write_text(json.dumps({"count": 10}))
    pq.write_table(pa.table({"key": ["000000001"]}), shard.parent / "00000.parquet")  # no status column
    assert tars.stats_count(shard) is None


# --------------------------------------------------------------------------------------------- copying

FIELDS = {key: {"caption_laclip": f"rewrite of {key} à la française", "caption_laclip_1": f"another {key}"}
          for key in KEYS}


def _samples(src: Path, fields: dict, keys: list[str] | None = None) -> list[tuple[str, dict]]:
    """copy_with_fields' entries: each sample of `src` in order (`keys`, else as read) with its fields ({}: none)."""
    keys = keys or [s.key for s in tars.iter_samples(src, text_exts=("txt",))]
    return [(key, fields.get(key, {})) for key in keys]


def _copy(src: Path, fields, txt=None, keys: list[str] | None = None, **options) -> bytes:
    """copy_with_fields with fields and view captions given by key, each sample of the tar taking its own."""
    out, samples = io.BytesIO(), _samples(src, fields, keys)
    txts = None if txt is None else [txt.get(key) for key, _ in samples]
    tars.copy_with_fields(src, out, samples, txts, **options)
    return out.getvalue()


def _meta_of(ti: tarfile.TarInfo) -> tuple:
    return ti.name, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname, ti.type


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_copy_with_fields_adds_fields_and_keeps_everything_else(tmp_path, fmt):
    src = make_tar(tmp_path / "00000.tar", [("shard/", b"")] + img2dataset_members(), fmt)
    out = _copy(src, FIELDS)
    before, after = read_members(src.read_bytes()), read_members(out)

    created = [(ti, data) for ti, data in after if ti.name == "000000003.json"]
    assert [ti.name for ti, _ in after] == [ti.name for ti, _ in before] + ["000000003.json"]
    for (old, old_data), (new, new_data) in zip(before, after):
        assert _meta_of(new) == _meta_of(old)
        if not old.name.endswith(".json"):
            assert new_data == old_data  # images and captions byte-identical
    for old, old_data in before:
        if old.name.endswith(".json"):
            new_data = dict((ti.name, d) for ti, d in after)[old.name]
            key = old.name[:-5]
            assert json.loads(new_data) == {**json.loads(old_data), **FIELDS[key]}
            assert "à la française".encode() in new_data  # ensure_ascii=False
    [(ti, data)] = created
    first = next(t for t, _ in before if t.name == "000000003.jpg")
    assert json.loads(data) == FIELDS["000000003"] and ti.mtime == first.mtime
    assert out[257:265] == src.read_bytes()[257:265]  # same tar format (GNU or POSIX magic)


def test_copy_with_fields_leaves_json_without_fields_byte_identical(shard):
    out = _copy(shard, {"000000002": FIELDS["000000002"]})
    before, after = dict((t.name, d) for t, d in read_members(shard)), dict((t.name, d) for t, d in read_members(out))
    assert set(after) == set(before)  # no json created for 000000003: it has no fields
    assert after["000000007.json"] == before["000000007.json"]
    assert after["000000002.json"] != before["000000002.json"]


def test_copy_keeps_a_json_s_own_bytes_and_appends_the_fields(tmp_path):
    """The fields go in before the closing brace; a field already there is replaced, not doubled."""
    own = b'{"url": "http://x/\\u00e9.jpg",  "n": 1.50, "caption_old": "keep"}\n'
    src = make_tar(tmp_path / "t.tar", [("a.jpg", jpeg(0)), ("a.json", own), ("b.jpg", jpeg(1)),
                                         ("b.json", b'{"caption_x": "old", "w": 2}'), ("c.json", b"{}")])
    fields = {"a": {"caption_x": "new \"one\""}, "b": {"caption_x": "new"}, "c": {"caption_x": "z"}}
    with pytest.raises(tars.FieldExists, match=f"{src}: member 'b.json' already has the field caption_x"):
        _copy(src, fields)
    data = dict((t.name, d) for t, d in read_members(_copy(src, fields, replace_fields=True)))
    assert data["a.json"] == own.rstrip()[:-1] + b', "caption_x": "new \\"one\\""}'
    assert json.loads(data["a.json"]) == {**json.loads(own), "caption_x": 'new "one"'}
    assert json.loads(data["b.json"]) == {"caption_x": "new", "w": 2} and data["b.json"].count(b"caption_x") == 1
    assert data["c.json"] == b'{"caption_x": "z"}'


def test_copy_with_fields_replaces_txt_in_a_view(shard):
    view = {"000000002": "a rewritten caption", "000000005": "created for a sample without txt"}
    out = _copy(shard, {}, view)
    after = read_members(out)
    names = [t.name for t, _ in after]
    data = dict((t.name, d) for t, d in after)
    assert data["000000002.txt"] == b"a rewritten caption"
    assert data["000000007.txt"] == "caption 000000007 café".encode()
    assert names.index("000000005.txt") == names.index("000000005.json") + 1  # after the sample's last member
    assert data["000000005.txt"] == b"created for a sample without txt"
    assert [t.name for t, _ in read_members(shard)] == [n for n in names if n != "000000005.txt"]


def test_copy_output_is_read_back_by_iter_samples(shard, tmp_path):
    out = tmp_path / "out.tar"
    out.write_bytes(_copy(shard, FIELDS, {"000000007": "view text"}))
    samples = list(tars.iter_samples(out, caption_field="caption_laclip"))
    assert [s.key for s in samples] == KEYS
    assert all(s.caption == FIELDS[s.key]["caption_laclip"] for s in samples)
    assert next(tars.iter_samples(out)).caption == "view text"


def test_copy_with_fields_refuses_a_key_or_count_that_is_not_the_tar_s_and_non_string_fields(shard):
    with pytest.raises(TarError, match="'000000002.jpg': sample 1 has key '000000002' where its rewrites have "
                                       "'000000099'"):
        _copy(shard, {}, keys=["000000007", "000000099", "000000005", "000000003"])
    with pytest.raises(TarError, match="holds 4 samples where its rewrites have 5"):
        _copy(shard, {}, keys=KEYS + ["000000009"])
    with pytest.raises(TarError, match="'000000003.jpg': more than the 3 samples"):
        _copy(shard, {}, keys=KEYS[:3])
    with pytest.raises(TypeError, match="caption_x"):
        _copy(shard, {"000000002": {"caption_x": 3}})


def test_copy_with_fields_refuses_bad_input(tmp_path):
    bad = _bad(tmp_path, [("000000002.json", b"{oops")])
    with pytest.raises(TarError, match="'000000002.json'"):
        _copy(bad, {"000000002": {"caption_x": "y"}})


def test_copy_with_fields_streams_big_members(big_shard, tmp_path):
    fields = {key: {"caption_x": "r"} for key in ["000000042", "000000017", "000000031"]}
    out_path = tmp_path / "out.tar"
    tracemalloc.start()
    try:
        with open(out_path, "wb") as out:
            tars.copy_with_fields(big_shard, out, list(fields.items()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BIG / 3  # no member is held whole
    before, after = read_members(big_shard), read_members(out_path)
    assert [(t.name, d) for t, d in before if t.name.endswith(".jpg")] == \
        [(t.name, d) for t, d in after if t.name.endswith(".jpg")]


def _raw_members(data: bytes) -> dict[str, bytes]:
    """Each member's bytes in a tar: its header blocks (long-name and PAX blocks included) and data blocks."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: data[m.offset:m.offset_data + -(-m.size // 512) * 512] for m in tar.getmembers()}


def _varied_members() -> list[tuple[str, bytes]]:
    """Members whose headers tarfile writes in every way: long names (GNU long-name or PAX blocks), a
    ustar prefix, non-ASCII names, a folder, sizes at block edges, a sample without json."""
    long_key, prefix_key = "k" * 120, "deep/" * 25 + "x"
    return [("shard/", b""), ("000000001.jpg", jpeg(1) + b"x" * (512 - len(jpeg(1)) % 512)),
            ("000000001.json", json.dumps(meta("000000001")).encode()), ("000000001.txt", b"one"),
            (f"{long_key}.jpg", jpeg(2)), (f"{long_key}.json", b"{}"), (f"{long_key}.txt", b""),
            (f"{prefix_key}.jpg", jpeg(3)), (f"{prefix_key}.json", b'{"a": 1}'),
            ("dé/ü.jpg", jpeg(4)), ("dé/ü.txt", "légende".encode()), ("dé/ü.json", '{"b": "ü"}'.encode()),
            ("000000009.jpg", jpeg(9)), ("000000009.txt", b"nine")]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_copy_keeps_unchanged_members_byte_for_byte(tmp_path, fmt):
    src = make_tar(tmp_path / "s.tar", _varied_members(), fmt)
    data = bytearray(src.read_bytes())
    for name in ("000000001.jpg", "000000001.txt"):  # uid as other tar writers put it, which tarfile would rewrite
        at = member_offsets(src)[name].offset
        data[at + 108:at + 116] = b"  1750 \0"
        _rechecksum(data, at)
    src.write_bytes(bytes(data))
    keys = ["000000001", "k" * 120, "deep/" * 25 + "x", "dé/ü", "000000009"]
    fields = {key: {"caption_x": f"rewrite {key}"} for key in keys}
    txt = {"dé/ü": "vue", "k" * 120: "long view"}
    out = _copy(src, fields, txt)
    before, after = _raw_members(src.read_bytes()), _raw_members(out)
    changed = {f"{k}.json" for k in fields} | {f"{k}.txt" for k in txt}
    assert [n for n in after if n not in changed] == [n for n in before if n not in changed]
    assert all(after[name] == raw for name, raw in before.items() if name not in changed)
    data = {t.name: d for t, d in read_members(out)}
    assert json.loads(data["000000009.json"]) == fields["000000009"]  # created
    assert json.loads(data["deep/" * 25 + "x.json"]) == {"a": 1, **fields["deep/" * 25 + "x"]}
    assert data["dé/ü.txt"] == "vue".encode() and data["k" * 120 + ".txt"] == b"long view"
    assert [s.key for s in tars.iter_samples(tmp_path / "s.tar")] == keys


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_rewritten_json_header_is_the_one_tarfile_writes(shard, tmp_path, fmt):
    src = make_tar(tmp_path / "s.tar", img2dataset_members(), fmt)
    out = _copy(src, {"000000002": FIELDS["000000002"]})
    old, new = member_offsets(src)["000000002.json"], {t.name: t for t, _ in read_members(out)}["000000002.json"]
    expected = copy.copy(old)
    expected.size = new.size
    assert out[new.offset:new.offset_data] == expected.tobuf(fmt, "utf-8", "surrogateescape")


def test_copy_to_a_file_is_the_copy_in_memory_and_ends_like_tarfile(shard, tmp_path):
    in_memory = _copy(shard, FIELDS, {"000000002": "view"})
    assert len(in_memory) % tarfile.RECORDSIZE == 0 and in_memory.endswith(tarfile.NUL * 1024)
    with tarfile.open(fileobj=io.BytesIO(), mode="w", format=tarfile.GNU_FORMAT) as reference:
        for info, data in read_members(in_memory):
            reference.addfile(info, io.BytesIO(data) if data is not None else None)
        assert len(in_memory) == reference.fileobj.tell() + -reference.fileobj.tell() % tarfile.RECORDSIZE
    path = tmp_path / "out.tar"
    with open(path, "wb") as out:
        out.write(b"x" * 700)  # already written, still in the buffer: the tar follows it, padded like tarfile's
        tars.copy_with_fields(shard, out, _samples(shard, FIELDS), ["view" if k == "000000002" else None for k in KEYS])
        assert out.tell() == path.stat().st_size
        out.write(b"after")
    written = path.read_bytes()
    assert written[:700] == b"x" * 700 and written.endswith(b"after")
    assert (len(written) - len(b"after")) % tarfile.RECORDSIZE == 0
    assert written[700:700 + len(in_memory) - 1024] == in_memory[:-1024]


def test_copy_appends_to_a_file_opened_for_appending(shard, tmp_path):
    path = tmp_path / "out.tar"
    path.write_bytes(b"")
    with open(path, "ab") as out:
        tars.copy_with_fields(shard, out, _samples(shard, FIELDS))
    assert path.read_bytes() == _copy(shard, FIELDS)


def test_copy_merges_a_json_bigger_than_the_read_window(tmp_path):
    big = {"key": "000000001", "exif": "e" * (3 * tars.WINDOW)}
    src = make_tar(tmp_path / "s.tar", [("000000001.jpg", jpeg(1)), ("000000001.json", json.dumps(big).encode()),
                                        ("000000002.jpg", jpeg(2))])
    data = {t.name: d for t, d in read_members(_copy(src, {"000000001": {"caption_x": "r"}}))}
    assert json.loads(data["000000001.json"]) == {**big, "caption_x": "r"}


def test_copy_keeps_global_pax_headers_and_unknown_member_types(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}) as tar:
        odd = info("vendor.bin", 600, type_=b"9")  # unknown type: tarfile skips its data, so must we
        tar.addfile(odd, io.BytesIO(b"v" * 600))
        for name, data in img2dataset_members():
            tar.addfile(info(name, len(data)), io.BytesIO(data))
    out = _copy(path, FIELDS)
    assert out[:512] == path.read_bytes()[:512]  # the global header block
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert tar.pax_headers == {"comment": "global"}
        assert tar.extractfile("vendor.bin").read() == b"v" * 600
    assert [s.key for s in tars.iter_samples(io_path(tmp_path, out))] == KEYS


def io_path(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "copied.tar"
    path.write_bytes(data)
    return path


def _rechecksum(data: bytearray, offset: int) -> None:
    block = data[offset:offset + 512]
    block[148:156] = b" " * 8
    data[offset + 148:offset + 155] = b"%06o\0" % sum(block)


@pytest.mark.parametrize("damage", ["checksum", "mode_not_octal", "size_not_octal"])
def test_damaged_header_mid_tar_is_refused_by_copy_and_readers(shard, tmp_path, damage):
    data = bytearray(shard.read_bytes())
    at = member_offsets(shard)["000000005.jpg"].offset
    field_at = {"checksum": 150, "mode_not_octal": 103, "size_not_octal": 126}[damage]
    data[at + field_at] = ord("9")
    if damage != "checksum":
        _rechecksum(data, at)  # a header tarfile refuses for its number field alone
    shard.write_bytes(bytes(data))
    for read in (lambda: _copy(shard, FIELDS, keys=KEYS), lambda: list(tars.iter_samples(shard)),
                 lambda: tars.count_samples(shard)):
        with pytest.raises(TarError, match="00000.tar"):
            read()


def test_copy_reads_an_old_style_folder_entry_as_tarfile_does(tmp_path):
    """A V7 folder (type NUL, name ending in '/') has no data blocks for tarfile, whatever its size says:
    here its zero data block then ends the archive, for the copy as for the readers."""
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info("000000001.jpg", 3), io.BytesIO(b"jpg"))
        tar.addfile(info("old/", 512, type_=tarfile.AREGTYPE), io.BytesIO(bytes(512)))
        tar.addfile(info("000000002.jpg", 3), io.BytesIO(b"jpg"))
    assert tars.count_samples(path) == 1
    with pytest.raises(TarError, match="holds 1 samples where its rewrites have 2"):
        _copy(path, {"000000002": {"caption_x": "r"}}, keys=["000000001", "000000002"])


def test_copy_into_a_gzip_file_goes_through_its_write(shard, tmp_path):
    path = tmp_path / "out.tar.gz"
    with gzip.open(path, "wb") as out:  # its fileno() is the compressed file's: not to be written directly
        tars.copy_with_fields(shard, out, _samples(shard, FIELDS))
    assert gzip.decompress(path.read_bytes()) == _copy(shard, FIELDS)


def _headers_digest(read, path: Path) -> str:
    headers = tars.Headers()
    read(path, headers=headers)
    return headers.hexdigest()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, "global_pax"])
def test_the_scan_the_reader_and_the_copy_take_one_digest_of_the_headers(tmp_path, fmt):
    """Members of every kind (long names, a ustar prefix, a folder, an unknown type, a global PAX header):
    the plan's scan, a read and the copy must agree, or a wds export would refuse an unchanged tar. A
    touch leaves it; a member's time does not."""
    src = tmp_path / "s.tar"
    if fmt == "global_pax":
        with tarfile.open(src, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}) as tar:
            tar.addfile(info("vendor.bin", 600, type_=b"9"), io.BytesIO(b"v" * 600))
            for name, data in _varied_members():
                tar.addfile(info(name, len(data), type_=tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE),
                            io.BytesIO(data))
    else:
        make_tar(src, _varied_members(), fmt)
    copied = []
    _copy(src, {}, check_headers=copied.append)
    digest = _headers_digest(tars.count_samples, src)
    assert copied == [digest] and _headers_digest(lambda p, headers: list(tars.iter_samples(p, headers=headers)), src) == digest
    os.utime(src, (1_800_000_000, 1_800_000_000))
    assert _headers_digest(tars.count_samples, src) == digest
    data = bytearray(src.read_bytes())
    at = member_offsets(src)["000000009.txt"].offset
    data[at + 136:at + 147] = b"%011o" % 1_700_000_999
    _rechecksum(data, at)
    src.write_bytes(bytes(data))
    assert _headers_digest(tars.count_samples, src) != digest


def test_a_copy_refused_by_its_headers_check_ends_no_archive(shard):
    def refuse(digest: str) -> None:
        raise TarError(f"changed: {digest}")

    out = io.BytesIO()
    with pytest.raises(TarError, match="changed"):
        tars.copy_with_fields(shard, out, _samples(shard, FIELDS), check_headers=refuse)
    assert not out.getvalue().endswith(tarfile.NUL * 1024)
