"""Names of files and columns, in one place.

A work dir holds the plan and everything the runs write:

    WORK/manifest.json                          the shard plan (written by `rewrite shard`)
    WORK/inputs/*.parquet                       CSV/TSV/text inputs converted once to parquet
    WORK/rewrites/<source>/<shard>.parquet      key, rewrite column(s), status, reason (same row order)
    WORK/rewrites/<source>/<shard>.parts/       committed chunks of a shard still being written
    WORK/rewrites/<source>/<shard>.stats.json   written last: marks the shard done
    WORK/rewrites/<source>/<shard>.lock         held (flock) by the one process writing the shard
    WORK/rewrites/<source>/source.lock          held shared by every run of the source; exclusive to start it over
    WORK/rewrites/<source>/settings.json        the fingerprint every run of the source must match
    WORK/exports/<hash of OUT>/                 the locks of exports to a remote OUT (a bucket has no flock)

A source folder is one that holds a settings.json; anything else under rewrites/ is not ours to read.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from .. import storage

KEY = "key"
CAPTION = "caption"
STATUS = "status"
REASON = "reason"
ATTEMPTS = "attempts"

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"  # null or blank caption: nothing to rewrite


def shard_id(shard: int) -> str:
    return f"{shard:05d}"


def rewrite_column(index: int, num_rewrites: int) -> str:
    """Sidecar column of rewrite `index`: `rewrite`, or `rewrite_0`, `rewrite_1`, ... when n > 1."""
    return "rewrite" if num_rewrites == 1 else f"rewrite_{index}"


def suffixed(column: str, index: int, num_rewrites: int) -> str:
    return column if num_rewrites == 1 else f"{column}_{index}"


EXPORT_PREFIX = "caption_"  # of every rewrite column of an export


def export_column(source: str, index: int, num_rewrites: int) -> str:
    """Column of a rewrite in an exported dataset: `caption_<source>` (`caption_<source>_<i>` when n > 1)."""
    return suffixed(f"{EXPORT_PREFIX}{source}", index, num_rewrites)


def export_data_file(shard: int, num_shards: int) -> str:
    """Hugging Face's naming: data/train-00000-of-00128.parquet."""
    return f"data/train-{shard:05d}-of-{num_shards:05d}.parquet"


REMOTE_WORK_DIR = ("the work dir needs a filesystem: its runs take locks (flock) and commit by atomic renames, which "
                   "object stores lack. Put it on a local disk or the cluster's shared filesystem, and keep the "
                   "inputs and the export in the bucket (both may be URLs)")


def local_work_dir(text: "str | Path", option: str = "--work") -> Path:
    """A work dir as given, refused when it is a URL of a remote store."""
    if storage.is_remote(text):
        raise ValueError(f"{option} {storage.redact(text)}: {REMOTE_WORK_DIR}")
    return Path(text)


class Work:
    """Paths inside a work dir."""

    def __init__(self, root: "str | Path | Work"):
        self.root = root.root if isinstance(root, Work) else local_work_dir(root)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    def export_state(self, out) -> Path:
        """Where exports to a remote OUT keep their locks (a bucket has no flock): one folder per OUT."""
        return self.root / "exports" / hashlib.sha256(storage.redact(out).rstrip("/").encode()).hexdigest()[:16]

    def rewrites(self, source: str) -> Path:
        return self.root / "rewrites" / source

    def rewrite_file(self, source: str, shard: int) -> Path:
        return self.rewrites(source) / f"{shard_id(shard)}.parquet"

    def parts(self, source: str, shard: int) -> Path:
        return self.rewrites(source) / f"{shard_id(shard)}.parts"

    def stats_file(self, source: str, shard: int) -> Path:
        return self.rewrites(source) / f"{shard_id(shard)}.stats.json"

    def lock_file(self, source: str, shard: int) -> Path:
        return self.rewrites(source) / f"{shard_id(shard)}.lock"

    def source_lock_file(self, source: str) -> Path:
        return self.rewrites(source) / "source.lock"

    def settings_file(self, source: str) -> Path:
        return self.rewrites(source) / "settings.json"

    def _rewrite_entries(self) -> list[Path]:
        base = self.root / "rewrites"
        return [base / name for name in storage.list_dir(base)] if storage.is_dir(base) else []

    def sources_present(self) -> list[str]:
        """Sources that have been run: folders under rewrites/ holding a settings.json."""
        return [p.name for p in self._rewrite_entries() if storage.is_file(p / "settings.json")]

    def strays(self) -> list[Path]:
        """Entries under rewrites/ that are not a source folder (ignored, and reported by `status`)."""
        return [p for p in self._rewrite_entries() if not storage.is_file(p / "settings.json")]
