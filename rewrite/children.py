"""Processes this tool starts must not outlive it: a worker left running holds the locks of the job it
served (an export's folder lock, say), so every later run would wait on it or refuse."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """In a child: the kernel kills it when the process that started it ends, however that ends (SIGKILL
    included). `parent` is that process's pid, read before the fork: if it ended already, exit now."""
    if hasattr(os, "sched_getaffinity"):  # Linux; elsewhere a worker can still outlive a killed parent
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def worker_signals() -> None:
    """In a worker: stopping is the parent's decision. Ctrl-C reaches the whole process group, so the
    worker ignores SIGINT; SIGTERM ends it at once (the parent sends it when it stops)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, theirs, ...) now, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += parents.get(child, [])
    return found


# The guardian: reads its end of a pipe until it breaks, then kills the processes it was given (each
# checked by its start time, so a reused pid is left alone).
_GUARDIAN = """
import os, signal, sys
fd, targets = int(sys.argv[1]), [tuple(map(int, t.split(':'))) for t in sys.argv[2:]]
while os.read(fd, 4096):
    pass
for pid, started in targets:
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            if int(f.read().rsplit(b')', 1)[1].split()[19]) == started:
                os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
"""


class Guard:
    """Processes a library started for us (vLLM's engine core and workers) that must end with this
    process: a small guardian process holds the read end of a pipe whose write end only this process
    has; when this process ends, however (SIGKILL included), or closes the guard, the pipe breaks and
    the guardian kills them. (A library's own children cannot be given PR_SET_PDEATHSIG from here.)"""

    def __init__(self, pids: list[int]):
        import subprocess
        import sys

        targets = [f"{pid}:{started}" for pid in pids if (started := _start_time(pid)) is not None]
        read, self._write = os.pipe()
        try:
            self._guardian = subprocess.Popen([sys.executable, "-c", _GUARDIAN, str(read), *targets], pass_fds=[read],
                                              start_new_session=True, stdin=subprocess.DEVNULL)
        finally:
            os.close(read)

    def close(self) -> None:
        """The guarded processes should have ended by now: the guardian kills any that has not, and ends."""
        if self._write is not None:
            os.close(self._write)
            self._write = None
            self._guardian.wait()


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
