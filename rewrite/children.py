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
