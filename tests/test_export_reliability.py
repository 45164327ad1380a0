"""Exports held to the no-data-loss standard: degenerate shards through every command, the image folder of
`export --extract-images`, and export processes that stop with their parent; on the
real embedded model through the real CLI: an empty tar among others, a key repeated across tars, images
typed .JPG and .webp, a sample without an image, a shard whose captions are all blank and one whose
rewrites all failed."""
from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import processes_marked, run_cli


def picture(i: int, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 8), ((50 * i) % 256, (90 * i) % 256, 200)).save(buf, fmt)
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


# (key, image member extension or None, caption) per sample of each tar; tar 1 is empty, key "a" repeats.
TARS = [
    [("a", "jpg", "a red kite over the beach"), ("b", "JPG", "two cats asleep on a sofa"),
     ("c", None, "a bowl of soup with bread")],
    [],
    [("a", "webp", "an old lighthouse at dusk"), ("d", "png", "children playing in the park")],
]
FORMATS = {"jpg": "JPEG", "JPG": "JPEG", "webp": "WEBP", "png": "PNG"}


def image_bytes() -> list[bytes | None]:
    """Each row's image member bytes, in row order (what the tars hold)."""
    out, i = [], 0
    for samples in TARS:
        for key, ext, _ in samples:
            out.append(picture(i, FORMATS[ext]) if ext else None)
            i += 1
    return out


@pytest.fixture(scope="module")
def works(tmp_path_factory) -> dict[str, Path]:
    """Two work dirs, each rewritten with chatgpt (real model) and bard with one new token (every rewrite
    fails: cut_at_max_tokens): tars (one empty) and parquet (one shard of blank captions)."""
    root = tmp_path_factory.mktemp("degenerate")
    shards = root / "shards"
    shards.mkdir()
    images = iter(image_bytes())
    for t, samples in enumerate(TARS):
        with tarfile.open(shards / f"{t:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for key, ext, caption in samples:
                data = next(images)
                if ext:
                    add(tar, f"{key}.{ext}", data)
                add(tar, f"{key}.txt", caption.encode())
                add(tar, f"{key}.json", json.dumps({"key": key}).encode())
    pq.write_table(pa.table({"key": ["k0", "k1", "k2", "k3"], "caption": ["", None, "a dog on a boat", "rain on a window"],
                             "image": [picture(i, "PNG") for i in range(4)]}), root / "rows.parquet")
    works = {"tars": root / "work-tars", "parquet": root / "work-parquet"}
    run_cli("shard", shards, "--out", works["tars"])
    run_cli("shard", root / "rows.parquet", "--out", works["parquet"], "--num-shards", "2")
    for work in works.values():
        run_cli("run", "--work", work, "--source", "chatgpt", "--no-progress")
        run_cli("run", "--work", work, "--source", "bard", "--max-new-tokens", "1", "--max-attempts", "1", "--no-progress")
    return works


@pytest.mark.parametrize("kind", ["tars", "parquet"])
def test_every_command_takes_empty_skipped_and_failed_shards(works, tmp_path, kind):
    import datasets

    work = works[kind]
    rows = 5 if kind == "tars" else 4
    status = run_cli("status", "--work", work).stdout
    assert "bard     done" in status and "chatgpt  done" in status and f"rows {rows}/{rows}" in status, status
    run_cli("report", "--work", work, "--out", tmp_path / "report", "--no-progress")
    figures = json.loads((tmp_path / "report" / "report.json").read_text())["sets"]
    blank = 0 if kind == "tars" else 2  # the parquet's first shard: captions empty and null
    assert (figures["bard"]["rows"], figures["bard"]["ok"], figures["bard"]["skipped"]) == (rows, 0, blank)
    assert figures["bard"]["failed"] == rows - blank and figures["bard"]["failed_reasons"] == {"cut_at_max_tokens": rows - blank}

    formats = ["hf", "csv", "laclip"] + (["wds"] if kind == "tars" else [])
    for fmt in formats:
        out = tmp_path / fmt
        extra = ["--extract-images", tmp_path / f"images-{fmt}"] if fmt in ("csv", "laclip") else []
        done = run_cli("export", "--work", work, "--out", out, "--format", fmt, "--no-progress", *extra)
        written = int(done.stdout.split("wrote ")[1].split(" rows")[0])
        if fmt == "hf":
            ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]
            assert len(ds) == written == rows and set(ds["caption_bard"]) == {None}
        elif fmt == "csv":
            with open(out / "train.tsv", encoding="utf-8", newline="") as f:
                body = list(csv.reader(f, delimiter="\t"))[1:]
            # rows without a caption (blank) or without an image (sample c) are left out, and said so
            assert written == len(body) == (4 if kind == "tars" else 2) and "left out" in done.stderr
        elif fmt == "laclip":
            with open(out / "train.csv", encoding="utf-8", newline="") as f:
                body = list(csv.reader(f))
            lines = (out / "caption_bard.txt").read_text(encoding="utf-8").split("\n")
            assert written == len(body) == len(lines) - 1 and set(lines) == {""}
        else:
            assert written == rows and json.loads((out / "sizes.json").read_text()) == {
                "00000.tar": 3, "00001.tar": 0, "00002.tar": 2}
        run_cli("report", "--export", out, "--out", tmp_path / f"report-{fmt}", "--no-progress")
        read = json.loads((tmp_path / f"report-{fmt}" / "report.json").read_text())["sets"]["bard"]
        assert (read["rows"], read["ok"], read["failed"]) == (written, 0, written - read["skipped"])
        assert read["skipped"] == (0 if fmt in ("csv", "laclip") or kind == "tars" else 2)


