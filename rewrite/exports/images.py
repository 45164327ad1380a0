"""Images written as files for the CSV-shaped exports (`--extract-images DIR`), when the inputs hold them
(tar members, or a column of image bytes).

A row's image is DIR/<shard>/<row in shard, 9 digits>.<ext>: one file per sample, so two samples with
the same key (in two tars, or a key repeated in a shard) never share a file, and the path column of a
CSV row always points at its own image. Paths are written absolute. A shard's images are written into a
hidden folder beside DIR/<shard> and moved into place when all are there.

DIR is owned like an export's OUT: DIR/.rewrite-images.json names the export (its OUT) that writes
there. A folder holding anything else is refused; one owned by another export is replaced only with
--overwrite, and then only the shard folders an export wrote (holding only files named as above).
"""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import IO, Iterable

from .. import storage
from ..workdir import atomic, layout
from .base import ExportError

MARKER = ".rewrite-images.json"
_OURS = re.compile(r"\d{9}\.(jpg|jpeg|png|webp)")  # the files of a shard folder, as this module names them
_SHARD = re.compile(r"\d{5,}")
COPY_BUFFER = 1 << 18


def _read_marker(folder: Path) -> dict | None:
    path = folder / MARKER
    try:
        record = json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise ExportError(f"{path} is damaged: remove {folder} yourself, or choose another --extract-images") from None
    if not isinstance(record, dict) or not isinstance(record.get("export"), str):
        raise ExportError(f"{path} is damaged: remove {folder} yourself, or choose another --extract-images")
    return record


def _shard_folders(folder: Path) -> list[Path]:
    return [folder / name for name in storage.list_dir(folder)
            if storage.is_dir(folder / name) and _SHARD.fullmatch(name)]


def _check_ours(shard_folder: Path) -> None:
    """A shard folder holds only images this module wrote (else nothing in it is removed)."""
    for entry in (shard_folder / name for name in storage.list_dir(shard_folder)):
        if not (storage.is_file(entry) and _OURS.fullmatch(entry.name)):
            raise ExportError(f"{entry} was not written by `rewrite export`: move it out of {shard_folder}, or "
                              "choose another --extract-images folder (nothing there is removed or replaced)")


def check(folder: Path, out: Path, overwrite: bool) -> dict | None:
    """Refuse `folder` as the image folder of the export in `out` (writes nothing): a file, a folder of
    someone else's files always, another export's images unless `overwrite`. Its record, if any."""
    folder, owner = Path(folder).resolve(), str(Path(out).resolve())
    if storage.exists(folder) and not storage.is_dir(folder):
        raise ExportError(f"--extract-images {folder} is a file, not a folder")
    record = _read_marker(folder) if storage.is_dir(folder) else None
    if record is None:
        others = storage.list_dir(folder) if storage.is_dir(folder) else []
        if others:
            raise ExportError(f"--extract-images {folder} is not empty and was not written by `rewrite export` "
                              f"({', '.join(others[:5])}): choose a new or empty folder; nothing there is removed "
                              "or replaced")
    elif record["export"] != owner and not overwrite:
        raise ExportError(f"--extract-images {folder} holds the images of another export ({record['export']}): "
                          "choose another folder, or pass --overwrite to replace them (only the files an export "
                          "wrote there are removed)")
    return record


def claim(folder: Path, out: Path, overwrite: bool) -> None:
    """Make `folder` the image folder of the export in `out` (see `check`); taking it over from another
    export (`overwrite`) removes that export's shard folders, nothing else."""
    folder, owner = Path(folder).resolve(), str(Path(out).resolve())
    record = check(folder, out, overwrite)
    if record is None:
        storage.make_dirs(folder)
        if atomic.create_json(folder / MARKER, {"export": owner, "made_by": "rewrite export"}):
            return
        record = check(folder, out, overwrite)  # another task of the same export claimed it first
    if record["export"] == owner:
        return
    shards = _shard_folders(folder)
    for shard_folder in shards:
        _check_ours(shard_folder)
    for shard_folder in shards:
        storage.remove_tree(shard_folder, missing_ok=False)
    atomic.write_json(folder / MARKER, {"export": owner, "made_by": "rewrite export"})


def shard_folder(folder: Path, shard: int) -> Path:
    return Path(folder).resolve() / layout.shard_id(shard)


def present(folder: Path, shard: int) -> bool:
    """Whether the shard's images were written (its folder is moved into place only when whole)."""
    return storage.is_dir(shard_folder(folder, shard))


def write_shard(folder: Path, shard: int, images: Iterable[tuple[str, str, IO[bytes] | bytes] | None],
                kept: tuple[str, ...]) -> list[str | None]:
    """Write one image per row ((where it comes from, extension, data); None: the row has none) into
    DIR/<shard>/, whole or not at all; returns each
    row's absolute path (None where it has no image). An image whose extension is not in `kept` (say
    webp, which LaCLIP's path filter drops) is converted to PNG."""
    target = shard_folder(folder, shard)
    tmp = atomic.temp_beside(target)
    storage.make_dir(tmp)
    paths: list[str | None] = []
    written: list[Path] = []
    try:
        for row, image in enumerate(images):
            if image is None:
                paths.append(None)
                continue
            where, ext, data = image
            if ext not in kept:
                ext, data = "png", _as_png(data, where)
            name = f"{row:09d}.{ext}"
            _write(tmp / name, data)
            written.append(target / name)
            paths.append(str(target / name))
        if storage.exists(target):
            _check_ours(target)
            old = atomic.temp_beside(target)
            storage.rename(target, old)
            storage.rename(tmp, target)
            storage.remove_tree(old, missing_ok=False)
        else:
            storage.rename(tmp, target)
    except BaseException:
        storage.remove_tree(tmp, ignore_errors=True)  # the error that brought us here is the one to report
        raise
    atomic.record_unsynced(written + [target])
    return paths


def _write(path: Path, data: IO[bytes] | bytes) -> None:
    with storage.open_file(path, "xb") as f:
        if isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            shutil.copyfileobj(data, f, COPY_BUFFER)


def _as_png(data: IO[bytes] | bytes, where: str) -> bytes:
    """An image re-encoded as PNG (lossless), for a reader that keeps only .jpg/.jpeg/.png paths."""
    from PIL import Image

    raw = data if isinstance(data, (bytes, bytearray)) else data.read()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            out = io.BytesIO()
            image.save(out, "PNG")
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for an undecodable image
        raise ExportError(f"{where}: cannot convert the image to PNG ({type(e).__name__}: {e})") from None
    return out.getvalue()
