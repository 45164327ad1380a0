"""Checkpoint and resume: a set's output held (shared) with its settings checked, or started over; a shard
claimed under its lock (skipped when done or held by another process, cleared when damaged, reopened for
--retry-failed); chunk parts committed with their record, and found again by a rerun."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow as pa

from .. import stop, storage
from ..workdir import atomic, done, layout, record
from ..workdir.manifest import format_shard_spec
from ..workdir.lock import ShardLock, FlockFile
from . import rows
from .config import PreparedSet, RunError


START_OVER_WAIT = 10.0  # seconds an overwrite waits for the source to itself before it refuses


def check_settings(job: PreparedSet, fingerprint: dict, overwrite: bool) -> bool:
    """Whether the run matches what the source was written with (True), or must start it over (False,
    only with overwrite); anything else is an error that says what differs. Reads, never writes."""
    w, source = job.w, job.config.source
    try:
        recorded = record.recorded_settings(w, source)
    except record.RecordError:
        if not overwrite:
            raise
        recorded = {}
    if recorded is None or recorded == fingerprint:
        return True
    if not overwrite:
        raise RunError(f"{w.rewrites(source)} was written with other settings ({record.differences(recorded, fingerprint)}). "
                       "Use the same settings, another --work, or --overwrite to start this source over")
    others = [s for s in range(job.manifest.num_shards) if s not in job.named
              and done.check(w, source, s).state != done.MISSING]
    if others:
        raise RunError(f"--overwrite with other settings starts {source} over, which removes the output of shards "
                       f"{format_shard_spec(others)} that --shards does not name: name them too (e.g. --shards all) "
                       "to remove them, or keep the recorded settings")
    return False


def preflight(job: PreparedSet, fingerprint: dict, overwrite: bool) -> None:
    """Before a model loads: the settings match the source's, or an overwrite may start it over now
    (no other run is writing it). Holds nothing after; `run` checks again under the lock."""
    if check_settings(job, fingerprint, overwrite):
        return
    probe = FlockFile(job.w.source_lock_file(job.config.source))
    try:
        if not probe.exclusive():
            raise _busy(job)
    finally:
        probe.release()


def _busy(job: PreparedSet) -> RunError:
    source = job.config.source
    return RunError(f"--overwrite would start {source} over, but other runs are writing it now "
                    f"({_writers(job.w, source, job.manifest.num_shards)}): stop them first")


def open_source(job: PreparedSet, fingerprint: dict, overwrite: bool) -> FlockFile:
    """Hold the source (shared) with its settings recorded as `fingerprint`, starting it over first
    when overwrite asks for other settings."""
    w, source = job.w, job.config.source
    lock = FlockFile(w.source_lock_file(source))
    lock.shared()
    try:
        record.clean_leftovers(w, source)
        if check_settings(job, fingerprint, overwrite):
            if record.recorded_settings(w, source) is None and not atomic.create_json(w.settings_file(source), fingerprint):
                check_settings(job, fingerprint, overwrite=False)  # another run recorded its settings first
        else:
            _start_over(job, fingerprint, lock)
        return lock
    except BaseException:
        lock.release()
        raise


def _start_over(job: PreparedSet, fingerprint: dict, lock: FlockFile) -> None:
    """Remove the source's output and record the new settings. That needs the source to itself
    (exclusive): never while another run writes it. Other tasks of the same overwriting run wait for
    the one that starts it over, and then join it."""
    w, source = job.w, job.config.source
    lock.release()
    deadline = time.monotonic() + START_OVER_WAIT
    joined = False
    while not lock.exclusive():
        if record.matches(w, source, fingerprint):
            joined = True  # another task of this run started it over
            break
        if time.monotonic() > deadline:
            raise _busy(job)
        time.sleep(0.2)
    if not joined and not record.matches(w, source, fingerprint):
        with stop.deferred():
            print(f"{source}: other settings, starting it over (removing the output of its shards)", file=sys.stderr)
            for shard in range(job.manifest.num_shards):
                done.clear(w, source, shard)
            atomic.write_json(w.settings_file(source), fingerprint)
    lock.shared()
    if not record.matches(w, source, fingerprint):
        raise RunError(f"another run started {source} over with other settings while this one did")


def _writers(w: layout.Work, source: str, num_shards: int) -> str:
    held = []
    for shard in range(num_shards):
        lock = ShardLock(w.lock_file(source, shard))
        if storage.exists(w.lock_file(source, shard)) and not lock.acquire():
            held.append(f"shard {layout.shard_id(shard)} by {lock.holder()}")
        lock.release()
    return "; ".join(held[:5]) or "a run is starting"


def claim(job: PreparedSet, shard: int, overwrite: bool, retry_failed: bool = False,
          known: done.ShardCheck | None = None) -> ShardLock | None:
    """The shard's lock, held, when this process is to write the shard; None when another process holds
    it or the shard is done (and verified), unless retry_failed finds failed rows in it (it is reopened
    then). A damaged shard, or any with overwrite, is cleared first. `known`: the shard's state as the
    command checked it before; under the lock it is checked again only if its done marker changed since."""
    w, source = job.w, job.config.source
    lock = ShardLock(w.lock_file(source, shard))
    if not lock.acquire():
        print(f"{source} shard {layout.shard_id(shard)}: being rewritten by {lock.holder()}, skipped", file=sys.stderr)
        return None
    try:
        found = known if known is not None and done.still(w, source, shard, known) else done.check(w, source, shard)
        if overwrite or found.state == done.DAMAGED:
            if found.state == done.DAMAGED:
                print(f"{source} shard {layout.shard_id(shard)}: damaged ({found.problem}): rewriting it", file=sys.stderr)
            done.clear(w, source, shard)
        elif found.state == done.DONE:
            done.drop_parts(w, source, shard)
            if retry_failed and found.stats["failed"]:
                print(f"{source} shard {layout.shard_id(shard)}: retrying its {found.stats['failed']} failed rows",
                      file=sys.stderr)
                _reopen_done(job, shard, found.stats)
                return lock
            print(f"{source} shard {layout.shard_id(shard)}: done already, skipped", file=sys.stderr)
            lock.release()
            return None
    except BaseException:
        lock.release()
        raise
    return lock


# What a done shard's stats carry of its chunks' work, beside the counts of its rows.
CARRIED = ("unique_captions", "requests", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "captions_cut",
           "seconds", "rejected", "engine_errors")


def _reopen_done(job: PreparedSet, shard: int, stats: dict) -> None:
    """--retry-failed on a done shard: its rows go back into chunk parts bound for the next retry round
    (done.Part.target; the shard's counters carried by the first part), then the shard stops being done,
    and the run takes up the chunks with failed rows (rows.reopen). Killed before that last step, the
    shard is still done; after it, a rerun goes on with the round from the parts. Caller holds its lock."""
    w, config = job.w, job.config
    parts = w.parts(config.source, shard)
    storage.make_dirs(parts)
    table = storage.read_parquet(w.rewrite_file(config.source, shard)).replace_schema_metadata(None)
    round_ = stats.get(done.ROUND_KEY, 0)
    for index, start in enumerate(range(0, table.num_rows, config.chunk_rows)):
        chunk = table.slice(start, config.chunk_rows)
        counts = rows.tally(chunk, config.num_rewrites)
        chunk_stats = {**rows.chunk_stats(chunk.num_rows, 0), "captions_cut": 0, "seconds": 0.0, "rejected": {},
                       **counts, **({k: stats[k] for k in CARRIED if k in stats} if index == 0 else {})}
        write_part(parts / f"{index:05d}.parquet", chunk, done.Part(chunk_stats, round_, round_ + 1))
    storage.remove(w.stats_file(config.source, shard), missing_ok=False)


def write_part(path: Path, table: pa.Table, part: done.Part) -> None:
    """Commit a chunk's rows with its record (done.Part)."""
    with atomic.atomic_path(path) as tmp:
        storage.write_parquet(table.replace_schema_metadata(part.metadata()), tmp)


def committed_part(part: Path, chunk: pa.Table) -> tuple[done.Part, pa.Table] | None:
    """The record and rows of a chunk an earlier run committed, or None when there is none; a damaged
    part, or one that does not hold these rows, is removed (and redone by the caller)."""
    if not storage.exists(part):
        return None
    try:
        committed = storage.read_parquet(part)
        record = done.Part.of(committed.schema.metadata)
        problem = None if committed.num_rows == chunk.num_rows and committed.column(layout.KEY).equals(
            chunk.column(layout.KEY)) else "it does not hold this chunk's rows"
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as e:
        problem = f"unreadable: {e}"
    if problem is None:
        return record, committed.replace_schema_metadata(None)
    print(f"damaged chunk {part} ({problem}): rewriting it", file=sys.stderr)
    storage.remove(part, missing_ok=False)
    return None
