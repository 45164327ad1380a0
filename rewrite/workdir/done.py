"""What "a shard is done" means, in one place.

A shard of a source is done when its stats json (written last, after the shard's parquet file was
committed) parses and the parquet file still is what the stats recorded when it was committed: its
size and row count, and (when asked: it reads the whole file) its sha256. Anything less is damage: a
deleted or truncated file, a stats file cut short. Damage is reported naming the file; `run` redoes a
damaged shard and `export` refuses it.

A shard is never done while a row of it waits for the engine (validate.ENGINE_UNAVAILABLE): its chunks stay
committed parts, each recording its rows' counts and which of its rewrites wait (`Part`), until a run has
them served.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from .. import storage
from . import atomic, layout
from .lock import ShardLock

DONE, PARTIAL, MISSING, DAMAGED = "done", "partial", "missing", "damaged"
FILE_KEY = "file"  # the stats' record of the committed parquet file
ROUND_KEY = "retry_round"  # a done shard's stats: the retry round its failed rows reached (absent: 0)
STATS_KEY = b"rewrite.stats"  # a committed chunk's stats, in its part's parquet metadata
RETRY_KEY = b"rewrite.retry"  # beside them, when there is any: its retry round and its rewrites waiting


@dataclass(frozen=True)
class Part:
    """What a committed chunk (WORK/rewrites/<source>/<shard>.parts/NNNNN.parquet) records besides its rows."""

    stats: dict
    round: int = 0  # the retry round it was committed in (rows.py: rounds of attempts)
    target: int = 0  # the round its shard is on its way to (above `round` when a retry run reopened a done shard)
    pending: tuple = ()  # its rewrites waiting for the engine: (row, rewrite index, attempt to resume at)

    def metadata(self) -> dict[bytes, str]:
        retry = {"round": self.round, "target": self.target, "pending": [list(p) for p in self.pending]}
        return {STATS_KEY: json.dumps(self.stats), **({RETRY_KEY: json.dumps(retry)} if self.round or self.target
                                                       or self.pending else {})}

    @classmethod
    def of(cls, metadata: dict[bytes, bytes] | None) -> "Part":
        """A part's record from its parquet metadata (KeyError, ValueError or TypeError if it has none)."""
        metadata = metadata or {}
        retry = json.loads(metadata.get(RETRY_KEY, b"{}"))
        return cls(json.loads(metadata[STATS_KEY]), int(retry.get("round", 0)), int(retry.get("target", 0)),
                   tuple(tuple(int(x) for x in p) for p in retry.get("pending", ())))

    @property
    def waiting_rows(self) -> int:
        return len({row for row, _, _ in self.pending})


def parts(w: layout.Work, source: str, shard: int) -> list[Part]:
    """The records of a shard's committed chunks (footers only). A part that cannot be read is left out:
    the next run names it and redoes its chunk."""
    found = []
    for path in storage.glob(w.parts(source, shard), "*.parquet"):
        try:
            found.append(Part.of(storage.read_parquet_schema(path).metadata))
        except (pa.ArrowException, OSError, KeyError, TypeError, ValueError):
            continue
    return found


