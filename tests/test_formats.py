"""Webdataset input and every export format, through the real CLI on the real embedded model: tars with
real JPEGs in, then hf, wds, csv and laclip out, each checked as its consumer reads it."""
from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import CAPTIONS, run_cli

SOURCE = "chatgpt"


def jpeg(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 16), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, "JPEG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def make_tars(folder: Path, tars: int = 3, per: int = 4) -> list[Path]:
    """img2dataset-style shards: KEY.jpg, KEY.txt, KEY.json per sample, keys shard id + row (DataComp's
    uid-j in the last), samples in an order other than key order (download completion); the first
    shard has its _stats.json."""
    folder.mkdir(parents=True)
    rng, paths = random.Random(5), []
    for t in range(tars):
        rows = list(range(per))
        rng.shuffle(rows)
        path = folder / f"{t:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
            for r in rows:
                i = t * per + r  # the last shard has DataComp's keys, uid-j
                key = f"{t:05d}{r:04d}" if t < tars - 1 else f"{(i * 7919) % 16**8:08x}c0ffee-{r}"
                caption = CAPTIONS[i % len(CAPTIONS)].replace("\n", " ") or "a plain caption"
                add(tar, f"{key}.jpg", jpeg(i))
                add(tar, f"{key}.txt", caption.encode())
                add(tar, f"{key}.json", json.dumps({"key": key, "caption": caption, "url": f"http://img/{i}"}).encode())
        paths.append(path)
    (folder / "00000_stats.json").write_text(json.dumps({"count": per + 2, "successes": per, "failed_to_download": 2}))
    return paths


def members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory) -> Path:
    """A work dir planned over three tars with a brace range, rewritten once with the real model."""
    root = tmp_path_factory.mktemp("wds")
    make_tars(root / "shards")
    work = root / "work"
    out = run_cli("shard", str(root / "shards" / "{00000..00002}.tar"), "--out", work).stdout
    assert "planned 3 shards over 12 rows from 3 files" in out
    run_cli("run", "--work", work, "--source", SOURCE, "--shards", "all", "--no-progress")
    return work


def sidecar(work: Path) -> dict[str, str | None]:
    return sidecar_of(work, 3)


