"""The one seam between the tool and the files it reads and writes: every open, list, stat, rename and
delete goes through these functions, so putting another store behind them (object storage, say) is a
change here. A location is a local path, or a URL of an fsspec store (s3://, gs://, hf://, https://),
which remote.py reads and writes (`location` tells them apart). The work dir's locks and atomic renames
need a real filesystem: `open_fd`, `link`, `mode` and their kind are local only, and refuse a URL.

What stays outside: path arithmetic (`Path.name`, `/`, `resolve`), the package's own files (read
through importlib.resources, see resources.py) and the model cache, which the engines' libraries open
themselves."""
from __future__ import annotations

import os
import shutil
import stat as stat_modes
from pathlib import Path
from typing import IO

from . import remote

PathLike = str | os.PathLike
RemoteError = remote.RemoteError
is_remote = remote.is_remote
redact = remote.redact


def location(text: PathLike):
    """A location as the user gave it: a Path, or for a URL of a remote store a UPath (Path would turn
    `s3://b/k` into `s3:/b/k`)."""
    if isinstance(text, str) and remote.is_remote(text):
        return remote.location(text)
    return text if not isinstance(text, str) else Path(text)


def _local_only(path: PathLike, what: str) -> None:
    if remote.is_remote(path):
        raise RemoteError(f"{redact(path)}: {what} needs a local or shared filesystem, not an object store")


