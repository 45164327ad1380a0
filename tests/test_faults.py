"""Fault injection on real runs: SIGKILL at many moments, SIGTERM, two workers on one shard."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import processes_marked, run_cli

pytestmark = pytest.mark.slow

SOURCE = "bard"
RUN = ("--source", SOURCE, "--chunk-rows", "5", "--no-progress", "--seed", "11")


def captions_file(tmp_path: Path, n: int = 36) -> Path:
    from rewrite.launch.demo import demo_captions

    lines = demo_captions().read_text(encoding="utf-8").splitlines()[:n]
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def planned(tmp_path: Path, name: str, shards: int = 3) -> Path:
    work = tmp_path / name
    run_cli("shard", captions_file(tmp_path), "--out", work, "--num-shards", str(shards))
    return work


def start(work: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rewrite.cli", "run", "--work", str(work), *RUN, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def outputs(work: Path, shards: int = 3) -> list[bytes]:
    return [(work / "rewrites" / SOURCE / f"{s:05d}.parquet").read_bytes() for s in range(shards)]


def wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# Moments at which a run kills itself (REWRITE_KILL_AT), in the order a run meets them, each resumed
# by the next: a shard of 12 rows is 3 chunks of 5, 5 and 2 rows.
KILL_AT = [
    "commit:bard/settings.json",  # while the fingerprint is being committed
    "generated@2",  # a chunk generated, not yet committed
    "commit:00000.parts/00001.parquet",  # during a chunk commit: written and synced, not renamed
    "committed:00000.parts/00001.parquet",  # a chunk committed, the shard not yet assembled (streaming may
    # have committed chunk 2 before the kill in chunk 1's commit: then chunk 1 is the last)
    "commit:bard/00000.parquet",  # during the final file's commit
    "committed:bard/00000.parquet",  # the final file committed, its stats (the done marker) not yet
    "committed:bard/00000.stats.json",  # done marker written, the chunk parts not yet cleaned up
]


@pytest.mark.parametrize("scheduler", ["chunked", "stream"])
def test_sigkill_at_any_moment_loses_and_duplicates_nothing(tmp_path, scheduler):
    """A chunk at a time, the resumed run's bytes equal an uninterrupted run's. Streaming, batches mix
    chunks as they come, so the transformers engine's text agrees up to fp32 batch rounding instead
    (see test_determinism); no row is lost or written twice either way."""
    clean = planned(tmp_path, "clean")
    run_cli("run", "--work", clean, *RUN, "--scheduler", scheduler)
    expected = outputs(clean)

    work = planned(tmp_path, "killed")
    for moment in KILL_AT:
        proc = start(work, "--scheduler", scheduler, env={"REWRITE_KILL_AT": moment})
        proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"{moment}: the run was not killed ({proc.returncode})"
    # And once from outside, at a random time while shard 1 is being written.
    proc = start(work, "--scheduler", scheduler)
    wait_for(lambda: any((work / "rewrites" / SOURCE / "00001.parts").glob("*.parquet")))
    time.sleep(random.Random(5).uniform(0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    run_cli("run", "--work", work, *RUN, "--scheduler", scheduler)
    if scheduler == "chunked":
        assert outputs(work) == expected  # byte for byte
    else:
        rewrites = [pq.read_table(work / "rewrites" / SOURCE / f"{s:05d}.parquet").column("rewrite").to_pylist()
                    for s in range(3)]
        clean_rewrites = [pq.read_table(clean / "rewrites" / SOURCE / f"{s:05d}.parquet").column("rewrite")
                          .to_pylist() for s in range(3)]
        same = sum(a == b for got, want in zip(rewrites, clean_rewrites) for a, b in zip(got, want))
        assert same >= 0.9 * 36, f"{same}/36 rewrites agree"
    keys = [k for s in range(3) for k in pq.read_table(work / "rewrites" / SOURCE / f"{s:05d}.parquet")
            .column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == 36
    leftovers = [p.name for p in (work / "rewrites" / SOURCE).iterdir() if p.name.endswith(".parts") or (
        p.name.endswith(".tmp") and not p.name.startswith(".settings.json."))]  # (that one goes after 10 min)
    assert leftovers == []
    for s in range(3):
        a = json.loads((work / "rewrites" / SOURCE / f"{s:05d}.stats.json").read_text())
        b = json.loads((clean / "rewrites" / SOURCE / f"{s:05d}.stats.json").read_text())
        assert a["rows"] == b["rows"] == a["ok"] + a["failed"] + a["skipped"]
        if scheduler == "chunked":
            assert (a["ok"], a["failed"], a["rejected"]) == (b["ok"], b["failed"], b["rejected"])


@pytest.mark.parametrize("open_chunks, signum, builders", [(1, signal.SIGTERM, 0), (4, signal.SIGTERM, 0), (1, signal.SIGINT, 0),
                                                       (4, signal.SIGTERM, 2)])
def test_a_stop_signal_commits_the_chunks_in_flight_and_exits_75(tmp_path, open_chunks, signum, builders):
    """With --builders 2 too: the workers (waited for, so they build and judge) end with the run."""
    work = planned(tmp_path, "w", shards=1)
    parts = work / "rewrites" / SOURCE / "00000.parts"
    marker = f"REWRITE_TEST_STOP_{os.getpid()}_{builders}"
    proc = start(work, "--stop-within", "120", "--scheduler", "stream", "--open-chunks", str(open_chunks),
                 "--builders", str(builders), env={"REWRITE_WAIT_FOR_BUILDERS": "1", marker: "1"})
    wait_for(lambda: any(parts.glob("*.parquet")))  # chunk 0 committed
    time.sleep(0.5)  # the next chunks in flight (a chunk takes seconds; a signal before one starts takes none)
    proc.send_signal(signum)
    proc.send_signal(signum)  # delivered twice at once (Slurm signals the job, the script forwards): one request
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 75, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err
    committed = sorted(p.name for p in parts.glob("*.parquet"))
    if open_chunks == 1:
        assert committed == ["00000.parquet", "00001.parquet"]  # the chunk in flight was finished, no new one
    else:  # the chunks in flight were finished (at most open_chunks after chunk 0), none started after
        assert committed == [f"{i:05d}.parquet" for i in range(len(committed))], committed
        assert 2 <= len(committed) <= 1 + open_chunks < 8, committed
    assert not (work / "rewrites" / SOURCE / "00000.stats.json").exists()
    assert ("worker processes" in err) == bool(builders) and processes_marked(marker) == []
    run_cli("run", "--work", work, *RUN)  # resumes
    assert pq.read_table(work / "rewrites" / SOURCE / "00000.parquet").num_rows == 36


def in_first_chunk(tmp_path, stop_within: str, seconds: float):
    """A run of one shard `seconds` into its first chunk of 30 rows (which takes a while): its set's
    folder and its process."""
    work = planned(tmp_path, "w", shards=1)
    folder = work / "rewrites" / SOURCE
    proc = start(work, "--chunk-rows", "30", "--stop-within", stop_within)
    wait_for(lambda: (folder / "settings.json").exists())
    time.sleep(seconds)
    return folder, proc


def test_past_the_deadline_the_chunk_in_flight_is_dropped(tmp_path):
    folder, proc = in_first_chunk(tmp_path, "1", 2)
    proc.send_signal(signal.SIGUSR1)
    started = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75 and "stopped by SIGUSR1" in err, err
    assert time.time() - started < 8
    assert not list((folder / "00000.parts").glob("*.parquet"))  # the unfinished chunk left nothing behind
    assert not list(folder.glob(".*.tmp")) and not list((folder / "00000.parts").glob(".*.tmp"))


def test_a_second_signal_stops_at_once(tmp_path):
    """A second request, later than a repeat of the first could be, drops the chunk in flight at once."""
    from rewrite import stop

    folder, proc = in_first_chunk(tmp_path, "120", 1)
    proc.send_signal(signal.SIGTERM)
    time.sleep(stop.REPEAT_AFTER + 0.5)
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75 and "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert time.time() - started < 5  # not the 120 s the chunk was given
    assert not list((folder / "00000.parts").glob("*.parquet")) and not list(folder.glob(".*.tmp"))


def test_two_workers_on_one_shard_one_writes_and_a_dead_holder_is_replaced(tmp_path):
    work = planned(tmp_path, "w", shards=1)
    first = start(work)
    lock = work / "rewrites" / SOURCE / "00000.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip())
    second = start(work)
    out2, err2 = second.communicate(timeout=300)
    assert second.returncode == 0 and f"pid {first.pid}" in err2 and "skipped" in err2, err2
    # The holder dies; the next worker takes the shard over and finishes it.
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    run_cli("run", "--work", work, *RUN)
    assert pq.read_table(work / "rewrites" / SOURCE / "00000.parquet").num_rows == 36


def test_a_killed_vllm_run_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    """vLLM streams by default (a GPU's engine): chunks mix in its batches as they come. In float32 its CPU
    build is batch-invariant, so a run killed mid-shard and resumed ends with exactly the bytes of a run
    never killed; and vLLM's own processes do not outlive the killed run."""
    from conftest import require

    require("vllm")
    vllm = ("--engine", "vllm", "--dtype", "float32", "--max-model-len", "2048")
    clean = planned(tmp_path, "clean")
    run_cli("run", "--work", clean, *RUN, *vllm)
    expected = outputs(clean)

    work = planned(tmp_path, "killed")
    marker = f"REWRITE_TEST_RUN={os.getpid()}-{time.time_ns()}"
    proc = start(work, *vllm, env={"REWRITE_KILL_AT": "committed:00001.parts/00000.parquet",
                                   marker.split("=")[0]: marker.split("=")[1]})
    proc.communicate(timeout=900)
    assert proc.returncode == -signal.SIGKILL, "the run was not killed mid-way through shard 1"
    assert (work / "rewrites" / SOURCE / "00000.stats.json").exists()  # shard 0 done, shard 1 begun
    wait_for(lambda: not processes_marked(marker), timeout=30)
    run_cli("run", "--work", work, *RUN, *vllm)
    assert outputs(work) == expected
