"""Writing a shard with changed fields (copy_with_fields): KEY.json fields added, KEY.txt replaced.

Writing copies the source's bytes as they are, member ranges at a time, and builds only the members it
changes. The output is the source's bytes: each member kept as it is goes out as the byte range it fills
in the source (header blocks and data), consecutive ones as one range; only the KEY.json / KEY.txt
members that change or are created are built. Plain header blocks are parsed here (walk.py), since
tarfile's parsing (and rebuilding) of every header cost more than copying the bytes; any other header
(PAX, GNU long names, folders, links) and the end of the archive are left to tarfile.
"""
from __future__ import annotations

import copy
import itertools
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Sequence

from .. import storage
from .grouping import _place
from .keys import FieldExists, TarError
from .output import _Output
from .samples import _JSON_ENCODER, _parse_json
from .walk import BLOCK, Headers, _blocks, _Member, _open_tar, _read_member, _walk, _Window

_MAX_SIZE_FIELD = 8 ** 11  # sizes that the 11 octal digits of a ustar size field hold


def copy_with_fields(src: str | Path, dst_fileobj: IO[bytes], samples: Sequence[tuple[str, dict[str, str]]],
                     txts: Sequence[str | None] | None = None, *, replace_fields: bool = False,
                     check_headers: Callable[[str], None] | None = None) -> None:
    """Write shard `src` to `dst_fileobj`, adding rewrite fields to each KEY.json.

    `samples` holds, for each sample of `src` in tar order, its key and the flat string fields to add: the
    i-th sample of the tar takes the i-th entry (a key that repeats gets each entry its own), and a sample
    whose key is not its entry's, or a count that differs, is an error, so a mismatched join cannot put
    rewrites on the wrong samples or drop them. Members keep their names, order, header and data bytes
    (copied as byte ranges, in bounded memory), except: a sample's KEY.json gets its fields merged in and
    re-serialised (its header keeps every field but size and checksum; a field it has already raises
    FieldExists unless `replace_fields`), or a new KEY.json is created after the sample's last member (no
    fields: KEY.json is kept as it is); `txts[i]`, when not None, replaces (or creates) KEY.txt of sample
    i, for a view whose caption is a rewrite. `check_headers` is given the tar's Headers digest once every
    member is walked, and raises to refuse a tar that changed since it was planned.

    Every error raises before the end of the archive is written, so the output cannot pass for whole;
    without one it ends as tarfile ends an archive: two zero blocks, padded to a 10240-byte record. The
    caller handles atomic files."""
    if txts is not None and len(txts) != len(samples):
        raise ValueError(f"{src}: {len(txts)} captions given for {len(samples)} samples")
    _check_fields(src, samples)
    with storage.open_file(src, "rb", buffering=16 * BLOCK) as fileobj:  # tarfile reads the odd non-plain header through it
        tar_format = _tar_format(fileobj)
        tar = _open_tar(src, fileobj)
        window = _Window(fileobj)
        out = _Output(dst_fileobj, window, src)
        try:
            headers = _Copy(tar, src, out, window, tar_format, samples, txts, replace_fields).run()
            if check_headers is not None:
                check_headers(headers.hexdigest())
            out.close()
        finally:
            out.release()


def _check_fields(src: str | Path, samples: Sequence[tuple[str, dict[str, str]]]) -> None:
    """Rewrite fields must be flat strings: that is what open_clip's --json-text-key reads."""
    names = itertools.chain.from_iterable(fields for _, fields in samples)
    values = itertools.chain.from_iterable(fields.values() for _, fields in samples)
    if set(map(type, names)) | set(map(type, values)) <= {str}:  # the usual case, tested without a loop in Python
        return
    for key, fields in samples:
        bad = [name for name, value in fields.items() if not (isinstance(name, str) and isinstance(value, str))]
        if bad:
            raise TypeError(f"{src}: sample {key!r}: fields {bad[:3]} are not flat string fields")


def _tar_format(fileobj: IO[bytes]) -> int:
    """GNU if the input's first header carries GNU magic, else PAX (which writes plain ustar headers
    for members that fit); the format of the headers built with tarfile."""
    first = fileobj.read(BLOCK)
    fileobj.seek(0)
    return tarfile.GNU_FORMAT if first[257:265] == tarfile.GNU_MAGIC else tarfile.PAX_FORMAT


@dataclass
class _Pending:
    """The sample being copied: its key, first member (metadata for created members), extensions seen,
    the fields to add and the KEY.txt to write (None: kept)."""

    key: str
    first: _Member
    fields: dict[str, str]
    txt: str | None
    exts: set[str] = field(default_factory=set)


