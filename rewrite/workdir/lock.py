"""Locks, all of them flocks: one writer per shard (ShardLock, an exclusive flock on
WORK/rewrites/<source>/<shard>.lock), and the shared/exclusive lock (FlockFile) of a set's runs and of an
export folder.

The kernel drops a flock when its holder dies (SIGKILL, OOM, a node reboot for a lock on a local
disk), so a lock left by a dead process is simply taken by the next worker; there is no stale state to
clean up. The holder writes who it is into the file so the one turned away can say who has the shard.
The lock file stays after release: removing it would let a waiter lock a file no longer in the folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from .. import storage


class ShardLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._releasing = threading.Lock()

    def acquire(self) -> bool:
        """Take the lock if no live process holds it; False when another one does."""
        storage.make_dirs(self.path.parent)
        # 0o666 less the umask: every worker opens it read-write, and on a cluster they may be a group's users.
        fd = storage.open_fd(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "slurm_job": os.environ.get("SLURM_JOB_ID")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError:
            pass  # who holds it is for messages only (a full disk, say, is met by the next write)
        self._fd = fd
        return True

    def holder(self) -> str:
        """Who holds the lock, as written by the holder."""
        try:
            h = json.loads(storage.read_text(self.path) or "{}")
        except (OSError, json.JSONDecodeError):
            return "another process"
        return f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')}" if h else "another process"

    def release(self) -> None:
        """Idempotent, and safe from two threads at once (a streaming run's writer releases a shard it
        finished; the run releases those it did not, on its way out)."""
        with self._releasing:
            fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "ShardLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FlockFile:
    """A lock file held shared or exclusive (flock), dropped by the kernel when its holder dies: the one
    shared/exclusive lock. Every run of a set holds WORK/rewrites/<set>/source.lock shared while it runs,
    and starting the set over (which removes every shard's output) needs it exclusive, so it never
    happens beside a live writer; an export folder's lock and mutex are two more (exports/publish.py)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._open()

    def _open(self) -> int:
        if self._fd is None:
            storage.make_dirs(self.path.parent)
            self._fd = storage.open_fd(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return self._fd

    def shared(self) -> None:
        """Hold it shared, waiting while another process holds it exclusive."""
        fcntl.flock(self._open(), fcntl.LOCK_SH)

    def hold(self) -> None:
        """Hold it exclusive, waiting for the others."""
        fcntl.flock(self._open(), fcntl.LOCK_EX)

    def exclusive(self) -> bool:
        """Hold it exclusive if no other process holds it; False (and then not held at all) otherwise."""
        fd = self._open()
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def unlock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self) -> None:
        """Unlock and close it (a later call opens it again)."""
        if self._fd is not None:
            self.unlock()
            os.close(self._fd)
            self._fd = None
