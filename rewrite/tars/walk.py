"""The one member walker behind every reading of a tar: member headers in order, each as a `_Member`,
then the end-of-archive check. tarfile parses the headers when the caller seeks over member data (the
readers: a caption scan reads headers and captions, not images). The copy walks through a `_Window`
instead (the source read forward in one reused buffer), and a plain header block is parsed here (see
_plain_member), any other left to tarfile."""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from .. import storage
from .keys import TarError

BLOCK = tarfile.BLOCKSIZE
WINDOW = 1 << 19  # bytes of the source read at a time, into one reused buffer (see _Window)
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_OCTAL = re.compile(rb" *[0-7]*[ \0]*")  # a number field in a form that tarfile reads as this octal number
# size and checksum as tarfile and GNU tar write them ("%011o\0", "%06o\0 "), type '0' or NUL: one match
_USUAL_HEADER = re.compile(rb"(?s).{124}([0-7]{11})\0.{12}[0-7]{6}\0 ([0\0])")
_FIXED_FIELDS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))  # mode .. devminor


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

    def __init__(self, path: str | Path, counter: object | None, ranges: bool = False):
        """`ranges`: only headers are read, here and there; a remote tar is then read by one request per
        header (else it is streamed in big requests)."""
        remote_stream = storage.is_remote(path) and not ranges
        self._raw = storage.open_file(path, "rb", buffering=-1 if remote_stream else 0)
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


class _Member:
    """A member as the copy sees it: name, whether it is a regular file, the source range of its header
    blocks [offset, offset_data) and data blocks [offset_data, end), its data size; `block` is its header
    block when parsed here, `info` tarfile's TarInfo when tarfile parsed it."""

    __slots__ = ("name", "regular", "offset", "offset_data", "size", "end", "block", "info")

    def __init__(self, name: str, regular: bool, offset: int, offset_data: int, size: int, end: int,
                 block: bytes | None = None, info: tarfile.TarInfo | None = None):
        self.name, self.regular, self.size, self.block, self.info = name, regular, size, block, info
        self.offset, self.offset_data, self.end = offset, offset_data, end

    @classmethod
    def parsed_by_tarfile(cls, info: tarfile.TarInfo, end: int) -> "_Member":
        return cls(info.name, info.isreg(), info.offset, info.offset_data, info.size, end, info=info)

    @property
    def mtime(self) -> float:
        """As tarfile reads it (a plain block's field is plain octal: see _plain_member)."""
        if self.info is not None:
            return self.info.mtime
        return int(self.block[136:148].strip(b" \0") or b"0", 8)

    def tarinfo(self) -> tarfile.TarInfo:
        """Its metadata as a TarInfo (what tarfile reads from a plain block), for the headers built from it."""
        if self.info is not None:
            return self.info
        return tarfile.TarInfo.frombuf(self.block, "utf-8", "surrogateescape")