def test_wds_export_keeps_every_member_and_adds_rewrite_fields(rewritten, tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", "--work", rewritten, "--out", out, "--format", "wds", "--views", f"caption_{SOURCE}")
    assert "wrote 12 rows" in result.stdout
    rewrites = sidecar(rewritten)
    assert sum(v is not None for v in rewrites.values()) >= 9
    shards = rewritten.parent / "shards"
    for t in range(3):
        name = f"{t:05d}.tar"
        before, after = members(shards / name), members(out / name)
        assert [n for n, _ in after] == [n for n, _ in before]  # same names, same order
        for (n, old), (_, new) in zip(before, after):
            if not n.endswith(".json"):
                assert new == old, n
                continue
            fields = json.loads(new)
            assert {k: v for k, v in fields.items() if k != f"caption_{SOURCE}"} == json.loads(old)
            assert fields[f"caption_{SOURCE}"] == (rewrites[n[:-5]] or "")
        view = dict(members(out / "views" / f"caption_{SOURCE}" / name))
        for n, old in before:
            if n.endswith(".txt"):
                assert view[n].decode() == (rewrites[n[:-4]] or old.decode())
            elif n.endswith(".jpg"):
                assert view[n] == old
    assert json.loads((out / "sizes.json").read_text()) == {f"{t:05d}.tar": 4 for t in range(3)}
    assert json.loads((out / "views" / f"caption_{SOURCE}" / "sizes.json").read_text()) == json.loads((out / "sizes.json").read_text())
    assert not (out / ".rewrite-staging").exists()


def test_csv_export_extracts_images_and_has_no_empty_cell(rewritten, tmp_path):
    import pandas as pd

    out, images = tmp_path / "out", tmp_path / "images"
    run_cli("export", "--work", rewritten, "--out", out, "--format", "csv", "--extract-images", images)
    table = pd.read_csv(out / "train.tsv", sep="\t")
    assert list(table.columns) == ["filepath", "title", f"caption_{SOURCE}"]
    assert len(table) == 12 and not table.isna().any().any()
    rewrites = sidecar(rewritten)  # in row order, as the CSV's rows
    images = tar_images(rewritten)
    assert len(set(table["filepath"])) == 12
    for (_, row), (key, rewrite) in zip(table.iterrows(), rewrites.items()):
        assert Path(row["filepath"]).is_absolute()
        assert Path(row["filepath"]).read_bytes() == images[key]  # this row's own image, extracted whole
        assert row[f"caption_{SOURCE}"] == (rewrite or row["title"])  # a failed rewrite: the original


def test_laclip_export_lines_up_with_its_csv(rewritten, tmp_path):
    out, images = tmp_path / "out", tmp_path / "images"
    run_cli("export", "--work", rewritten, "--out", out, "--format", "laclip", "--extract-images", images)
    with open(out / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))  # LaCLIP reads it with the csv module's defaults
    lines = (out / f"caption_{SOURCE}.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(rows) == 12
    rewrites, images = sidecar(rewritten), tar_images(rewritten)  # in row order, as the CSV's rows
    for (path, caption), line, (key, rewrite) in zip(rows, lines, rewrites.items()):
        assert path.endswith(".jpg") and Path(path).read_bytes() == images[key] and caption.strip()
        assert line == (rewrite or "")
        assert "\r" not in line


def test_array_tasks_export_their_shards_and_the_last_publishes(rewritten, tmp_path):
    out = tmp_path / "out"
    first = run_cli("export", "--work", rewritten, "--out", out, "--format", "wds", "--shards", "0")
    assert "not published yet: shards 1-2 are still to export" in first.stdout
    assert not (out / "00000.tar").exists() and not (out / "sizes.json").exists()  # nothing visible yet
    run_cli("export", "--work", rewritten, "--out", out, "--format", "wds", "--shards", "1-2", "--workers", "2")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "00000.tar", "00001.tar", "00002.tar", "sizes.json"]
    again = run_cli("export", "--work", rewritten, "--out", out, "--format", "wds")
    assert "holds this export already" in again.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_each_shard_is_on_disk_before_its_record(rewritten, tmp_path, monkeypatch, workers):
    """Workers commit without fsync (atomic.deferred_sync); this process fsyncs a shard's tars before it
    writes the record that marks the shard written, so a crash cannot leave a record over lost data."""
    import os

    from rewrite.exports import export

    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
                        or real_fsync(fd))
    summary = export.export(rewritten, tmp_path / "out", fmt="wds", workers=workers)
    assert summary["published"]
    for shard in range(3):
        tar, record = f"{shard:05d}.tar", next(n for n in synced if n.startswith(f".{shard:05d}.from.json."))
        assert tar in synced and synced.index(tar) < synced.index(record)


def test_bad_export_options_are_refused(rewritten, tmp_path):
    for args, message in [
        (["--format", "zip"], "--format 'zip'"),
        (["--format", "csv"], "--extract-images"),
        (["--format", "wds", "--views", "caption_nope"], "--views caption_nope"),
        (["--format", "hf", "--workers", "0"], "--workers must be >= 1"),
    ]:
        proc = run_cli("export", "--work", rewritten, "--out", tmp_path / "x", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_hf_export_of_tars_holds_key_caption_and_json(rewritten, tmp_path):
    import datasets

    out = tmp_path / "out"
    done = run_cli("export", "--work", rewritten, "--out", out)
    assert "note: the hf export of webdataset input holds" in done.stderr and "stay in the tars" in done.stderr
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.column_names == ["key", "caption", "json", f"caption_{SOURCE}"]
    assert len(ds) == 12 and all(json.loads(j)["key"] == k for j, k in zip(ds["json"], ds["key"]))


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated or corrupt tar"),
    ("bad-utf8", "is not UTF-8"),
    ("escape", "../x"),
])
def test_bad_tars_get_a_clear_error_naming_file_and_member(tmp_path, damage, message):
    [path] = make_tars(tmp_path / "in", tars=1)
    (tmp_path / "in" / "00000_stats.json").unlink()
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with tarfile.open(path, "a") as tar:
            if damage == "bad-utf8":
                add(tar, "zz1.txt", b"caf\xe9")
            else:
                add(tar, "../x.txt", b"escape")
    proc = run_cli("shard", path, "--out", tmp_path / "work", check=False)
    if damage != "truncate" and proc.returncode == 0:  # counted from headers: the text is read by the run
        proc = run_cli("run", "--work", tmp_path / "work", "--source", SOURCE, "--no-progress", check=False)
    assert proc.returncode == 2 and message in proc.stderr and str(path) in proc.stderr, proc.stderr


