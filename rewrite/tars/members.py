"""The member walker and sample grouper behind every reading of a tar (webdataset tar I/O with the
stdlib only): member headers in order with the end-of-archive check, samples grouped by key, text data
read and decoded, the header digest and the byte counter.

Samples keep tar order (img2dataset writes them in download-completion order, not key order). A key may
come back later in the tar as a whole second sample (one sharing an extension with the first), which
webdataset reads as a sample of its own, and so do we; members of one sample that other samples split
apart are refused. Samples are told apart by position, never by key.

Reading touches only the text members: tarfile in random-access mode seeks over image data, so a caption
scan of a shard reads its headers and captions, not its images.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from .keys import TEXT_EXTS, TarError, check_key, split_member

BLOCK = tarfile.BLOCKSIZE
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps(value, ensure_ascii=False), made once


@dataclass
class ByteCounter:
    """Bytes read from a tar file (headers included), for callers and tests that check I/O."""

    bytes_read: int = 0


class Headers:
    """A digest of a tar's member headers: each member's name, size and mtime, in order. It tells a tar
    replaced in place (other captions, other images) from the one planned without reading any member's
    data, and a `touch` of the file changes none of it. Every walk of the headers can feed one (the
    plan's count, a read, the export's copy): they see the same members, as tarfile reads them."""

    _BATCH = 3 * 1024  # items hashed at a time: memory stays bounded whatever the tar's size

    def __init__(self):
        self._hash, self._items = hashlib.sha256(), []

    def add(self, name: str, size: int, mtime: float) -> None:
        items = self._items
        items += (name, size, mtime)
        if len(items) >= self._BATCH:
            self._flush()

    def hexdigest(self) -> str:
        self._flush()
        return self._hash.hexdigest()

    def _flush(self) -> None:
        if self._items:
            self._hash.update(repr(self._items).encode("utf-8"))
            self._items.clear()


class _CountingFile:
    """An unbuffered file whose reads are added to a counter, so tests can see that images are skipped."""

    def __init__(self, path: str | Path, counter: object | None):
        self._raw = open(path, "rb", buffering=0)
        self._counter = counter
        self.name = str(path)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.readall() if size is None or size < 0 else self._read_exactly(size)
        if self._counter is not None:
            self._counter.bytes_read += len(data)
        return data

    def _read_exactly(self, size: int) -> bytes:
        """A raw read may return less than asked; loop until `size` bytes or end of file."""
        chunks, left = [], size
        while left > 0:
            chunk = self._raw.read(left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._raw.close()


def _open_tar(path: str | Path, fileobj: IO[bytes]) -> tarfile.TarFile:
    """tarfile in random-access mode on our own file object ('r:' seeks over unread member data)."""
    try:
        return tarfile.open(fileobj=fileobj, mode="r:", encoding="utf-8")
    except (tarfile.TarError, EOFError) as e:
        raise TarError(f"{path}: not a readable tar ({e})") from None


def _members(tar: tarfile.TarFile, path: str | Path) -> Iterator[tarfile.TarInfo]:
    """Every member header in order, then a check that the archive ends with its end-of-archive block.

    tarfile's next() takes a cut-off or garbled header after the first one for the end of the archive,
    so a shard cut at a member boundary would otherwise look complete with samples missing."""
    while True:
        info = _next_member(tar, path)
        if info is None:
            break
        yield info
    _check_end(tar, path)


def _next_member(tar: tarfile.TarFile, path: str | Path) -> tarfile.TarInfo | None:
    """tarfile's next member from `tar.offset` (None at what it takes for the end), errors named."""
    try:
        return tar.next()
    except (tarfile.TarError, EOFError) as e:
        raise TarError(f"{path}: truncated or corrupt tar after member at offset {tar.offset} ({e})") from None


def _check_end(tar: tarfile.TarFile, path: str | Path) -> None:
    """Where tarfile saw the end, the archive must have its end-of-archive block (a zero block)."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(BLOCK) != tarfile.NUL * BLOCK:
        raise TarError(f"{path}: truncated or corrupt tar: no end-of-archive block at offset {tar.offset}")


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, path: str | Path) -> bytes:
    """The whole data of one (small, text) member."""
    try:
        data = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError) as e:
        raise TarError(f"{path}: member {info.name!r}: truncated data ({e})") from None
    if len(data) != info.size:
        raise TarError(f"{path}: member {info.name!r}: truncated data ({len(data)} of {info.size} bytes)")
    return data


class _Keys:
    """The keys of a tar's samples so far, to tell a key that comes back as a whole second sample (it
    shares an extension with the earlier samples of its key: webdataset reads it as a sample of its own)
    from a split sample (it shares none: it holds the members of an earlier one that other samples cut
    off, which webdataset would read as two halves). The readers and the copy both judge by it, so they
    agree on what a sample is."""

    def __init__(self, path: str | Path):
        self.path = path
        self.seen: dict[str, tuple[set[str], str]] = {}  # key -> extensions of its samples so far, first member

    def ended(self, key: str, exts: set[str], first: str) -> None:
        """A sample's last member was seen (`exts`: its extensions, lower case; `first`: its first member)."""
        earlier = self.seen.setdefault(key, (exts, first))
        if earlier[0] is exts:
            return
        if earlier[0].isdisjoint(exts):
            raise TarError(f"{self.path}: member {first!r}: sample {key!r} is split: its members are not adjacent "
                           f"in the tar (it began at member {earlier[1]!r}, and other samples lie between)")
        earlier[0].update(exts)


def _groups(tar: tarfile.TarFile, path: str | Path, read_exts: tuple[str, ...],
            text_exts: tuple[str, ...] = TEXT_EXTS,
            headers: Headers | None = None) -> Iterator[tuple[str, list[tarfile.TarInfo], dict[str, bytes]]]:
    """(key, members, {ext: data} of the read members) per sample, in tar order, keys checked (one may
    repeat: see _Keys); every member header is added to `headers`.

    Non-regular members and names webdataset skips belong to no sample. Text data is read as soon as
    its header is seen, so the file is read front to back."""
    keys = _Keys(path)
    key, members, texts, exts = None, [], {}, set()
    for info in _members(tar, path):
        if headers is not None:
            headers.add(info.name, info.size, info.mtime)
        split = split_member(info.name) if info.isreg() else None
        if split is None:
            continue
        member_key, ext = split[0], split[1].lower()
        check_key(member_key, path, info.name, text_exts)
        if member_key != key:
            if key is not None:
                keys.ended(key, exts, members[0].name)
                yield key, members, texts
            key, members, texts, exts = member_key, [], {}, set()
        if ext in exts:
            raise TarError(f"{path}: member {info.name!r}: a second {ext!r} member for sample {key!r}")
        exts.add(ext)
        members.append(info)
        if ext in read_exts:
            texts[ext] = _read_member(tar, info, path)
    if key is not None:
        keys.ended(key, exts, members[0].name)
        yield key, members, texts


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