def test_extracted_images_are_one_file_per_row_in_types_their_reader_keeps(works, tmp_path):
    from PIL import Image

    expected = [data for data in image_bytes()]
    with_image = [data for data in expected if data is not None]
    for fmt in ("csv", "laclip"):
        out, folder = tmp_path / fmt, tmp_path / f"images-{fmt}"
        run_cli("export", "--work", works["tars"], "--out", out, "--format", fmt, "--extract-images", folder)
        if fmt == "csv":
            with open(out / "train.tsv", encoding="utf-8", newline="") as f:
                paths = [row[0] for row in list(csv.reader(f, delimiter="\t"))[1:]]
        else:
            with open(out / "train.csv", encoding="utf-8", newline="") as f:
                paths = [row[0] for row in csv.reader(f)]
        assert len(paths) == len(set(paths)) == len(with_image)  # the two samples keyed "a" have a file each
        assert all(Path(p).is_absolute() and Path(p).parent.parent == folder.resolve() for p in paths)
        for path, data in zip(paths, with_image):
            got = Path(path).read_bytes()
            if fmt == "laclip":  # LaCLIP keeps .jpg, .jpeg and .png paths, case-sensitive
                assert path.endswith((".jpg", ".jpeg", ".png"))
            if got != data:  # only a type LaCLIP would drop is converted, and without loss
                assert fmt == "laclip" and data[8:12] == b"WEBP" and got.startswith(b"\x89PNG")
                assert list(Image.open(io.BytesIO(got)).getdata()) == list(Image.open(io.BytesIO(data)).getdata())


def test_the_image_folder_is_owned_like_an_export(works, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "00000.jpg").write_bytes(b"my photo")
    for overwrite in ([], ["--overwrite"]):
        proc = run_cli("export", "--work", works["tars"], "--out", tmp_path / "out", "--format", "csv",
                       "--extract-images", mine, *overwrite, check=False)
        assert proc.returncode == 2 and "not written by `rewrite export`" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert (mine / "00000.jpg").read_bytes() == b"my photo" and not (tmp_path / "out").exists()

    images = tmp_path / "images"
    run_cli("export", "--work", works["tars"], "--out", tmp_path / "first", "--format", "csv", "--extract-images", images)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
              for p in images.rglob("*")}
    proc = run_cli("export", "--work", works["tars"], "--out", tmp_path / "second", "--format", "laclip",
                   "--extract-images", images, check=False)
    assert proc.returncode == 2 and "holds the images of another export" in proc.stderr, proc.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in images.rglob("*")} == before
    (images / "notes.txt").write_text("mine")
    run_cli("export", "--work", works["tars"], "--out", tmp_path / "second", "--format", "laclip",
            "--extract-images", images, "--overwrite")
    assert (images / "notes.txt").read_text() == "mine"  # taking the folder over removes only what an export wrote
    (images / "00000" / "mine.jpg").write_bytes(b"x")
    proc = run_cli("export", "--work", works["tars"], "--out", tmp_path / "third", "--format", "laclip",
                   "--extract-images", images, "--overwrite", check=False)
    assert proc.returncode == 2 and "mine.jpg was not written by `rewrite export`" in proc.stderr, proc.stderr
    assert (images / "00000" / "mine.jpg").read_bytes() == b"x"