class _Window:
    """The source read forward through one reused buffer of WINDOW bytes: the member headers, the data of
    small members and the byte ranges the output keeps all come out of it, one read per WINDOW bytes
    (a read per member, and a new buffer per read, cost a fifth of a shard's copy). Before the buffer is
    refilled, `before_move` lets the output write out what it holds of it."""

    def __init__(self, fileobj: IO[bytes]):
        self.fd = _descriptor(fileobj)  # None: a file without one (a remote object), read by seek and read
        self.fileobj, self.buffer = fileobj, bytearray(WINDOW)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0  # the source bytes [start, end) are in the buffer
        self.before_move = lambda: None

    def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of the source, fewer at its end."""
        if offset < self.start or offset + size > self.end:
            if size > WINDOW:
                return self.pread(size, offset)
            self.before_move()
            self.start = offset
            self.end = offset + self._fill(offset)
        return bytes(self.view[offset - self.start:min(offset + size, self.end) - self.start])

    def pread(self, size: int, offset: int) -> bytes:
        """Bytes [offset, offset + size) of the source, read past the window (fewer at its end)."""
        if self.fd is not None:
            return os.pread(self.fd, size, offset)
        self.fileobj.seek(offset)
        return self.fileobj.read(size)

    def _fill(self, offset: int) -> int:
        if self.fd is not None:
            return os.preadv(self.fd, [self.buffer], offset)
        data = self.pread(WINDOW, offset)
        self.buffer[:len(data)] = data
        return len(data)


def _descriptor(fileobj: IO[bytes]) -> int | None:
    try:
        return fileobj.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def _walk(tar: tarfile.TarFile, path: str | Path, window: _Window | None = None,
          headers: Headers | None = None) -> Iterator[_Member]:
    """The members in order; every header is added to `headers`. With a `window`, a plain header block
    (see _plain_member) is parsed here from it; any other, and all of them without one, are read by
    tarfile, placed at it. Then the end-of-archive check.

    tarfile's next() takes a cut-off or garbled header after the first one for the end of the archive,
    so a shard cut at a member boundary would otherwise look complete with samples missing."""
    offset, checked = None, set()
    while True:
        member = None
        if window is not None and offset is not None and not tar.pax_headers:
            # a global PAX header changes how tarfile reads all that follows
            member = _plain_member(window.read(offset, BLOCK), offset, checked)
        if member is None:
            if offset is not None:
                tar.offset = offset
            info = _next_member(tar, path)  # the first one was read when `tar` was opened
            if info is None:
                break
            member = _Member.parsed_by_tarfile(info, tar.offset)
        if headers is not None:
            headers.add(member.name, member.size, member.mtime)
        yield member
        offset = member.end
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


def _plain_member(block: bytes, offset: int, checked: set[bytes]) -> _Member | None:
    """The member whose header block `block` (at `offset`) is a plain one, else None.

    Plain: a regular file's ustar/GNU header that tarfile reads the same way: type '0' (or NUL, for a name
    that is not a folder's), each number field in plain octal, the checksum right (unsigned). Any other
    block is left to tarfile (which may take it for the end). `checked`: the number fields other than
    size and checksum already found plain, which members mostly share. (One function: this runs for
    every member, and its calls were a sixth of a shard's copy.)"""
    if len(block) != BLOCK:
        return None
    usual = _USUAL_HEADER.match(block)
    if usual:
        size_field, kind = usual.groups()
    else:
        size_field, kind = block[124:136], block[156:157]
        if kind not in _PLAIN_TYPES or not (_OCTAL.fullmatch(size_field) and _OCTAL.fullmatch(block, 148, 156)):
            return None
    fixed = block[100:124] + block[136:148] + block[329:345]
    if fixed not in checked:
        if not all(_OCTAL.fullmatch(block, start, end) for start, end in _FIXED_FIELDS):
            return None
        if len(checked) >= 1024:
            checked.clear()
        checked.add(fixed)
    sum_field = block[148:156]
    halves = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2  # each < 65521: exact
    if int(sum_field.strip(b" \0") or b"0", 8) != halves - sum(sum_field) + 8 * 32:
        return None
    end = block.find(b"\0", 0, 100)
    name = block[:end] if end >= 0 else block[:100]
    if kind == tarfile.AREGTYPE and name.endswith(b"/"):  # tarfile reads it as a folder
        return None
    if block[345] != 0:  # a ustar prefix
        end = block.find(b"\0", 345, 500)
        name = block[345:end if end >= 0 else 500] + b"/" + name
    size = int(size_field.strip(b" \0") or b"0", 8)
    return _Member(name.decode("utf-8", "surrogateescape"), True, offset, offset + BLOCK, size,
                   offset + BLOCK + _blocks(size), block)


def _blocks(size: int) -> int:
    """Bytes of the data blocks that hold `size` bytes."""
    return -(-size // BLOCK) * BLOCK
