"""The copy's output tar: kept source byte ranges and new bytes, written in order (gathered writes,
writeback started as it goes)."""
from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from typing import IO

from .keys import TarError
from .walk import BLOCK, _Window

COPY_BUFFER = 1 << 18  # piece size of copies (a member's data is never held whole)
WRITEBACK_STEP = 8 << 20  # bytes of a copy's output after which its writeback is started (see _Output)


class _Output:
    """The output tar, written in order: source byte ranges kept as they are (coalesced until something
    else is written) and new bytes. A kept range's part in the source's window is a slice of it; parts
    outside it (a member bigger than the window) are read in COPY_BUFFER pieces. A regular file gets one
    os.writev per COPY_BUFFER bytes gathered, through its descriptor (os.sendfile of each range between
    two rewritten KEY.json members measured slower), and every time the
    window moves (the slices gathered are of its buffer); any other file object gets a write() per piece.

    Every WRITEBACK_STEP bytes written to a regular file, the kernel is told to start writing them to disk
    (posix_fadvise DONTNEED, which also lets it drop them from the page cache once written): the fsync
    that commits the tar then finds most of it on disk, written while the copy went on, and an export of
    many GB does not fill the page cache with
    output it will not read again."""

    def __init__(self, dst: IO[bytes], window: _Window, path: str | Path):
        self.dst, self.window, self.path = dst, window, path
        window.before_move = self._drain
        self.copied = self.kept = 0  # source bytes [copied, kept) are still to be copied
        self.position = _tell(dst)  # tarfile pads the archive to a record counting from here
        self.fd = _regular_fd(dst)
        self.gathered: list[bytes] = []
        self.gathered_size = 0
        self.written_back = self.position  # output bytes before this were handed to writeback

    def keep(self, end: int) -> None:
        """Source bytes up to `end` go to the output as they are."""
        self.kept = end

    def write(self, data: bytes, skip_to: int | None = None) -> None:
        """`data` after what is kept so far; source bytes up to `skip_to` are then left out (a replaced member)."""
        self._copy_kept()
        self._put(data)
        if skip_to is not None:
            self.copied = self.kept = skip_to

    def close(self) -> None:
        """Copy what is kept, then end the archive as tarfile does."""
        self._copy_kept()
        end = 2 * BLOCK
        self._put(tarfile.NUL * (end + -(self.position + end) % tarfile.RECORDSIZE))
        self._flush()

    def release(self) -> None:
        """Set `dst`'s own position to where the descriptor's writes ended (its buffer was empty)."""
        if self.fd is not None:
            self.dst.seek(os.lseek(self.fd, 0, os.SEEK_CUR))

    def _drain(self) -> None:
        """Write out everything kept or gathered: the window's buffer is about to be refilled."""
        self._copy_kept()
        self._flush()

    def _copy_kept(self) -> None:
        """The kept range: before, inside and after the window (a kept range reaches past it only across
        a member bigger than what the window held of it)."""
        start, end, window = self.copied, self.kept, self.window
        self._read_range(start, min(end, window.start))
        inside_start, inside_end = max(start, window.start), min(end, window.end)
        if inside_start < inside_end:
            self._put(window.view[inside_start - window.start:inside_end - window.start])
        self._read_range(max(start, window.end), end)
        self.copied = max(self.copied, end)

    def _read_range(self, start: int, end: int) -> None:
        while start < end:
            data = self.window.pread(min(end - start, COPY_BUFFER), start)
            if not data:
                raise TarError(f"{self.path}: truncated while being copied (no data at offset {start})")
            self._put(data)
            start += len(data)

    def _put(self, data: bytes) -> None:
        self.position += len(data)
        if self.fd is None:
            self.dst.write(data)
            return
        if self.gathered_size + len(data) > COPY_BUFFER or len(self.gathered) >= 512:
            self._flush()
        self.gathered.append(data)
        self.gathered_size += len(data)

    def _flush(self) -> None:
        """Write what is gathered (a short writev, rare on a regular file, is completed by plain writes)."""
        if not self.gathered:
            return
        written = os.writev(self.fd, self.gathered)
        if written < self.gathered_size:
            view = memoryview(b"".join(self.gathered))[written:]
            while view:
                view = view[os.write(self.fd, view):]
        self.gathered, self.gathered_size = [], 0
        if self.position - self.written_back >= WRITEBACK_STEP and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, self.written_back, self.position - self.written_back, os.POSIX_FADV_DONTNEED)
            self.written_back = self.position


def _tell(fileobj: IO[bytes]) -> int:
    try:
        return fileobj.tell()
    except (AttributeError, OSError, ValueError):
        return 0


def _regular_fd(fileobj: IO[bytes]) -> int | None:
    """The descriptor of `fileobj` if it is a file as open() makes them, on a regular file, its buffer
    flushed first; None for others (a GzipFile, say, gives the descriptor of the file it compresses into)."""
    if not isinstance(fileobj, (io.FileIO, io.BufferedWriter, io.BufferedRandom)):
        return None
    fd = fileobj.fileno()
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return None
    fileobj.flush()
    return fd