# ------------------------------------------------------------------ the real consumers (slow)


@pytest.fixture(scope="module")
def consumers():
    import consumers as lib

    if lib.consumer_python() is None:
        if __import__("os").environ.get("REWRITE_REQUIRE_SLOW"):
            pytest.fail(f"no consumer venv at {lib.consumer_venv()}: run scripts/install-consumer-env.sh")
        pytest.skip("no consumer venv (scripts/install-consumer-env.sh)")
    return lib


@pytest.mark.slow
def test_open_clip_and_webdataset_read_every_sample_of_the_wds_export(rewritten, tmp_path, consumers):
    out = tmp_path / "out"
    run_cli("export", "--work", rewritten, "--out", out, "--format", "wds", "--views", f"caption_{SOURCE}")
    rewrites = sidecar(rewritten)
    originals = {n[:-4]: data.decode() for t in range(3)
                 for n, data in members(rewritten.parent / "shards" / f"{t:05d}.tar") if n.endswith(".txt")}
    urls = str(out / "{00000..00002}.tar")
    trained = consumers.open_clip_wds(urls)  # sample count from our sizes.json
    assert trained["count"] == 12 and trained["passes"] == 1 and sorted(trained["keys"]) == sorted(originals)
    assert sorted(trained["texts"]) == sorted(originals.values())  # the original captions, intact
    view = consumers.open_clip_wds(str(out / "views" / f"caption_{SOURCE}" / "{00000..00002}.tar"))
    assert view["count"] == 12 and sorted(view["texts"]) == sorted(rewrites[k] or originals[k] for k in originals)
    fields = consumers.webdataset_fields(urls)
    assert len(fields) == 12 and all(f["json_error"] is None for f in fields)
    for f in fields:
        assert f["txt"] == originals[f["key"]] and f["json"][f"caption_{SOURCE}"] == (rewrites[f["key"]] or "")


@pytest.mark.slow
def test_open_clip_reads_every_row_of_the_csv_export(rewritten, tmp_path, consumers):
    out = tmp_path / "out"
    run_cli("export", "--work", rewritten, "--out", out, "--format", "csv", "--extract-images", tmp_path / "images")
    rewrites = sidecar(rewritten)
    for column in ("title", f"caption_{SOURCE}"):
        read = consumers.open_clip_csv(out / "train.tsv", img_key="filepath", caption_key=column)
        assert read["count"] == 12 and "nan" not in read["texts"]
    assert sum(t in rewrites.values() for t in read["texts"]) == sum(v is not None for v in rewrites.values())


def test_run_then_export_exports_the_shards_it_ran(rewritten, tmp_path):
    out = tmp_path / "out"
    part = run_cli("run", "--work", rewritten, "--source", SOURCE, "--shards", "1", "--no-progress",
                   "--then-export", out, "--export-format", "wds")
    assert "shards 1 are done already" in part.stdout and "not published yet: shards 0,2 are still to export" in part.stdout
    rest = run_cli("run", "--work", rewritten, "--source", SOURCE, "--shards", "0,2", "--no-progress",
                   "--then-export", out, "--export-format", "wds")
    assert "wrote 12 rows in 4 files" in rest.stdout and (out / "sizes.json").is_file()


def test_a_killed_wds_export_is_invisible_and_a_rerun_keeps_its_finished_tars(rewritten, tmp_path):
    import signal

    out = tmp_path / "out"
    proc = run_cli("export", "--work", rewritten, "--out", out, "--format", "wds", check=False,
                   env={"REWRITE_KILL_AT": "committed:parts/00001.from.json"})  # shard 1 fully staged
    assert proc.returncode == -signal.SIGKILL
    assert not list(out.glob("*.tar")) and not (out / "sizes.json").exists()
    kept = (out / ".rewrite-staging" / "00001.tar").stat().st_ino
    run_cli("export", "--work", rewritten, "--out", out, "--format", "wds")
    assert (out / "00001.tar").stat().st_ino == kept  # not written again
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert not (out / ".rewrite-staging").exists() or not list((out / ".rewrite-staging").iterdir())


