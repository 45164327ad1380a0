"""The one seam between the tool and the files it reads and writes: every open, list, stat, rename and
delete goes through these functions, so putting another store behind them (object storage, say) is a
change here. Paths are local today. The work dir's locks and atomic renames need a real filesystem;
`rename`, `link`, `sync` and `open_fd` are for it and for the tar copy's descriptor-level fast path.

What stays outside: path arithmetic (`Path.name`, `/`, `resolve`), the package's own files (read
through importlib.resources, see resources.py) and the model cache, which the engines' libraries open
themselves."""
from __future__ import annotations

import os
import shutil
import stat as stat_modes
from pathlib import Path
from typing import IO

PathLike = str | os.PathLike


def open_file(path: PathLike, mode: str = "rb", *, encoding: str | None = None,
              newline: str | None = None, buffering: int = -1) -> IO:
    """Open a file: 'r'/'rb' to read, 'w'/'wb' to write, 'x'/'xb' to create one that must not exist
    yet (mode 0o666, so the umask or the folder's default ACL applies), 'r+b' to update in place."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    return open(path, mode, buffering, encoding=encoding, newline=newline)


def open_fd(path: PathLike, flags: int, mode: int = 0o666) -> int:
    """A raw descriptor, for the locks (flock) and the tar copy (pread/sendfile); local files only."""
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
    return stat_modes.S_IMODE(os.stat(path).st_mode)


def set_mode(path: PathLike, bits: int) -> None:
    os.chmod(path, bits)


def link_target(path: PathLike) -> Path | None:
    """Where a symlink points, or None when `path` is not one."""
    return Path(os.readlink(path)) if os.path.islink(path) else None


def arrow_file(path: PathLike):
    """A pyarrow NativeFile for reading, for the readers that take one (random access, no Python layer)."""
    import pyarrow as pa
    return pa.OSFile(os.fspath(path))


def mtime(path: PathLike) -> float:
    """When the file was last changed, in seconds since the epoch."""
    return os.stat(path).st_mtime


def size(path: PathLike) -> int:
    return os.stat(path).st_size


def exists(path: PathLike) -> bool:
    return os.path.exists(path)


def is_file(path: PathLike) -> bool:
    return os.path.isfile(path)


def is_dir(path: PathLike) -> bool:
    return os.path.isdir(path)


def list_dir(path: PathLike) -> list[str]:
    """The names in a folder, sorted."""
    return sorted(os.listdir(path))


def glob(folder: PathLike, pattern: str) -> list[Path]:
    """The paths under `folder` matching `pattern` (pathlib's glob syntax, `**` included), sorted."""
    return sorted(Path(folder).glob(pattern))


def glob_pattern(pattern: str, recursive: bool = True) -> list[Path]:
    """The paths matching a pattern a user gave (with `recursive`, `**` across folders), sorted; the
    shell's rules: `*` matches no hidden name."""
    import glob as globbing
    return sorted(Path(p) for p in globbing.glob(pattern, recursive=recursive))


def readable(path: PathLike) -> bool:
    """Whether this process may read the file (an unreadable input is named at planning, not mid-run)."""
    return os.access(path, os.R_OK)



def make_dirs(path: PathLike) -> None:
    """Make a folder and its parents; nothing when it is there."""
    os.makedirs(path, exist_ok=True)


def make_dir(path: PathLike, exist_ok: bool = False) -> None:
    """Make one folder, not its parents. Without `exist_ok` it must not exist yet (FileExistsError
    otherwise): a claim no one else holds; with it, a folder already there is fine (a file is not)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not (exist_ok and os.path.isdir(path)):
            raise


def rename(src: PathLike, dst: PathLike) -> None:
    """Rename atomically, replacing `dst` if it is a file (or an empty folder)."""
    os.replace(src, dst)


def link(src: PathLike, dst: PathLike) -> None:
    """A second name for `src`; FileExistsError when `dst` exists (unlike rename, never replaces)."""
    os.link(src, dst)


def remove(path: PathLike, missing_ok: bool = True) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def remove_dir(path: PathLike) -> None:
    """Remove an empty folder."""
    os.rmdir(path)


def remove_tree(path: PathLike, missing_ok: bool = True, ignore_errors: bool = False) -> None:
    """Remove a folder and everything in it; with `ignore_errors`, as much of it as can go, silently (a
    clean-up after a failure, whose own error is the one to report)."""
    if missing_ok and not os.path.lexists(path):
        return
    shutil.rmtree(path, ignore_errors=ignore_errors)


def sync(path: PathLike) -> None:
    """Make a file's (or folder's) contents durable: fsync through a descriptor of its own."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parquet_file(path: PathLike, **options):
    """A pyarrow ParquetFile (of a path, or of a file already open): its footer is read now, row groups
    when asked for."""
    import pyarrow.parquet as pq
    return pq.ParquetFile(path if hasattr(path, "read") else os.fspath(path), **options)


def read_parquet(path: PathLike, **options):
    """A whole parquet file (or the columns asked for) as a pyarrow Table."""
    import pyarrow.parquet as pq
    return pq.read_table(os.fspath(path), **options)


def read_parquet_schema(path: PathLike):
    import pyarrow.parquet as pq
    return pq.read_schema(os.fspath(path))


def parquet_writer(path: PathLike, schema, **options):
    """A pyarrow ParquetWriter onto `path` (a temporary path that atomic.py commits, or a file object)."""
    import pyarrow.parquet as pq
    return pq.ParquetWriter(path if hasattr(path, "write") else os.fspath(path), schema, **options)


def write_parquet(table, path: PathLike, **options) -> None:
    import pyarrow.parquet as pq
    pq.write_table(table, path if hasattr(path, "write") else os.fspath(path), **options)
