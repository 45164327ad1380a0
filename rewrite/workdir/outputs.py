"""The own-folder rule: what a command writes (an export, extracted images, a report, a work dir) goes
to a folder of its own, never the folder it reads, one of the plan's inputs, inside them or holding
them. One rule; each command words its refusal in its own error."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import storage
from . import layout
from .manifest import Manifest


def relation(out: Path, folder: Path) -> str | None:
    """How `out` stands to `folder` (both resolved): "is", "lies inside", "holds", or None when apart. A
    remote location and a local one are always apart; two remote ones compare as URLs."""
    if storage.is_remote(out) or storage.is_remote(folder):
        a, b = str(out).rstrip("/"), str(folder).rstrip("/")
        if not (storage.is_remote(out) and storage.is_remote(folder)):
            return None
        return "is" if a == b else "lies inside" if a.startswith(b + "/") else "holds" if b.startswith(a + "/") else None
    if out == folder:
        return "is"
    if out.is_relative_to(folder):
        return "lies inside"
    if folder.is_relative_to(out):
        return "holds"
    return None


def read_by(w: layout.Work, manifest: Manifest) -> list[tuple[str, Path]]:
    """The folders a command over this work dir reads: the work dir and the plan's inputs."""
    return [("the work dir", w.root.resolve())] + [("the input", storage.location(p)) for p in manifest.inputs]


def overlap(out: Path, read: Sequence[tuple[str, Path]], option: str, what_goes: str) -> str | None:
    """The refusal of `out` (resolved) when it overlaps one of the `read` folders; None when it is apart."""
    for what, folder in read:
        found = relation(out, folder)
        if found:
            return f"{option} {out} {found} {what} {folder}: {what_goes} goes to a folder of its own"
    return None
