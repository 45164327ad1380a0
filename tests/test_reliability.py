"""No user action loses data: overwrites, exports, damaged outputs, user meta sets, input columns,
pathological rows and errors. Each test fails on the code before the fix it covers. (Moved work dirs
and planning-time column checks: test_workdir.py and test_plan.py; file modes: test_permissions.py.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli, write_parquet
from rewrite import meta
from rewrite.rewriting import prompt
from rewrite.workdir import done, layout
from rewrite.inputs import plan
from rewrite.run import runner
from rewrite.defaults import Schedule
from rewrite.run.config import RunConfig, RunError, prepare
from rewrite.run.checkpoint import preflight
from rewrite.workdir.done import pending_shards
from rewrite.run.shardwork import STATS_KEY

CAPTIONS = ["a red kite over a green field", "two dogs asleep on a sofa", "a bowl of soup with bread",
            "a lighthouse at dusk", "a cyclist on a mountain road", "fresh bread on a wooden board"]


@pytest.fixture
def text_input(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "captions.txt"
    path.parent.mkdir()
    path.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    return path


def planned(tmp_path: Path, text_input: Path, shards: int = 3) -> Path:
    work = tmp_path / "work"
    plan.plan([str(text_input)], work, num_shards=shards)
    return work


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1. one writer, always


def test_overwrite_with_other_settings_must_name_every_shard_it_removes(tmp_path, text_input, engine):
    work = planned(tmp_path, text_input)
    runner.run(work, RunConfig(source="bard", chunk_rows=2), [0, 1, 2], engine, progress=False)
    before = {s: layout.Work(work).rewrite_file("bard", s).read_bytes() for s in range(3)}
    with pytest.raises(RunError, match=r"removes the output of shards 0,2 that --shards does not name"):
        runner.run(work, RunConfig(source="bard", chunk_rows=2, seed=1), [1], engine, progress=False,
                   overwrite=True)
    assert {s: layout.Work(work).rewrite_file("bard", s).read_bytes() for s in range(3)} == before  # nothing removed
    assert json.loads(layout.Work(work).settings_file("bard").read_text())["seed"] == 0
    # Named, they go, but never while another run writes the source (it holds the source lock shared).
    from rewrite.workdir.lock import FlockFile

    job = prepare(work, RunConfig(source="bard", seed=1), [0, 1, 2])
    fingerprint = job.fingerprint(engine.describe()["engine"], engine.model)
    writer = FlockFile(layout.Work(work).source_lock_file("bard"))
    writer.shared()
    try:
        with pytest.raises(RunError, match="other runs are writing it now"):
            preflight(job, fingerprint, overwrite=True)
    finally:
        writer.release()
    preflight(job, fingerprint, overwrite=True)
    # Named, and nobody else writing: the source starts over with the new settings.
    runner.run(work, RunConfig(source="bard", chunk_rows=2, seed=1), [1], engine, progress=False,
               overwrite=True, named=[0, 1, 2])
    assert json.loads(layout.Work(work).settings_file("bard").read_text())["seed"] == 1
    assert [done.check(layout.Work(work), "bard", s).state for s in range(3)] == ["missing", "done", "missing"]


@pytest.mark.slow
def test_overwrite_never_starts_over_beside_a_live_writer(tmp_path, text_input):
    many = tmp_path / "many.txt"  # long enough that the live run is still writing when the overwrite comes
    many.write_text("".join(f"{c}, picture {i}\n" for i in range(3) for c in CAPTIONS), encoding="utf-8")
    work = planned(tmp_path, many, shards=1)
    folder = work / "rewrites" / "bard"
    live = subprocess.Popen([sys.executable, "-m", "rewrite.cli", "run", "--work", str(work), "--source", "bard",
                             "--chunk-rows", "1", "--no-progress"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not list((folder / "00000.parts").glob("*.parquet")):  # the live run is writing chunks
            assert live.poll() is None and time.time() < deadline, live.stderr.read() if live.poll() is not None else "timeout"
            time.sleep(0.1)
        proc = run_cli("run", "--work", work, "--source", "bard", "--seed", "1", "--overwrite", "--no-progress",
                       check=False)
        assert proc.returncode == 2 and "other runs are writing it now" in proc.stderr, proc.stderr
        assert f"pid {live.pid}" in proc.stderr
        _, err = live.communicate(timeout=600)
        assert live.returncode == 0, err
    finally:
        live.kill()
    recorded = json.loads((folder / "settings.json").read_text())
    assert recorded["seed"] == 0  # the live run's settings, and its shard is whole and done
    assert done.check(layout.Work(work), "bard", 0).state == "done"
    assert pq.read_table(folder / "00000.parquet").num_rows == 3 * len(CAPTIONS)


def test_a_done_shard_is_never_touched_by_a_reader(tmp_path, text_input, engine):
    """`pending_shards` (used by `rewrite run` and `slurm submit` before any lock is held) only reads, and
    so does every command that reads a work dir."""
    work = planned(tmp_path, text_input, shards=1)
    runner.run(work, RunConfig(source="bard", chunk_rows=2), [0], engine, progress=False)
    parts = layout.Work(work).parts("bard", 0)
    parts.mkdir()
    (parts / "00000.parquet").write_bytes(b"a chunk of a writer that holds the lock now")
    assert pending_shards(work, "bard", [0]) == []
    assert (parts / "00000.parquet").exists()
    # And every command that only reads, through the real CLI: nothing in the work dir changes.
    before = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(work.rglob("*")) if p.is_file()}
    run_cli("status", "--work", work)
    run_cli("status", "--work", work, "--json")
    run_cli("export", "--work", work, "--out", tmp_path / "export", "--no-progress")
    run_cli("report", "--work", work, "--out", tmp_path / "report", "--no-progress")
    run_cli("slurm", "submit", "--work", work, "--source", "bard", "--dry-run")
    after = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(work.rglob("*")) if p.is_file()}
    assert after == before


# ------------------------------------------------------------------ 2, 3. exports


@pytest.fixture
def rewritten(tmp_path, engine):
    """Parquet inputs (HF layout: data/train-*.parquet) planned into 3 shards and rewritten."""
    inputs = tmp_path / "hf-input"
    write_parquet(inputs / "data" / "train-00000-of-00001.parquet", CAPTIONS)
    work = tmp_path / "work"
    plan.plan([str(inputs)], work, num_shards=3)
    runner.run(work, RunConfig(source="bard", chunk_rows=2), [0, 1, 2], engine, progress=False)
    return inputs, work


@pytest.mark.parametrize("where", ["input", "inside-input", "holds-input", "work", "inside-work"])
def test_export_never_writes_over_inputs_or_the_work_dir(rewritten, tmp_path, where):
    inputs, work = rewritten
    out = {"input": inputs, "inside-input": inputs / "data", "holds-input": tmp_path, "work": work,
           "inside-work": work / "dataset"}[where]
    before = files_of(inputs)
    proc = run_cli("export", "--work", work, "--out", out, "--overwrite", check=False)
    assert proc.returncode == 2 and "an export goes to a folder of its own" in proc.stderr, proc.stderr
    assert files_of(inputs) == before


def test_export_overwrite_removes_only_files_an_export_wrote(rewritten, tmp_path):
    _, work = rewritten
    theirs = tmp_path / "theirs"
    (theirs / "data").mkdir(parents=True)
    (theirs / "data" / "keep.parquet").write_bytes(b"someone's data")
    proc = run_cli("export", "--work", work, "--out", theirs, "--overwrite", check=False)
    assert proc.returncode == 2 and "was not written by `rewrite export`" in proc.stderr
    assert (theirs / "data" / "keep.parquet").read_bytes() == b"someone's data"

    out = tmp_path / "dataset"
    run_cli("export", "--work", work, "--out", out)
    (out / "notes.txt").write_text("mine")
    (out / "data" / "extra.parquet").write_bytes(b"dropped in later")
    proc = run_cli("export", "--work", work, "--out", out, "--overwrite", check=False)
    assert proc.returncode == 2 and "extra.parquet was not written by `rewrite export`" in proc.stderr
    (out / "data" / "extra.parquet").unlink()
    run_cli("export", "--work", work, "--out", out, "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"


def test_a_killed_export_is_invisible_and_a_rerun_finishes_it(rewritten, tmp_path):
    import datasets

    _, work = rewritten
    out = tmp_path / "dataset"
    proc = run_cli("export", "--work", work, "--out", out, check=False,
                   env={"REWRITE_KILL_AT": "committed:data/train-00000-of-00003.parquet"})
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(Exception):  # no dataset there yet, rather than a third of one
        datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf0"))
    assert not (out / "data").exists()
    run_cli("export", "--work", work, "--out", out)  # finishes: no refusal of the non-empty folder
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf1"))["train"]
    assert ds.num_rows == len(CAPTIONS) and "caption_bard" in ds.column_names

    # Replacing it (another source added) and killed half-way: readers still see the whole old export.
    old = files_of(out / "data")
    runner_run_coco = run_cli("run", "--work", work, "--source", "coco", "--no-progress", "--chunk-rows", "3")
    assert runner_run_coco.returncode == 0
    proc = run_cli("export", "--work", work, "--out", out, "--overwrite", check=False,
                   env={"REWRITE_KILL_AT": "committed:data/train-00001-of-00003.parquet"})
    assert proc.returncode == -signal.SIGKILL
    assert files_of(out / "data") == old
    run_cli("export", "--work", work, "--out", out, "--overwrite")
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf2"))["train"]
    assert ds.num_rows == len(CAPTIONS) and {"caption_bard", "caption_coco"} <= set(ds.column_names)
    assert not (out / ".rewrite-staging").exists()


# ------------------------------------------------------------------ 4. finished means verified


def test_damaged_outputs_are_reported_and_only_they_are_redone(tmp_path, text_input, engine):
    work = planned(tmp_path, text_input)
    w = layout.Work(work)
    config = RunConfig(source="bard", chunk_rows=2)
    runner.run(work, config, [0, 1, 2], engine, progress=False)
    before = {s: w.rewrite_file("bard", s).read_bytes() for s in range(3)}
    w.rewrite_file("bard", 0).unlink()
    data = w.rewrite_file("bard", 2).read_bytes()
    w.rewrite_file("bard", 2).write_bytes(data[: len(data) // 2])  # truncated
    status = run_cli("status", "--work", work).stdout
    assert "damaged 2" in status and "00000.parquet is missing" in status and "00002.parquet has" in status
    proc = run_cli("export", "--work", work, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "00000.parquet is missing" in proc.stderr
    mtime = w.rewrite_file("bard", 1).stat().st_mtime_ns
    redone = runner.run(work, config, [0, 1, 2], engine, progress=False)
    assert sorted(s["shard"] for s in redone) == [0, 2]
    assert w.rewrite_file("bard", 1).stat().st_mtime_ns == mtime  # untouched
    assert {s: w.rewrite_file("bard", s).read_bytes() for s in range(3)} == before  # same bytes again

    w.stats_file("bard", 1).write_text('{"rows": 2, "ok"')  # a stats file cut short
    assert "00001.stats.json is not a complete stats file" in run_cli("status", "--work", work).stdout


def test_a_done_shard_is_verified_by_size_rows_and_for_export_sha256(tmp_path, text_input, engine):
    """Each fact the done marker records is checked: another row count (the file's size unchanged) is
    damage for every reader; other bytes of the same size and rows are caught by export's sha256."""
    work = planned(tmp_path, text_input, shards=2)
    w = layout.Work(work)
    runner.run(work, RunConfig(source="bard"), [0, 1], engine, progress=False)
    stats = json.loads(w.stats_file("bard", 0).read_text())
    stats["file"]["rows"] += 1
    w.stats_file("bard", 0).write_text(json.dumps(stats))
    assert "00000.parquet has" in run_cli("status", "--work", work).stdout and "rows" in run_cli("status", "--work", work).stdout
    stats["file"]["rows"] -= 1
    w.stats_file("bard", 0).write_text(json.dumps(stats))
    assert "done 2/2" in run_cli("status", "--work", work).stdout
    w.rewrite_file("bard", 1).write_bytes(same_size_other_bytes(w.rewrite_file("bard", 1)))
    assert "done 2/2" in run_cli("status", "--work", work).stdout  # status checks size and rows only
    proc = run_cli("export", "--work", work, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "00001.parquet is not the file that was committed (its sha256 differs)" in proc.stderr


def test_a_damaged_chunk_part_is_named_and_redone(tmp_path, text_input, engine):
    work = planned(tmp_path, text_input, shards=1)
    w = layout.Work(work)
    config = RunConfig(source="bard", chunk_rows=2)
    runner.run(work, config, [0], engine, progress=False)
    expected = w.rewrite_file("bard", 0).read_bytes()
    # A shard left half-done: its first chunk committed, then truncated on disk.
    parts = w.parts("bard", 0)
    parts.mkdir()
    table = pq.read_table(w.rewrite_file("bard", 0)).slice(0, 2)
    stats = {"rows": 2, "ok": 2, "failed": 0, "skipped": 0, "seconds": 1.0}
    pq.write_table(table.replace_schema_metadata({STATS_KEY: json.dumps(stats)}), parts / "00000.parquet")
    part = (parts / "00000.parquet").read_bytes()
    (parts / "00000.parquet").write_bytes(part[:-20])
    w.stats_file("bard", 0).unlink()
    w.rewrite_file("bard", 0).unlink()
    proc = run_cli("run", "--work", work, "--source", "bard", "--chunk-rows", "2", "--no-progress")
    assert "damaged chunk" in proc.stderr and "00000.parts/00000.parquet" in proc.stderr
    assert w.rewrite_file("bard", 0).read_bytes() == expected


# ------------------------------------------------------------------ 6. user meta sets


def meta_file(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs), encoding="utf-8")
    return path


GOOD_PAIRS = [(f"photo {i} of a street", f"a quiet street scene number {i}, with parked cars and trees") for i in range(6)]


def test_a_custom_meta_set_is_named_after_its_file_inside_the_work_dir(tmp_path, text_input, engine):
    work = planned(tmp_path, text_input, shards=1)
    mine = meta_file(tmp_path / "sets" / "mine.jsonl", GOOD_PAIRS)
    for given in (str(mine), os.path.relpath(mine)):  # absolute, then relative: one source
        runner.run(work, RunConfig(source=given, chunk_rows=3), [0], engine, progress=False)
    assert layout.Work(work).sources_present() == ["mine"]
    assert mine.read_text(encoding="utf-8").count("\n") == len(GOOD_PAIRS)  # the meta file is untouched
    summary = run_cli("export", "--work", work, "--out", tmp_path / "o").stdout
    assert "caption_mine" in summary
    assert "mine     done 1/1" in run_cli("status", "--work", work, "--source", str(mine)).stdout


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", [("a => b", "c"), ("d", "e"), ("f", "g"), ("h", "i")], "is not usable in a prompt: '=>' inside"),
    ("my set.jsonl", GOOD_PAIRS, "may hold only letters, digits"),
])
def test_a_bad_meta_set_is_refused_before_a_model_loads(tmp_path, text_input, name, content, message):
    work = planned(tmp_path, text_input, shards=1)
    path = meta_file(tmp_path / "sets" / name, content)
    # The model does not exist: the meta set's error coming first shows nothing was loaded before.
    proc = run_cli("run", "--work", work, "--source", path, "--model", tmp_path / "no-model", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (work / "rewrites").exists() or layout.Work(work).sources_present() == []


# ------------------------------------------------------------------ 7. input columns


def test_input_columns_survive_the_export_and_collisions_are_refused_before_rewriting(tmp_path, engine):
    import datasets

    csv = tmp_path / "in" / "captions.csv"
    csv.parent.mkdir()
    csv.write_text("id,key,caption,caption_coco\n" + "".join(
        f"{i:03d},k{i},{c},old rewrite {i}\n" for i, c in enumerate(CAPTIONS)), encoding="utf-8")
    work = tmp_path / "work"
    run_cli("shard", csv, "--out", work, "--num-shards", "2", "--key-column", "id")
    with pytest.raises(RunError, match="already have a column 'caption_coco'"):
        runner.run(work, RunConfig(source="coco"), [0, 1], engine, progress=False)
    runner.run(work, RunConfig(source="bard", chunk_rows=3), [0, 1], engine, progress=False)
    run_cli("export", "--work", work, "--out", tmp_path / "o")
    ds = datasets.load_dataset(str(tmp_path / "o"), cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.column_names == ["id", "key", "caption", "caption_coco", "caption_bard"]
    assert ds["id"] == [f"{i:03d}" for i in range(len(CAPTIONS))] and ds["key"] == [f"k{i}" for i in range(6)]
    assert ds["caption_coco"] == [f"old rewrite {i}" for i in range(6)]


# ------------------------------------------------------------------ 8. pathological rows


@pytest.mark.parametrize("streaming", [False, True], ids=["chunked", "streaming"])
def test_a_huge_caption_costs_a_row_and_says_it_was_cut(tmp_path, engine, streaming):
    """A chunk at a time, the cut row goes to the engine in a call of its own; streaming, the engine
    takes it like any row (the transformers engine's buckets keep it from widening the others: see
    test_engine's long-prompt test), so the row's cost and its reason are what is checked."""
    captions = CAPTIONS[:3] + ["a very long alt text " * 50_000] + CAPTIONS[3:]  # ~1 MB
    pq.write_table(pa.table({"caption": captions}), tmp_path / "odd.parquet")
    work = tmp_path / "work"
    plan.plan([str(tmp_path / "odd.parquet")], work, num_shards=1)
    calls = []

    class Calls:  # the real engine, keeping the prompts of each generate call
        def __getattr__(self, name):
            return getattr(engine, name)

        def generate(self, requests, sampling):
            calls.append([r.prompt for r in requests])
            return engine.generate(requests, sampling)

    stats = runner.run(work, RunConfig(source="human", chunk_rows=16, max_attempts=1), [0], Calls(),
                       progress=False, schedule=Schedule(streaming=streaming))[0]
    long_calls = [c for c in calls if any("very long alt text" in p for p in c)]
    if not streaming:
        assert [len(c) for c in long_calls] == [1]  # its own batch: it widens none of the others
    else:
        assert len(long_calls) == 1 and long_calls[0][-1].count("very long alt text") > 10  # sent last, once
    rows = pq.read_table(layout.Work(work).rewrite_file("human", 0)).to_pylist()
    assert rows[3]["reason"] == "caption_cut" or rows[3]["status"] == "failed"
    assert stats["captions_cut"] == 1
    head = len(engine.encode(prompt.load_template().head(meta.load("human").examples()[:3])))
    assert stats["prompt_tokens"] <= stats["requests"] * (head + 40) + 256  # the huge row paid ~256 tokens


# ------------------------------------------------------------------ 10. errors, not tracebacks


def test_damaged_settings_and_stray_folders_get_one_line(tmp_path, text_input, engine):
    work = planned(tmp_path, text_input, shards=1)
    runner.run(work, RunConfig(source="bard", chunk_rows=3), [0], engine, progress=False)
    (work / "rewrites" / "notes").mkdir()
    status = run_cli("status", "--work", work).stdout
    assert "bard     done 1/1" in status and "notes: not a source folder" in status
    run_cli("export", "--work", work, "--out", tmp_path / "o")  # the stray folder is ignored
    layout.Work(work).settings_file("bard").write_text("{not json")
    proc = run_cli("run", "--work", work, "--source", "bard", "--overwrite", "--shards", "0", "--model",
                   tmp_path / "no-model", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("export", "--work", work, "--out", tmp_path / "o2", check=False)
    assert proc.returncode == 2 and "settings.json is damaged" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--max-caption-tokens", "0"], "--max-caption-tokens must be >= 1"),
    (["--template", "{tmp}/nope.toml", "--model", "{tmp}/no-model"], "template file .*nope.toml does not exist"),
    (["--num-examples", "40", "--model", "{tmp}/no-model"], "--num-examples 40 is more than"),
])
def test_bad_options_get_one_line_and_exit_2(tmp_path, text_input, args, message):
    import re

    work = planned(tmp_path, text_input, shards=1)
    proc = run_cli("run", "--work", work, "--source", "bard", "--no-progress",
                   *[a.format(tmp=tmp_path) for a in args], check=False)
    assert proc.returncode == 2 and re.search(message, proc.stderr) and "Traceback" not in proc.stderr, proc.stderr


def test_an_unwritable_work_dir_gets_one_line_and_loses_nothing(tmp_path, text_input):
    work = planned(tmp_path, text_input, shards=1)
    (work / "rewrites").mkdir()
    (work / "rewrites").chmod(0o555)
    cmd = [sys.executable, "-m", "rewrite.cli", "run", "--work", str(work), "--source", "bard", "--no-progress"]
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that let it
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search",
               *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "Permission denied" in proc.stderr and "rewrites/bard" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigterm_while_the_model_loads_exits_75(tmp_path, text_input):
    work = planned(tmp_path, text_input, shards=1)
    proc = subprocess.Popen([sys.executable, "-m", "rewrite.cli", "run", "--work", str(work), "--source", "bard",
                             "--no-progress"], stderr=subprocess.PIPE, text=True)
    line = ""
    while "loading" not in line:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "the run ended before loading a model"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not (work / "rewrites" / "bard" / "00000.stats.json").exists()


@pytest.mark.slow
def test_a_full_disk_gets_one_line_and_loses_nothing(tmp_path, text_input):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]).returncode == 0
    if not mounted:  # CI requires every slow test: there a machine that cannot mount fails, never passes silently
        (pytest.fail if os.environ.get("REWRITE_REQUIRE_SLOW") else pytest.skip)(
            "a full disk is made by mounting a 4 MB tmpfs, which needs root and a kernel that allows it")
    try:
        work = disk / "work"
        run_cli("shard", text_input, "--out", work, "--num-shards", "2")
        run_cli("run", "--work", work, "--source", "bard", "--shards", "0", "--no-progress")
        done_before = (work / "rewrites" / "bard" / "00000.parquet").read_bytes()
        filler = disk / "filler"
        with open(filler, "wb") as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(os.urandom(1 << 16))
                    f.flush()
            except OSError:
                pass
        proc = run_cli("run", "--work", work, "--source", "bard", "--shards", "1", "--no-progress", check=False)
        assert proc.returncode == 1 and "No space left on device" in proc.stderr, proc.stderr
        assert "rewrites/bard/" in proc.stderr and "Traceback" not in proc.stderr
        assert (work / "rewrites" / "bard" / "00000.parquet").read_bytes() == done_before
        filler.unlink()
        run_cli("run", "--work", work, "--source", "bard", "--shards", "1", "--no-progress")
        assert "bard     done 2/2" in run_cli("status", "--work", work).stdout
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def same_size_other_bytes(path) -> bytes:
    """The parquet file with one byte changed where it still reads, with the same rows, to other values."""
    import io

    data, original = bytearray(path.read_bytes()), pq.read_table(path)
    for at in range(8, len(data) - 8):
        changed = bytearray(data)
        changed[at] ^= 0x01
        try:
            table = pq.read_table(io.BytesIO(bytes(changed)))
        except Exception:  # noqa: BLE001 - this byte broke the file: try the next
            continue
        if table.num_rows == original.num_rows and not table.equals(original):
            return bytes(changed)
    raise AssertionError(f"no byte of {path} changes a value and keeps it readable")