@dataclass(frozen=True)
class ShardCheck:
    state: str  # done | partial | missing | damaged
    stats: dict | None = None  # the shard's stats, when done
    problem: str | None = None  # what is damaged, naming the file


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with storage.open_file(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mark_done(w: layout.Work, source: str, shard: int, stats: dict, facts: dict) -> dict:
    """Write the shard's stats, with the facts of its committed file (`facts`: its name, bytes, rows and
    sha256, taken while it was written): the shard is done from here on."""
    stats = {**stats, FILE_KEY: facts}
    atomic.write_json(w.stats_file(source, shard), stats)
    return stats


def check(w: layout.Work, source: str, shard: int, *, checksum: bool = False) -> ShardCheck:
    """The shard's state; for a done shard, its stats; for a damaged one, what is wrong."""
    stats_path, path = w.stats_file(source, shard), w.rewrite_file(source, shard)
    if not storage.exists(stats_path):
        parts = w.parts(source, shard)
        started = storage.exists(path) or (storage.is_dir(parts) and any(storage.glob(parts, "*.parquet")))
        return ShardCheck(PARTIAL if started else MISSING)
    try:
        stats = json.loads(storage.read_text(stats_path))
        recorded = stats[FILE_KEY]
        size, rows = int(recorded["bytes"]), int(recorded["rows"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return ShardCheck(DAMAGED, problem=f"{stats_path} is not a complete stats file")
    if not storage.exists(path):
        return ShardCheck(DAMAGED, problem=f"{path} is missing")
    found_size = storage.size(path)
    if found_size != size:
        return ShardCheck(DAMAGED, problem=f"{path} has {found_size} bytes, {size} when it was committed")
    try:
        found_rows = storage.parquet_file(path).metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        return ShardCheck(DAMAGED, problem=f"{path} is not a readable parquet file ({e})")
    if found_rows != rows:
        return ShardCheck(DAMAGED, problem=f"{path} has {found_rows} rows, {rows} when it was committed")
    if checksum and sha256(path) != recorded.get("sha256"):
        return ShardCheck(DAMAGED, problem=f"{path} is not the file that was committed (its sha256 differs)")
    return ShardCheck(DONE, stats)


def clear(w: layout.Work, source: str, shard: int) -> None:
    """Remove a shard's outputs (the done marker first), keeping its lock file. Caller holds the shard lock."""
    storage.remove(w.stats_file(source, shard))
    storage.remove(w.rewrite_file(source, shard))
    _remove_parts(w, source, shard)


def still(w: layout.Work, source: str, shard: int, found: ShardCheck) -> bool:
    """Whether a state found earlier still holds as far as the done marker shows (one stat, no read): a
    shard found done still has its stats file, one found not done has none yet. A caller that takes the
    shard's lock after `check` uses it to see whether another process finished or cleared it meanwhile."""
    return storage.exists(w.stats_file(source, shard)) == (found.state not in (MISSING, PARTIAL))


def checks(w: layout.Work, source: str, shards: Sequence[int]) -> dict[int, ShardCheck]:
    """Each shard's state, checked once, for a command to pass down."""
    return {shard: check(w, source, shard) for shard in shards}


def drop_parts(w: layout.Work, source: str, shard: int) -> None:
    """The chunk parts of a done shard go: the join holds their rows, so any left were left by a writer
    killed right after marking the shard done. Caller holds the shard's lock and found it done."""
    _remove_parts(w, source, shard)


def _remove_parts(w: layout.Work, source: str, shard: int) -> None:
    """Remove a shard's parts folder, if any; an error removing it is ignored."""
    storage.remove_tree(w.parts(source, shard), ignore_errors=True)


def tidy_done(w: layout.Work, source: str, found: dict[int, ShardCheck]) -> None:
    """Remove the chunk parts a writer killed right after marking its shard done left, under the
    shard's lock (a shard another process holds is left alone). `found`: the shards' states."""
    for shard, state in found.items():
        parts = w.parts(source, shard)
        if state.state != DONE or not storage.is_dir(parts):
            continue
        lock = ShardLock(w.lock_file(source, shard))
        if lock.acquire():
            with lock:
                if still(w, source, shard, state):
                    drop_parts(w, source, shard)


def pending(found: dict[int, ShardCheck], overwrite: bool = False, retry_failed: bool = False) -> list[int]:
    """The shards of `found` (shard -> state) still to do: all of them with overwrite; with retry_failed,
    done ones with failed rows too."""
    return [s for s, state in found.items()
            if overwrite or state.state != DONE or (retry_failed and state.stats["failed"])]


def pending_shards(work: str | Path, source: str, shards: Sequence[int], overwrite: bool = False,
                   retry_failed: bool = False) -> list[int]:
    """The shards of `shards` that set `source` (its name, as RunConfig.source) still has to do. Reads only."""
    if overwrite:
        return list(shards)
    return pending(checks(layout.Work(work), source, shards), retry_failed=retry_failed)
