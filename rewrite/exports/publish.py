"""An output folder written all at once: a reader sees the whole export or none of it.

Every export writes into OUT/.rewrite-staging/ first (hidden: dataset loaders skip it), one file at a
time, each committed atomically, so a killed export leaves finished files a rerun keeps. Once all are
there, the published entries (say `data/` and `README.md`) are moved into place by renames. A marker,
OUT/.rewrite-export.json, records what the tool wrote there: only those files are ever replaced or
removed, and a folder holding anything else is refused.

In an object store (OUT a URL: s3://bucket/dataset) there is no rename to publish with: the published
files are written at their own names (each object appears whole or not at all: its upload completes
when it is closed), only the export's scratch goes to the staging prefix, and the marker, written last,
is the commit point. From the moment an export starts writing until it is published, the marker names
no published export; the README's load commands read the marker and the files it lists. The locks live
in the work dir then (WORK/exports/<hash of OUT>/): a bucket has no flock.

Several processes may stage the same export at once (array tasks exporting their own shards): each holds
OUT/.rewrite-export.lock shared while it writes. Starting another export over the staged files, and
publishing, need it exclusive, so neither happens while a writer is at work. Marker changes are made
under a short exclusive lock on OUT/.rewrite-export.mutex.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import storage
from ..workdir import atomic
from ..workdir.lock import FlockFile

MARKER = ".rewrite-export.json"
LOCK = ".rewrite-export.lock"  # held shared by every process staging OUT; exclusive to reset or publish it
MUTEX = ".rewrite-export.mutex"  # held briefly around every change of the marker
STAGING = ".rewrite-staging"
REPLACED = "replaced"  # inside the staging folder: the previous export, until the new one is in place


class PublishError(ValueError):
    pass


class Busy(RuntimeError):
    """Another export is staging OUT now: not bad input, a moment to wait (the CLI exits 75)."""


def _relative(path, root) -> str:
    """`path` below `root` as a name relative to it (local paths and URLs alike)."""
    return str(path)[len(str(root).rstrip("/")) + 1:]


def _remove_files(root: Path, names: Sequence[str]) -> None:
    """Remove the listed files under root (and our temporary files beside them), then the folders this
    leaves empty; anything else stays. (In an object store a folder goes with its last object.)"""
    if storage.is_remote(root):
        for name in names:
            storage.remove(root / name)
        return
    folders = {root}
    for name in names:
        path = root / name
        storage.remove(path)
        folders.update(p for p in path.parents if p.is_relative_to(root))
    _remove_temps(root, names)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            storage.remove_dir(folder)
        except OSError:
            pass  # not empty (someone else's file) or gone


def _remove_temps(root: Path, names: Sequence[str]) -> None:
    """Our temporary files beside the listed files (a writer killed mid-file leaves one behind; an upload
    cut short leaves no object)."""
    if storage.is_remote(root):
        return
    for name in names:
        path = root / name
        for tmp in storage.glob(path.parent, f".{path.name}.*.tmp") if storage.is_dir(path.parent) else ():
            storage.remove(tmp)


@dataclass(frozen=True)
class Placement:
    """Where each file of an export is written: under the staging folder, or, for the published files of
    an export to a remote store, in place under OUT. A plain value, so export workers are handed it."""
    staging: Path
    out: Path
    in_place: frozenset = frozenset()

    def __call__(self, name: str) -> Path:
        return (self.out if name in self.in_place else self.staging) / name


class OutputFolder:
    """OUT, about to receive an export identified by `export_id` made of `files` (paths relative to OUT)."""

    def __init__(self, out: str | Path, export_id: str, files: Sequence[str], *, overwrite: bool,
                 scratch: Sequence[str] = (), content: str | None = None, locks: Path | None = None):
        """`files` are published; `scratch` files are staged for the export's own use and removed once it
        is published. `content`: what the files are made from (an export already published with other
        content is not up to date). `locks`: the folder of the locks, when not OUT (a remote OUT)."""
        self.out = storage.location(out) if isinstance(out, str) else out
        self.export_id, self.files, self.scratch = export_id, list(files), list(scratch)
        self.direct = storage.is_remote(self.out)  # published files written in place (no rename to publish with)
        self.content = content
        self.staging = self.out / STAGING
        self.placement = Placement(self.staging, self.out, frozenset(self.files) if self.direct else frozenset())
        if storage.exists(self.out) and not storage.is_dir(self.out):
            raise PublishError(f"--out {self.out} is a file, not a folder")
        self._refuse_foreign_folder()
        storage.make_dirs(self.out)
        locks = self.out if locks is None else locks
        storage.make_dirs(locks)
        self._lock, self._mutex = FlockFile(locks / LOCK), FlockFile(locks / MUTEX)
        self._mutex.hold()
        try:
            self.marker = self._read_marker()
            published = self.marker.get("published")
            self.up_to_date = (published == export_id and self.marker.get("content") == content
                               and not self.marker.get("staging") and self._intact())
            if published and published != export_id and not overwrite:
                raise PublishError(f"{self.out} holds an earlier export with other rewrites or settings: choose "
                                   "another --out, or pass --overwrite to replace it")
            self._check_only_ours()
        except BaseException:
            self.close()
            raise
        # The mutex stays held until begin() (or close()): the marker read above cannot change meanwhile.

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _refuse_foreign_folder(self) -> None:
        if not storage.is_dir(self.out) or storage.exists(self.out / MARKER):
            return
        others = [name for name in storage.list_dir(self.out) if name not in (LOCK, MUTEX)]
        if others:
            raise PublishError(f"{self.out} is not empty and was not written by `rewrite export` "
                               f"({', '.join(others[:5])}): choose a new or empty --out; nothing there is removed or replaced")

    def _exclusive(self) -> bool:
        """Whether this process alone now holds OUT (no other process stages it); call with the mutex held."""
        return self._lock.exclusive()

    def close(self) -> None:
        for name in ("_lock", "_mutex"):
            lock = getattr(self, name, None)
            if lock is not None:
                lock.release()
                setattr(self, name, None)

    def _intact(self) -> bool:
        """The published files are still there with the sizes they were published with."""
        sizes = self.marker.get("sizes", {})
        return all(storage.is_file(self.out / f) and storage.size(self.out / f) == sizes.get(f) for f in self.files)

    def _read_marker(self) -> dict:
        path = self.out / MARKER
        if not storage.exists(path):
            return {}
        try:
            marker = json.loads(storage.read_text(path))
            if not isinstance(marker.get("files", []), list):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise PublishError(f"{path} is damaged: remove {self.out} yourself, or choose another --out") from None
        return marker

    def _check_only_ours(self) -> None:
        """The published folders we would replace hold only files an export wrote (and, when files are
        written in place, no name we would write is someone else's)."""
        ours = set(self.marker.get("files", [])) | set(self.marker.get("staging_files", []))
        if self.direct:
            there = {_relative(p, self.out) for p in storage.glob(self.out, "**/*")}
            theirs = sorted(f for f in self.files if f in there and f not in ours)
            if theirs:
                raise PublishError(f"{self.out / theirs[0]} was not written by `rewrite export`: choose another "
                                   "--out (nothing there is removed or replaced)")
        for top in {Path(f).parts[0] for f in self.files if len(Path(f).parts) > 1}:
            folder = self.out / top
            if not storage.is_dir(folder):
                continue
            for path in storage.glob(folder, "**/*"):
                if _relative(path, self.out) not in ours and storage.is_file(path):
                    raise PublishError(f"{path} was not written by `rewrite export`: move it out of {folder}, "
                                       "or choose another --out (nothing there is removed or replaced)")

    def _write_marker(self, **changes) -> None:
        self.marker = {**self.marker, **changes}
        atomic.write_json(self.out / MARKER, self.marker)

    def begin(self) -> None:
        """Start (or join, or resume) staging this export; the staged files of an unfinished other one are
        removed, which only a process alone in OUT may do."""
        if self.marker.get("staging") != self.export_id:
            if not self._exclusive():
                self.close()
                raise Busy(f"another export is writing {self.out} now: wait for it, or choose another --out")
            _remove_files(self.staging, self.marker.get("staging_files", [])
                          + [f"{REPLACED}/{f}" for f in self.marker.get("files", [])])
            # Written in place, the files replace the published ones as they go: from now on OUT holds no
            # whole export, and the marker says so.
            changes = {"published": None, "publishing": True} if self.direct else {"publishing": False}
            self._write_marker(staging=self.export_id, staging_files=self.files + self.scratch, **changes)
        storage.make_dir(self.staging, exist_ok=True)
        self._lock.shared()  # from exclusive, or from none
        self._mutex.unlock()

    def alone(self) -> bool:
        """After staging: whether every other process staging OUT has finished, so that this one may
        write the final files and publish (the mutex is then held until close())."""
        self._mutex.hold()
        self.marker = self._read_marker()  # another process may have published meanwhile: see published()
        if self._exclusive():
            return True
        self._lock.shared()
        self._mutex.unlock()
        return False

    def published(self) -> bool:
        """Whether this export is the one published in OUT."""
        return self.marker.get("published") == self.export_id and not self.marker.get("staging")

    def path(self, name: str) -> Path:
        """Where file `name` is staged (a published file written in place: at its own name)."""
        return self.placement(name)

    def written(self, name: str) -> bool:
        """Whether this export has committed `name` already (a rerun keeps it): staged, or moved into
        place by a publish that was cut short. (Written in place, a file of the export it replaces may
        have the name: the caller compares it with its record.)"""
        if storage.is_file(self.path(name)):
            return True
        if self.direct:
            return False
        top = Path(name).parts[0]
        return (bool(self.marker.get("publishing")) and not storage.exists(self.staging / top)
                and storage.is_file(self.out / name))

    def publish(self, record: dict | None = None) -> None:
        """Move the staged export into place; the previous export's files go, nothing else does.
        `record`: what the export is (its format, sets and columns), kept in the marker for its readers."""
        missing = [f for f in self.files if not self.written(f)]
        if missing:
            raise PublishError(f"cannot publish {self.out}: {', '.join(missing[:3])} not written")
        old = self.marker.get("files", [])
        if self.direct:
            self._publish_in_place(old, record)
            return
        _remove_temps(self.staging, self.files)  # left by writers killed mid-file: they must not be published
        self._write_marker(published=None, publishing=True)  # until the end, OUT holds no whole export
        replaced = self.staging / REPLACED
        for top in dict.fromkeys(Path(f).parts[0] for f in self.files):
            staged, target = self.staging / top, self.out / top
            if not storage.exists(staged):
                continue  # moved in by an earlier publish that was cut short
            if storage.is_dir(target):
                _remove_files(replaced / top, [f[len(top) + 1:] for f in old if Path(f).parts[0] == top])
                storage.make_dir(replaced, exist_ok=True)
                storage.rename(target, replaced / top)
            storage.rename(staged, target)
        sizes = {f: storage.size(self.out / f) for f in self.files}
        self._write_marker(published=self.export_id, content=self.content, files=self.files, sizes=sizes,
                           staging=None, staging_files=[], publishing=False, **({"export": record} if record else {}))
        _remove_files(self.staging, [f"{REPLACED}/{f}" for f in old] + self.scratch)

    def _publish_in_place(self, old: Sequence[str], record: dict | None) -> None:
        """The files are in place already: the previous export's files that this one has not replaced go,
        then the marker names this export (the commit point), then the scratch goes."""
        _remove_files(self.out, [f for f in old if f not in self.files])
        sizes = {f: storage.size(self.out / f) for f in self.files}
        self._write_marker(published=self.export_id, content=self.content, files=self.files, sizes=sizes,
                           staging=None, staging_files=[], publishing=False, **({"export": record} if record else {}))
        _remove_files(self.staging, self.scratch)
