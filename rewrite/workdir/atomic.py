"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one."""
from __future__ import annotations

import hashlib
import json
import secrets
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from .. import faults, storage

_unsynced: ContextVar[list[Path] | None] = ContextVar("unsynced", default=None)  # see deferred_sync


def temp_beside(path: Path) -> Path:
    """A random hidden name `.<name>.<16 hex>.tmp` beside `path`, for a file or folder to rename onto it.

    Callers create it with O_EXCL or mkdir (which never take over an existing one) and mode 0o666 or
    0o777, as other tools do, so that the kernel applies the umask (or the folder's default ACL):
    tempfile's mkstemp and mkdtemp make it 0600 or 0700, which keeps a cluster's group out."""
    return path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path` (within
    deferred_sync: renamed, and listed for the caller to sync). For an object in a remote store, `path`
    itself: its upload appears whole when the file written to it closes, or not at all (storage.py)."""
    if storage.is_remote(path):
        yield path
        return
    path = Path(path)
    storage.make_dirs(path.parent)
    tmp_path = temp_beside(path)
    storage.open_file(tmp_path, "xb").close()
    point = f"{path.parent.name}/{path.name}"  # fault-injection names, e.g. "commit:00003.parts/00001.parquet"
    try:
        yield tmp_path
        unsynced = _unsynced.get()
        if unsynced is None:
            storage.sync(tmp_path)
        faults.point(f"commit:{point}")
        storage.rename(tmp_path, path)
        if unsynced is not None:
            unsynced.append(path)
        faults.point(f"committed:{point}")
    except OSError as e:
        if e.filename is None:  # a write error (disk full, say) that names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if storage.exists(tmp_path):
            storage.remove(tmp_path, missing_ok=False)


class Digest:
    """A binary file being written sequentially, and the sha256 and size of what went into it: a shard's
    done marker records them without reading the file back."""

    def __init__(self, file) -> None:
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.file.flush()

    @property
    def closed(self) -> bool:
        return self.file.closed

    def close(self) -> None:
        self.file.close()

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


@contextmanager
def deferred_sync() -> Iterator[list[Path]]:
    """Within it, atomic_path leaves out the fsync and lists the files it committed instead; the caller
    must sync_files them before anything records them as written. For several processes writing big
    files at once: on ext4 an fsync commits the journal and waits for every writer's pending data, so
    processes that each fsync their own files wait on one another; one process syncing all of them,
    while the others write on, does not."""
    token = _unsynced.set([])
    try:
        yield _unsynced.get()
    finally:
        _unsynced.reset(token)


def record_unsynced(paths: list[Path]) -> None:
    """Files (or folders) written without atomic_path that must be durable with the rest: listed for the
    caller within deferred_sync, else synced now."""
    unsynced = _unsynced.get()
    if unsynced is None:
        sync_files(paths)
    else:
        unsynced.extend(paths)


def sync_files(paths: list[str | Path]) -> None:
    """fsync each file (after deferred_sync)."""
    for path in paths:
        storage.sync(path)


def write_json(path: str | Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        storage.write_text(tmp, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        storage.write_text(tmp, text)


def create_json(path: str | Path, data: dict) -> bool:
    """Write `path` whole only if it does not exist yet; False when another writer made it first (then
    its file stays as it was). For records that the first of several racing writers sets."""
    path = Path(path)
    storage.make_dirs(path.parent)
    tmp = temp_beside(path)
    f = storage.open_file(tmp, "x", encoding="utf-8")
    try:
        with f:
            f.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        storage.sync(tmp)
        point = f"{path.parent.name}/{path.name}"  # the same fault-injection names as atomic_path's
        faults.point(f"commit:{point}")
        try:
            storage.link(tmp, path)  # unlike a rename, never replaces an existing file
        except FileExistsError:
            return False
        faults.point(f"committed:{point}")
        return True
    finally:
        storage.remove(tmp)