def test_parquet_with_image_bytes_exports_to_tars(parquet_dir, tmp_path):
    from conftest import png_bytes

    work, out = tmp_path / "work", tmp_path / "out"
    run_cli("shard", parquet_dir, "--out", work, "--num-shards", "2")
    run_cli("run", "--work", work, "--source", SOURCE, "--no-progress")
    run_cli("export", "--work", work, "--out", out, "--format", "wds")
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 6, "00001.tar": 6}
    rewrites = sidecar_of(work, 2)
    samples = [m for t in ("00000.tar", "00001.tar") for m in members(out / t)]
    assert len(samples) == 3 * len(CAPTIONS)
    for i, caption in enumerate(CAPTIONS):
        (image_name, image), (txt_name, txt), (json_name, meta) = samples[3 * i: 3 * i + 3]
        key = f"{i:09d}"
        assert (image_name, image) == (f"{key}.png", png_bytes(i))  # the bytes as stored, typed by sniffing
        assert (txt_name, txt.decode()) == (f"{key}.txt", caption)
        fields = json.loads(meta)
        assert json_name == f"{key}.json" and fields["width"] == 100 + i and fields["key"] == key
        assert fields[f"caption_{SOURCE}"] == (rewrites[key] or "")


def tar_images(work: Path) -> dict[str, bytes]:
    """Each sample's KEY.jpg in the input tars beside the work dir."""
    return {name[:-4]: data for path in sorted((work.parent / "shards").glob("*.tar"))
            for name, data in members(path) if name.endswith(".jpg")}


def sidecar_of(work: Path, shards: int) -> dict[str, str | None]:
    rows = [r for s in range(shards) for r in pq.read_table(work / "rewrites" / SOURCE / f"{s:05d}.parquet").to_pylist()]
    return {r["key"]: r["rewrite"] for r in rows}


def test_extracted_images_never_land_among_the_inputs(rewritten, tmp_path):
    shards = rewritten.parent / "shards"
    for folder in (shards, shards / "00000.tar", rewritten / "img", tmp_path / "out" / "img"):
        proc = run_cli("export", "--work", rewritten, "--out", tmp_path / "out", "--format", "csv",
                       "--extract-images", folder, check=False)
        assert proc.returncode == 2 and "--extract-images" in proc.stderr and "a folder of its own" in proc.stderr, proc.stderr
    assert sorted(p.name for p in shards.iterdir()) == sorted(["00000.tar", "00001.tar", "00002.tar", "00000_stats.json"])


def test_tasks_finishing_in_any_order_publish_once_with_what_is_committed_last(rewritten, tmp_path, monkeypatch):
    """Task A exports shard 2 while shard 0 is not yet rewritten; meanwhile task B exports shards 0-1
    (shard 0 now done) and cannot publish beside A; A, last to finish, looks again and publishes."""
    from rewrite.exports import export as export_lib

    out, stats = tmp_path / "out", rewritten / "rewrites" / SOURCE / "00000.stats.json"
    hidden = stats.with_name("hidden")
    stats.rename(hidden)  # shard 0 is "not done" when A starts
    real = export_lib._write_shards
    outcome = {}

    def a_writes(*args, **kw):
        for shard in real(*args, **kw):
            if "b" not in outcome:  # in A: shard 0 is committed, and B exports while A still holds OUT
                hidden.rename(stats)
                outcome["b"] = None
                outcome["b"] = export_lib.export(rewritten, out, fmt="wds", shards=[0, 1])
            yield shard

    monkeypatch.setattr(export_lib, "_write_shards", a_writes)
    try:
        outcome["a"] = export_lib.export(rewritten, out, fmt="wds", shards=[2])
    finally:
        if hidden.exists():
            hidden.rename(stats)
    assert not outcome["b"]["published"] and outcome["b"]["written"] == "0-1"
    assert outcome["a"]["published"]
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert export_lib.export(rewritten, out, fmt="wds").get("up_to_date")


def test_every_format_implements_its_whole_interface():
    """Formats are found through FORMATS alone: each must be a complete one (an abstract method left out
    would make it fail to instantiate, and FORMATS to import)."""
    from rewrite import exports, inputs
    from rewrite.exports.base import ExportFormat
    from rewrite.inputs.base import InputFormat

    assert [f.name for f in inputs.FORMATS] == ["parquet", "csv", "tsv", "text", "wds"]
    assert list(exports.FORMATS) == ["hf", "wds", "csv", "laclip"]
    for base in (InputFormat, ExportFormat):
        with pytest.raises(TypeError, match="abstract"):
            type("Incomplete", (base,), {})()
