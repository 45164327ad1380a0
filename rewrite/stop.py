"""Graceful stop: SIGTERM or SIGUSR1 (a scheduler's warning before it kills or requeues a job), or SIGINT.

A signal that comes while a chunk is in flight (inside `deferred()`) lets that chunk finish and commit,
then the run takes no new chunk and ends with StopRequested (the CLI exits with EXIT_CODE). If that
chunk is not committed within `within` seconds, or a second signal comes, the run stops at once: that
chunk's work is dropped, and everything committed before it stays. A signal at any other moment
(loading the model, reading input) stops the run at once: there is nothing to commit. Either way a
rerun resumes from the committed chunks.
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request, nothing lost, run again to resume
STOP_WITHIN = 60  # seconds the chunk in flight gets to finish after the signal
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

REPEAT_AFTER = 2.0  # seconds: a signal again sooner is the same one delivered twice (Slurm signals the
# whole job, and the batch script forwards it too), not a second request

_requested: int | None = None
_requested_at = 0.0
_within = STOP_WITHIN
_installed = False
_deferring = False


class StopRequested(Exception):
    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _on_signal(signum: int, frame) -> None:
    global _requested, _requested_at
    if _requested is not None:
        if time.monotonic() - _requested_at > REPEAT_AFTER:  # asked twice: stop now
            raise StopRequested(signum)
        return
    _requested, _requested_at = signum, time.monotonic()
    if not _deferring:
        raise StopRequested(signum)
    signal.alarm(max(1, int(_within)))


def _on_alarm(signum: int, frame) -> None:
    raise StopRequested(_requested or signum)


@contextmanager
def handling(within: float = STOP_WITHIN) -> Iterator[None]:
    """Install the handlers for the duration of a run (main thread only; elsewhere, or when installed
    already by an enclosing caller, a no-op)."""
    global _requested, _within, _installed
    if threading.current_thread() is not threading.main_thread() or _installed:
        yield
        return
    _requested, _within, _installed = None, within, True
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        yield
    finally:
        signal.alarm(0)
        for s, h in previous.items():
            signal.signal(s, h)
        _requested, _installed = None, False


@contextmanager
def deferred() -> Iterator[None]:
    """Work a stop request waits for (a chunk and its commit), up to `within` seconds. Signals reach the
    main thread only, so elsewhere (a streaming run's writer) this is a no-op."""
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = outer


def check() -> None:
    """Raise StopRequested if a stop was asked for (called between chunks)."""
    if _requested is not None:
        raise StopRequested(_requested)


def requested() -> bool:
    """Whether a stop was asked for (for a thread that must not raise: it takes no new work)."""
    return _requested is not None
