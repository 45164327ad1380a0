"""A set's run record, WORK/rewrites/<set>/settings.json: the settings its rewrites were made with (the
run's fingerprint), written once by the first run and compared by every later one."""
from __future__ import annotations

import json
import time

from .. import storage
from . import layout


class RecordError(RuntimeError):
    """A damaged run record: the message names the file and what to do."""


LEFTOVER_AGE = 600  # seconds after which a temporary settings file is taken for a killed writer's


def recorded_settings(w: layout.Work, source: str) -> dict | None:
    """The source's recorded fingerprint (None before its first run); a damaged file is an error naming it."""
    path = w.settings_file(source)
    try:
        recorded = json.loads(storage.read_text(path))
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
        return recorded
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"{path} is damaged ({e}): run with --overwrite (and every shard with output named in "
                       "--shards) to start this source over") from None


def differences(recorded: dict, fingerprint: dict) -> str:
    keys = sorted(k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k))
    return "; ".join(f"{k}: {recorded.get(k)!r} then, {fingerprint.get(k)!r} now" for k in keys)


def matches(w: layout.Work, source: str, fingerprint: dict) -> bool:
    try:
        return recorded_settings(w, source) == fingerprint
    except RecordError:
        return False


def clean_leftovers(w: layout.Work, source: str) -> None:
    path = w.settings_file(source)
    for leftover in storage.glob(path.parent, f".{path.name}.*.tmp"):
        # A commit cut short by a kill; a young one may be another task's commit in progress.
        if time.time() - storage.mtime(leftover) > LEFTOVER_AGE:
            storage.remove(leftover)
