"""Fault injection: named points where a test run kills itself with SIGKILL.

`REWRITE_KILL_AT=name` (or `name@n` for its n-th time) makes the process kill itself at that point,
so a test can stop a real run at an exact moment (half-way through a commit, say) that a timer from
outside would only hit by luck; `REWRITE_KILL_SIGNAL=TERM` (or any signal name) sends that signal instead
of SIGKILL, as a scheduler asking the job to stop would. Unset, a point costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "REWRITE_KILL_AT"
SIGNAL_ENV = "REWRITE_KILL_SIGNAL"
_seen: Counter = Counter()


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _seen[name] += 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.Signals[f"SIG{os.environ.get(SIGNAL_ENV, 'KILL')}"])