class _Copy:
    """One copy_with_fields: walks the source's members, keeps or replaces each, creates the missing ones."""

    def __init__(self, tar: tarfile.TarFile, src: str | Path, out: "_Output", window: _Window, tar_format: int,
                 samples: Sequence[tuple[str, dict[str, str]]], txts: Sequence[str | None] | None, replace: bool):
        self.tar, self.src, self.out, self.window, self.format = tar, src, out, window, tar_format
        self.samples, self.txts, self.replace = samples, txts, replace

    def run(self) -> Headers:
        """Copy every member in order; returns the digest of their headers. A sample's created members
        are written when the next sample starts (or at the end)."""
        headers = Headers()
        current: _Pending | None = None
        count = 0
        for member, key, ext, starts in _place(_walk(self.tar, self.src, self.window, headers), self.src):
            if key is None:
                self.out.keep(member.end)
                continue
            if starts:
                self._finish(current)
                current = self._start(count, key, member)
                count += 1
            current.exts.add(ext)
            self._member(member, current, ext)
        self._finish(current)
        if count != len(self.samples):
            raise TarError(f"{self.src}: holds {count} samples where its rewrites have {len(self.samples)}: the tar "
                           "changed since they were made, or they belong to another plan")
        return headers

    def _start(self, index: int, key: str, first: _Member) -> _Pending:
        """The tar's sample `index`, which starts at member `first`, with its entry of the rewrites."""
        if index >= len(self.samples):
            raise TarError(f"{self.src}: member {first.name!r}: more than the {len(self.samples)} samples its rewrites "
                           "have: the tar changed since they were made, or they belong to another plan")
        expected, fields = self.samples[index]
        if key != expected:
            raise TarError(f"{self.src}: member {first.name!r}: sample {index} has key {key!r} where its rewrites have "
                           f"{expected!r}: the tar changed since they were made, or they belong to another plan")
        return _Pending(key, first, fields, self.txts[index] if self.txts is not None else None)

    def _member(self, member: _Member, sample: _Pending, ext: str) -> None:
        """Keep a sample's member as it is, or write its replacement."""
        if ext == "json" and sample.fields:
            merged = _merged_json(self._data(member), sample.fields, self.src, member.name, self.replace)
            self._replace(member, merged)
        elif ext == "txt" and sample.txt is not None:
            self._replace(member, sample.txt.encode("utf-8"))
        else:
            self.out.keep(member.end)

    def _data(self, member: _Member) -> bytes:
        """The whole data of a (small, text) member."""
        if member.info is not None:
            return _read_member(self.tar, member.info, self.src)
        data = self.window.read(member.offset_data, member.size)
        if len(data) != member.size:
            raise TarError(f"{self.src}: member {member.name!r}: truncated data ({len(data)} of {member.size} bytes)")
        return data

    def _replace(self, member: _Member, data: bytes) -> None:
        """`member`'s header blocks and data, in place of the source's, for new data."""
        self.out.keep(member.offset)
        self.out.write(_header(member, len(data), self.format) + data + _padding(len(data)), skip_to=member.end)

    def _finish(self, sample: _Pending | None) -> None:
        """After a sample's last member: create the KEY.txt / KEY.json it lacks but has content for."""
        if sample is None:
            return
        if "txt" not in sample.exts and sample.txt is not None:
            self._create(sample, "txt", sample.txt.encode("utf-8"))
        if "json" not in sample.exts and sample.fields:
            self._create(sample, "json", _dump_json(sample.fields))

    def _create(self, sample: _Pending, ext: str, data: bytes) -> None:
        """A new member KEY.ext after what is written so far."""
        info = _created(sample, ext)
        info.size = len(data)
        self.out.write(info.tobuf(self.format, "utf-8", "surrogateescape") + data + _padding(len(data)))


def _dump_json(value: dict) -> bytes:
    return _JSON_ENCODER.encode(value).encode("utf-8")


def _merged_json(data: bytes, fields: dict[str, str], path: str | Path, member: str, replace: bool) -> bytes:
    """KEY.json's bytes with `fields` added. When it has none of their names, its own bytes are kept and the
    fields appended before its closing brace (as json.dumps writes them); else, with `replace`, the merged
    object is written anew, the fields' values replacing the old ones (without: FieldExists). Either way
    it must parse as an object."""
    meta = _parse_json(data, path, member)
    clash = meta.keys() & fields.keys()
    if clash:
        if not replace:
            raise FieldExists(f"{path}: member {member!r} already has the field {', '.join(sorted(clash))}")
        return _dump_json({**meta, **fields})
    text = data.rstrip()  # what follows the object's `}` is JSON whitespace: it parsed
    return text[:-1] + (b", " if meta else b"") + _dump_json(fields)[1:]


def _padding(size: int) -> bytes:
    return tarfile.NUL * (_blocks(size) - size)


def _header(member: _Member, size: int, tar_format: int) -> bytes:
    """Header blocks of a member given new data of `size` bytes. A plain block keeps every byte but its
    size and checksum (building it with tarfile cost more than the rest of the member's copy); others are
    built by tarfile."""
    if member.block is not None and size < _MAX_SIZE_FIELD:
        return _with_size(member.block, size)
    return _replaced(member.tarinfo(), size).tobuf(tar_format, "utf-8", "surrogateescape")


def _with_size(block: bytes, size: int) -> bytes:
    """A plain header block with another size, its checksum written as tarfile writes it (the old one is
    right, see _plain: only the size field's bytes change the sum)."""
    field_ = b"%011o\0" % size
    chksum = int(block[148:156].strip(b" \0") or b"0", 8) - sum(block[124:136]) + sum(field_)
    return block[:124] + field_ + block[136:148] + b"%06o\0 " % chksum + block[156:]


def _replaced(info: tarfile.TarInfo, size: int) -> tarfile.TarInfo:
    """A member's header for new data of `size` bytes (a stale pax size would corrupt the archive)."""
    new = copy.copy(info)
    new.pax_headers = {k: v for k, v in info.pax_headers.items() if k != "size"}
    new.size = size
    return new


def _created(sample: _Pending, ext: str) -> tarfile.TarInfo:
    """Header of a member created for a sample: `KEY.ext`, metadata (mtime, owner, mode) of its first member."""
    first = sample.first.tarinfo()
    info = tarfile.TarInfo(f"{sample.key}.{ext}")
    info.mtime, info.mode = first.mtime, first.mode
    info.uid, info.gid, info.uname, info.gname = first.uid, first.gid, first.uname, first.gname
    return info
