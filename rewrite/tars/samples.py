"""Reading a shard's samples (iter_samples: key, caption, KEY.json, members) and counting them, from its
headers (count_samples) or from img2dataset's files beside it (stats_count)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .keys import TEXT_EXTS, TarError, name_ext
from .. import storage
from .grouping import _groups
from .walk import Headers, _CountingFile, _Member, _open_tar

_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps(value, ensure_ascii=False), made once


@dataclass
class Sample:
    """One webdataset sample: its key, caption (None when it has none), parsed KEY.json, member names."""

    key: str
    caption: str | None
    json: dict | None
    members: list[str] = field(default_factory=list)


def _member_named(members: list[_Member], ext: str) -> str:
    """The name of the member of a sample with extension `ext` (lower case)."""
    return next(m.name for m in members if name_ext(m.name).lower() == ext)


def iter_samples(path: str | Path, caption_field: str | None = None,
                 text_exts: tuple[str, ...] = TEXT_EXTS, counter: object | None = None,
                 headers: Headers | None = None) -> Iterator[Sample]:
    """Samples of one shard in tar order, reading only the bytes of its text members.

    The caption is KEY.txt, or field `caption_field` of KEY.json; a sample without one (or whose field
    is missing or null) gets None so that the caller can record a per-row status; a field that holds
    something other than a string is refused. `counter`: an object with an int `bytes_read` that every
    read of the file (headers included) is added to. `headers`: every member header is added to it (its
    digest is the tar's once the samples are exhausted)."""
    text_exts = tuple(e.lower() for e in text_exts)
    wanted = "json" if caption_field is not None else "txt"
    if wanted not in text_exts:
        raise ValueError(f"captions come from .{wanted} members, which text_exts={text_exts!r} leaves out")
    return _iter_samples(path, caption_field, text_exts, counter, headers)


def _iter_samples(path: str | Path, caption_field: str | None, text_exts: tuple[str, ...],
                  counter: object | None, headers: Headers | None) -> Iterator[Sample]:
    """The generator behind iter_samples (split off so that argument errors raise at the call)."""
    fileobj = _CountingFile(path, counter)
    try:
        tar = _open_tar(path, fileobj)
        for key, members, texts in _groups(tar, path, text_exts, text_exts, headers):
            yield _sample(key, members, texts, caption_field, path)
    finally:
        fileobj.close()


def _sample(key: str, members: list[_Member], texts: dict[str, bytes],
            caption_field: str | None, path: str | Path) -> Sample:
    """Decode one sample's text members into a Sample."""
    meta = _parse_json(texts["json"], path, _member_named(members, "json")) if "json" in texts else None
    decoded = {ext: _decode_text(data, path, _member_named(members, ext))
               for ext, data in texts.items() if ext != "json"}
    if caption_field is None:
        caption = decoded.get("txt")
    else:
        caption = (meta or {}).get(caption_field)
        if caption is not None and not isinstance(caption, str):
            raise TarError(f"{path}: member {_member_named(members, 'json')!r}: caption field {caption_field!r} "
                           f"holds {_JSON_KINDS.get(type(caption), 'a number')} ({_JSON_ENCODER.encode(caption)[:60]}), "
                           "not a string (a missing or null field is a skipped row)")
    return Sample(key, caption, meta, [m.name for m in members])


_JSON_KINDS = {bool: "a boolean", list: "a list", dict: "an object"}  # what else json.loads makes, but str: numbers


def count_samples(path: str | Path, counter: object | None = None, headers: Headers | None = None) -> int:
    """Number of samples in a shard, from one pass over its headers (no member data is read); every
    member header is added to `headers`."""
    fileobj = _CountingFile(path, counter, ranges=True)
    try:
        return sum(1 for _ in _groups(_open_tar(path, fileobj), path, read_exts=(), headers=headers))
    finally:
        fileobj.close()


def stats_count(path: str | Path) -> int | None:
    """Samples in a shard as img2dataset recorded them beside it, without opening the tar.

    `NNNNN_stats.json` field `successes`, else the rows of `NNNNN.parquet` whose `status` is "success"
    (only that column is read); None when neither is there or readable."""
    count = _stats_json_count(_beside(path, "_stats.json"))
    return count if count is not None else _parquet_count(_beside(path, ".parquet"))


def _beside(path, suffix: str):
    """img2dataset's file for shard NNNNN.tar: NNNNN<suffix> in the same folder (or prefix)."""
    path = storage.location(path) if isinstance(path, str) else path
    stem = path.name[: -len(".tar")] if path.name.endswith(".tar") else path.stem
    return path.with_name(f"{stem}{suffix}")


def captions_beside(path):
    """The samples of shard `path` as img2dataset's NNNNN.parquet beside it lists them, without opening the
    tar: its rows whose `status` is "success", in file order (img2dataset writes the tar's samples and
    these rows in the same order), columns `key` and `caption`; None when that file is missing or lacks
    those columns. A pyarrow Table."""
    import pyarrow.compute as pc
    parquet = _beside(path, ".parquet")
    if not storage.is_file(parquet):
        return None
    try:
        opened = storage.parquet_file(parquet)  # one footer read for both
        if not {"key", "caption", "status"} <= set(opened.schema_arrow.names):
            return None
        table = opened.read(columns=["key", "caption", "status"])
    except storage.RemoteError:
        raise  # the store failed (after retries), not the file: named by its URL as such
    except (OSError, ValueError) as e:
        raise TarError(f"{parquet}: img2dataset's table beside {path} is not readable ({e})") from None
    kept = table.filter(pc.equal(table.column("status"), "success"))
    return kept.select(["key", "caption"])


def _stats_json_count(stats: Path) -> int | None:
    """`successes` of an img2dataset stats file, or None."""
    try:
        value = json.loads(storage.read_text(stats)).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _parquet_count(parquet: Path) -> int | None:
    """Rows with status "success" in an img2dataset shard parquet, or None."""
    if not storage.is_file(parquet):
        return None
    try:
        import pyarrow.compute as pc

        column = storage.read_parquet(parquet, columns=["status"]).column("status")
        return int(pc.sum(pc.equal(column, "success")).as_py() or 0)
    except Exception:  # noqa: BLE001 - any unreadable parquet means "unknown", the caller then counts the tar
        return None


def _decode_text(data: bytes, path: str | Path, member: str) -> str:
    """UTF-8 text as webdataset decodes it (no stripping); anything else names the member."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TarError(f"{path}: member {member!r}: text is not UTF-8 ({e})") from None


def _parse_json(data: bytes, path: str | Path, member: str) -> dict:
    """A sample's KEY.json as a dict; open_clip drops a sample whose json does not parse, we refuse it."""
    try:
        value = json.loads(_decode_text(data, path, member))
    except json.JSONDecodeError as e:
        raise TarError(f"{path}: member {member!r}: invalid JSON ({e})") from None
    if not isinstance(value, dict):
        raise TarError(f"{path}: member {member!r}: JSON is a {type(value).__name__}, not an object")
    return value