def open_file(path: PathLike, mode: str = "rb", *, encoding: str | None = None,
              newline: str | None = None, buffering: int = -1) -> IO:
    """Open a file: 'r'/'rb' to read, 'w'/'wb' to write, 'x'/'xb' to create one that must not exist
    yet (mode 0o666, so the umask or the folder's default ACL applies), 'r+b' to update in place."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    if remote.is_remote(path):
        return _open_remote(path, mode, encoding, newline, buffering)
    return open(path, mode, buffering, encoding=encoding, newline=newline)


def _open_remote(path, mode: str, encoding: str | None, newline: str | None, buffering: int) -> IO:
    """Reading streams the object (buffering=0: one request per read, for reads of headers here and
    there); writing is an upload that appears whole when closed, or not at all (see remote.Upload)."""
    if mode.startswith("r") and "+" not in mode:
        return remote.open_read(path, ranges=buffering == 0, encoding=encoding, newline=newline)
    if mode.rstrip("bt") in ("w", "x"):
        upload = remote.Upload(path, exclusive=mode.startswith("x"))
        return upload if "b" in mode else remote.TextUpload(upload, encoding)
    raise RemoteError(f"{redact(path)}: mode {mode!r} needs a local file (an object is written whole)")


def open_fd(path: PathLike, flags: int, mode: int = 0o666) -> int:
    """A raw descriptor, for the locks (flock) and the tar copy (pread/sendfile); local files only."""
    _local_only(path, "a lock or descriptor")
    return os.open(path, flags, mode)


def read_bytes(path: PathLike) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: PathLike) -> str:
    with open_file(path, "r") as f:
        return f.read()



def write_text(path: PathLike, text: str) -> None:
    with open_file(path, "w") as f:
        f.write(text)


def mode(path: PathLike) -> int:
    """The permission bits of a file or folder."""
    _local_only(path, "a file mode")
    return stat_modes.S_IMODE(os.stat(path).st_mode)


def set_mode(path: PathLike, bits: int) -> None:
    _local_only(path, "a file mode")
    os.chmod(path, bits)


def link_target(path: PathLike) -> Path | None:
    """Where a symlink points, or None when `path` is not one."""
    if remote.is_remote(path):
        return None
    return Path(os.readlink(path)) if os.path.islink(path) else None


def arrow_file(path: PathLike):
    """A pyarrow NativeFile for reading, for the readers that take one (random access, no Python layer)."""
    import pyarrow as pa
    if remote.is_remote(path):
        return remote.arrow_file(path)
    return pa.OSFile(os.fspath(path))


def mtime(path: PathLike) -> float:
    """When the file was last changed, in seconds since the epoch."""
    _local_only(path, "a modification time")
    return os.stat(path).st_mtime


def size(path: PathLike) -> int:
    if remote.is_remote(path):
        return remote.info(path)["size"]
    return os.stat(path).st_size


def exists(path: PathLike) -> bool:
    if remote.is_remote(path):
        return remote.exists(path)
    return os.path.exists(path)


def is_file(path: PathLike) -> bool:
    if remote.is_remote(path):
        return remote.is_file(path)
    return os.path.isfile(path)


def is_dir(path: PathLike) -> bool:
    if remote.is_remote(path):
        return remote.is_dir(path)
    return os.path.isdir(path)


def list_dir(path: PathLike) -> list[str]:
    """The names in a folder, sorted."""
    if remote.is_remote(path):
        return remote.list_dir(path)
    return sorted(os.listdir(path))


def glob(folder: PathLike, pattern: str) -> list[Path]:
    """The paths under `folder` matching `pattern` (pathlib's glob syntax, `**` included), sorted."""
    if remote.is_remote(folder):
        return remote.glob(folder, pattern)
    return sorted(Path(folder).glob(pattern))


def glob_pattern(pattern: str, recursive: bool = True) -> list[Path]:
    """The paths matching a pattern a user gave (with `recursive`, `**` across folders), sorted; the
    shell's rules: `*` matches no hidden name."""
    import glob as globbing
    if remote.is_remote(pattern):
        return remote.glob_pattern(pattern)
    return sorted(Path(p) for p in globbing.glob(pattern, recursive=recursive))


def readable(path: PathLike) -> bool:
    """Whether this process may read the file (an unreadable input is named at planning, not mid-run). A
    remote one is not looked up again: planning reads it next, and a refusal raises RemoteError there."""
    if remote.is_remote(path):
        return True
    return os.access(path, os.R_OK)



def make_dirs(path: PathLike) -> None:
    """Make a folder and its parents; nothing when it is there (nor in an object store: prefixes are implicit)."""
    if remote.is_remote(path):
        return
    os.makedirs(path, exist_ok=True)


def make_dir(path: PathLike, exist_ok: bool = False) -> None:
    """Make one folder, not its parents. Without `exist_ok` it must not exist yet (FileExistsError
    otherwise): a claim no one else holds; with it, a folder already there is fine (a file is not)."""
    if remote.is_remote(path):
        if not exist_ok:
            _local_only(path, "claiming a folder")
        return
    try:
        os.mkdir(path)
    except FileExistsError:
        if not (exist_ok and os.path.isdir(path)):
            raise


def rename(src: PathLike, dst: PathLike) -> None:
    """Rename atomically, replacing `dst` if it is a file (or an empty folder); local only (an object store
    has none: an export publishes there by its record, see exports/publish.py)."""
    _local_only(src, "a rename")
    os.replace(src, dst)


def link(src: PathLike, dst: PathLike) -> None:
    """A second name for `src`; FileExistsError when `dst` exists (unlike rename, never replaces)."""
    _local_only(src, "a hard link")
    os.link(src, dst)


def remove(path: PathLike, missing_ok: bool = True) -> None:
    if remote.is_remote(path):
        remote.remove(path, missing_ok)
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def remove_dir(path: PathLike) -> None:
    """Remove an empty folder (in an object store, nothing: a prefix goes with its last object)."""
    if remote.is_remote(path):
        return
    os.rmdir(path)


def remove_tree(path: PathLike, missing_ok: bool = True, ignore_errors: bool = False) -> None:
    """Remove a folder and everything in it; with `ignore_errors`, as much of it as can go, silently (a
    clean-up after a failure, whose own error is the one to report)."""
    if remote.is_remote(path):
        try:
            remote.remove_tree(path)
        except RemoteError:
            if not ignore_errors:
                raise
        return
    if missing_ok and not os.path.lexists(path):
        return
    shutil.rmtree(path, ignore_errors=ignore_errors)


def sync(path: PathLike) -> None:
    """Make a file's (or folder's) contents durable: fsync through a descriptor of its own (an object is
    durable once its upload completes)."""
    if remote.is_remote(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parquet_file(path: PathLike, **options):
    """A pyarrow ParquetFile (of a path, or of a file already open): its footer is read now, row groups
    when asked for."""
    import pyarrow.parquet as pq
    if remote.is_remote(path):
        return pq.ParquetFile(remote.arrow_file(path), **options)
    return pq.ParquetFile(path if hasattr(path, "read") else os.fspath(path), **options)


def read_parquet(path: PathLike, **options):
    """A whole parquet file (or the columns asked for) as a pyarrow Table."""
    import pyarrow.parquet as pq
    if remote.is_remote(path):
        return pq.read_table(remote.arrow_file(path), **options)
    return pq.read_table(os.fspath(path), **options)


def read_parquet_schema(path: PathLike):
    import pyarrow.parquet as pq
    if remote.is_remote(path):
        return pq.read_schema(remote.arrow_file(path))
    return pq.read_schema(os.fspath(path))


def parquet_writer(path: PathLike, schema, **options):
    """A pyarrow ParquetWriter onto `path` (a temporary path that atomic.py commits, or a file object)."""
    import pyarrow.parquet as pq
    if remote.is_remote(path):
        return remote.parquet_writer(path, schema, **options)
    return pq.ParquetWriter(path if hasattr(path, "write") else os.fspath(path), schema, **options)


def write_parquet(table, path: PathLike, **options) -> None:
    import pyarrow.parquet as pq
    if remote.is_remote(path):
        with remote.Upload(path) as upload:
            pq.write_table(table, upload, **options)
        return
    pq.write_table(table, path if hasattr(path, "write") else os.fspath(path), **options)


def fingerprint(path: PathLike) -> dict:
    """What tells a written file's content from another's without reading it: its size, and for an
    object its ETag (a checksum the store keeps); a rerun keeps a file whose fingerprint is unchanged."""
    if remote.is_remote(path):
        return remote.fingerprint(path)
    return {"size": size(path)}