def test_the_report_says_which_shards_it_could_not_count(works, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(works["parquet"], work)
    damaged = work / "rewrites" / "chatgpt" / "00001.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    proc = run_cli("report", "--work", work, "--out", tmp_path / "report", "--no-progress")
    assert "chatgpt: valid" in proc.stdout and "of 2/4 rows" in proc.stdout, proc.stdout
    assert "warning: chatgpt: 1 shards not counted (00001" in proc.stderr and str(damaged) in proc.stderr, proc.stderr
    left_out = json.loads((tmp_path / "report" / "report.json").read_text())["sets"]["chatgpt"]["shards_left_out"]
    assert list(left_out) == ["1"] and str(damaged) in left_out["1"]


def test_export_workers_die_with_the_export_and_a_rerun_publishes(works, tmp_path):
    """The export freezes itself (SIGSTOP) after its first shard, with its two workers alive; killed
    then, it leaves no worker behind (holding the folder's lock), and a rerun publishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, marker = tmp_path / "out-killed", f"REWRITE_TEST_EXPORT={os.getpid()}-{time.time_ns()}"
    proc = subprocess.Popen([sys.executable, "-m", "rewrite.cli", "export", "--work", str(works["tars"]), "--out",
                             str(out), "--format", "wds", "--workers", "2", "--no-progress"],
                            env={**os.environ, "REWRITE_KILL_AT": "exported", "REWRITE_KILL_SIGNAL": "STOP",
                                 marker.split("=")[0]: marker.split("=")[1]})
    deadline = time.time() + 300
    while (open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T") and time.time() < deadline:
        time.sleep(0.05)
    assert len(processes_marked(marker)) >= 3  # the export and its two workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    deadline = time.time() + 10
    while processes_marked(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert processes_marked(marker) == []  # no worker outlives it
    done = run_cli("export", "--work", works["tars"], "--out", out, "--format", "wds", "--workers", "2", "--no-progress")
    assert "wrote 5 rows in 4 files" in done.stdout, done.stdout


def test_sigterm_stops_an_export_with_75_keeps_what_it_wrote_and_a_rerun_finishes(works, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "out-stopped"
    proc = subprocess.Popen([sys.executable, "-m", "rewrite.cli", "export", "--work", str(works["tars"]), "--out",
                             str(out), "--format", "wds", "--workers", "2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "REWRITE_KILL_AT": "exported@2", "REWRITE_KILL_SIGNAL": "TERM"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75 and err.strip().splitlines()[-1].startswith("stopped by SIGTERM"), err
    assert "Traceback" not in err and not (out / "sizes.json").exists()
    first = (out / ".rewrite-staging" / "00000.tar").stat().st_ino  # the shard written before the stop
    done = run_cli("export", "--work", works["tars"], "--out", out, "--format", "wds", "--no-progress")
    assert "wrote 5 rows in 4 files" in done.stdout
    assert (out / "00000.tar").stat().st_ino == first  # kept, not written again


def test_a_whole_export_that_is_not_published_does_not_exit_0(works, tmp_path):
    """Another process holds the folder (as a live export does). Before this export starts staging: it
    stages nothing and exits 75. After (a first try was killed mid-way and left its staging to resume):
    every shard is written, but it cannot publish; it says so and exits 75 (run again), never 0."""
    import fcntl
    import os

    out = tmp_path / "out-held"
    export = ["export", "--work", works["tars"], "--out", out, "--format", "wds", "--no-progress"]
    out.mkdir()

    def held(**kw):
        fd = os.open(out / ".rewrite-export.lock", os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            return run_cli(*export, check=False, **kw)
        finally:
            os.close(fd)

    busy = held()
    assert busy.returncode == 75 and f"another export is writing {out.resolve()} now" in busy.stderr, busy.stderr
    assert not (out / ".rewrite-staging").exists()
    killed = run_cli(*export, check=False, env={"REWRITE_KILL_AT": "exported@1"})
    assert killed.returncode == -9
    proc = held()
    assert proc.returncode == 75 and "is not published: run the same command again" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "sizes.json").exists()
    done = run_cli(*export)
    assert "wrote 5 rows in 4 files" in done.stdout
