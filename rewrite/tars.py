"""Webdataset tar I/O (img2dataset / LAION / DataComp shards), with the stdlib only.

A sample is the run of adjacent members sharing a key; the key is the member path up to the first dot
of its basename, exactly as webdataset groups them (`dir/abc.seg.png` -> key `dir/abc`, extension
`seg.png`), so that what we read and write is what open_clip's loader sees. Samples keep tar order
(img2dataset writes them in download-completion order, not key order). A key may come back later in the
tar as a whole second sample (one sharing an extension with the first), which webdataset reads as a
sample of its own, and so do we; members of one sample that other samples split apart are refused.
Samples are told apart by position, never by key.

Reading touches only the text members: tarfile in random-access mode seeks over image data, so a caption
scan of a shard reads its headers and captions, not its images. Writing (copy_with_fields) copies the
source's bytes as they are, member ranges at a time, and builds only the members it changes. Every format
problem raises `TarError` naming the tar file and the member.
"""
from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import os
import re
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

BLOCK = tarfile.BLOCKSIZE
TEXT_EXTS = ("txt", "json")
COPY_BUFFER = 1 << 18  # piece size of copies (a member's data is never held whole)
WRITEBACK_STEP = 8 << 20  # bytes of a copy's output after which its writeback is started (see _Output)

# webdataset's tariterators.base_plus_ext: the key may hold folders, its basename part holds no dot.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_UNSAFE = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"  # Unicode's Cc and Cs (surrogates stand for bytes that are not UTF-8)
_UNSAFE_CHAR = re.compile(f"[{_UNSAFE}]")
_PLAIN_KEY = re.compile(rf"[^/\\{_UNSAFE}]+(?:/[^/\\{_UNSAFE}]+)*")  # no empty part, backslash or unsafe character
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")


class TarError(ValueError):
    """A shard that cannot be read as webdataset samples; the message names the tar and the member."""


class FieldExists(TarError):
    """A KEY.json that already has a field the copy was asked to add (see copy_with_fields)."""


@dataclass
class Sample:
    """One webdataset sample: its key, caption (None when it has none), parsed KEY.json, member names."""

    key: str
    caption: str | None
    json: dict | None
    members: list[str] = field(default_factory=list)


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


# ---------------------------------------------------------------------------------------------------
# shard patterns

def expand_braces(pattern: str) -> list[str]:
    """Expand bash/webdataset brace patterns (`{00000..00127}`, `{a,b}`, several, nested) in order.

    Shard lists are given this way on the command line; zero padding is kept as bash keeps it. Braces
    that are neither a range nor a comma list stay literal, as in bash."""
    start, end = _first_group(pattern)
    if start < 0:
        return [pattern]
    prefix, body, suffix = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
    alternatives = _range_items(body)
    if alternatives is None:
        parts = _split_top_commas(body)
        if len(parts) < 2:  # `{x}`: literal; expand what follows it
            return [prefix + "{" + body + "}" + rest for rest in expand_braces(suffix)]
        alternatives = [item for part in parts for item in expand_braces(part)]
    tails = expand_braces(suffix)
    return [prefix + alt + tail for alt in alternatives for tail in tails]


def _first_group(pattern: str) -> tuple[int, int]:
    """Index of the first `{` that has a matching `}` (nesting counted), and of that `}`; -1s if none."""
    for start, char in enumerate(pattern):
        if char != "{":
            continue
        depth = 0
        for end in range(start, len(pattern)):
            depth += {"{": 1, "}": -1}.get(pattern[end], 0)
            if depth == 0:
                return start, end
    return -1, -1


def _split_top_commas(body: str) -> list[str]:
    """Split a brace body at the commas that are not inside a nested group."""
    parts, depth, current = [], 0, []
    for char in body:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current.append(char)
    parts.append("".join(current))
    return parts


def _range_items(body: str) -> list[str] | None:
    """`a..b[..step]` as bash expands it (either end with a leading zero pads all); None if not a range."""
    match = _RANGE.match(body)
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    step = abs(int(match.group(3) or 1)) or 1
    padded = any(re.match(r"^-?0\d", end) for end in match.group(1, 2))
    width = max(len(match.group(1)), len(match.group(2))) if padded else 0
    numbers = range(first, last + 1, step) if first <= last else range(first, last - 1, -step)
    return [f"{n:0{width}d}" for n in numbers]


# ---------------------------------------------------------------------------------------------------
# keys

def split_member(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name by webdataset's rule; None for names webdataset skips.

    Those are names without a dot in the basename and top-level `__meta__` files."""
    if "/" not in name and name.startswith("__") and name.endswith("__"):
        return None
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2)) if match else None


def check_key(key: str, tar: str | Path, member: str, text_exts: tuple[str, ...] = TEXT_EXTS,
              ext: str | None = None) -> None:
    """Refuse a key that is unsafe as a file name or that consumers would split differently.

    Keys become file and folder names (exports, views), so one that is absolute, holds a `..` (or `.`
    or empty) part, a backslash, or a control character could write outside its folder or alias another
    key. `img.001.txt` is a key with a dot: webdataset reads it as key `img`, extension `001.txt`, so its
    caption would be lost; refuse it rather than guess. `ext`: the member's extension, when the caller has
    split its name already."""
    ext = name_ext(member) if ext is None else ext
    _refuse_key(_key_problem(key) or _dot_problem(key, ext, text_exts), key, tar, member)


def _dot_problem(key: str, ext: str, text_exts: tuple[str, ...] = TEXT_EXTS) -> str | None:
    """Why a member of `key` with extension `ext` shows a dotted key (its text would be lost), or None."""
    if "." in ext and ext.lower().rsplit(".", 1)[1] in text_exts:
        return f"holds a dot in its key ({ext!r} is read as the extension of key {key!r})"
    return None


def _refuse_key(problem: str | None, key: str, tar: str | Path, member: str) -> None:
    if problem is not None:
        raise TarError(f"{tar}: member {member!r}: unsafe sample key {key!r}: {problem}")


def name_ext(member: str) -> str:
    """The extension part of a member name (after the first dot of its basename), '' if none."""
    split = split_member(member)
    return split[1] if split else ""


def _key_problem(key: str) -> str | None:
    """Why `key` is not a safe relative path, or None."""
    if "." not in key and _PLAIN_KEY.fullmatch(key):  # most keys: one test (a key has one per sample)
        return None
    if not key:
        return "empty"
    if key.startswith("/"):
        return "absolute path"
    if "\\" in key:
        return "backslash"
    if _UNSAFE_CHAR.search(key):
        return "control character or bytes that are not UTF-8"
    parts = key.split("/")
    if ".." in parts:
        return "'..' part"
    if "" in parts or "." in parts:
        return "empty or '.' part"
    return None


# ---------------------------------------------------------------------------------------------------
# reading

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


def _member_named(members: list[tarfile.TarInfo], ext: str) -> str:
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


def _sample(key: str, members: list[tarfile.TarInfo], texts: dict[str, bytes],
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
    fileobj = _CountingFile(path, counter)
    try:
        return sum(1 for _ in _groups(_open_tar(path, fileobj), path, read_exts=(), headers=headers))
    finally:
        fileobj.close()


def stats_count(path: str | Path) -> int | None:
    """Samples in a shard as img2dataset recorded them beside it, without opening the tar.

    `NNNNN_stats.json` field `successes`, else the rows of `NNNNN.parquet` whose `status` is "success"
    (only that column is read); None when neither is there or readable."""
    path = Path(path)
    stem = path.name[: -len(".tar")] if path.name.endswith(".tar") else path.stem
    count = _stats_json_count(path.with_name(f"{stem}_stats.json"))
    return count if count is not None else _parquet_count(path.with_name(f"{stem}.parquet"))


def _stats_json_count(stats: Path) -> int | None:
    """`successes` of an img2dataset stats file, or None."""
    try:
        value = json.loads(stats.read_text(encoding="utf-8")).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _parquet_count(parquet: Path) -> int | None:
    """Rows with status "success" in an img2dataset shard parquet, or None."""
    if not parquet.is_file():
        return None
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        column = pq.read_table(parquet, columns=["status"]).column("status")
        return int(pc.sum(pc.equal(column, "success")).as_py() or 0)
    except Exception:  # noqa: BLE001 - any unreadable parquet means "unknown", the caller then counts the tar
        return None


# ---------------------------------------------------------------------------------------------------
# writing
#
# The output is the source's bytes: each member kept as it is goes out as the byte range it fills in the
# source (header blocks and data), consecutive ones as one range; only the KEY.json / KEY.txt members
# that change or are created are built. Plain header blocks are parsed here, since tarfile's parsing
# (and rebuilding) of every header cost more than copying the bytes; any other header (PAX, GNU long
# names, folders, links) and the end of the archive are left to tarfile.

WINDOW = 1 << 19  # bytes of the source read at a time, into one reused buffer (see _Window)
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_OCTAL = re.compile(rb" *[0-7]*[ \0]*")  # a number field in a form that tarfile reads as this octal number
# size and checksum as tarfile and GNU tar write them ("%011o\0", "%06o\0 "), type '0' or NUL: one match
_USUAL_HEADER = re.compile(rb"(?s).{124}([0-7]{11})\0.{12}[0-7]{6}\0 ([0\0])")
_FIXED_FIELDS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))  # mode .. devminor
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps(value, ensure_ascii=False), made once
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
    with open(src, "rb", buffering=16 * BLOCK) as fileobj:  # tarfile reads the odd non-plain header through it
        tar_format = _tar_format(fileobj)
        source = _open_tar(src, fileobj)
        window = _Window(fileobj.fileno())
        out = _Output(dst_fileobj, window, src)
        try:
            headers = _Copy(source, src, out, window, tar_format, samples, txts, replace_fields).run()
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

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, bytearray(WINDOW)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0  # the source bytes [start, end) are in the buffer
        self.before_move = lambda: None

    def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of the source, fewer at its end."""
        if offset < self.start or offset + size > self.end:
            if size > WINDOW:
                return os.pread(self.fd, size, offset)
            self.before_move()
            self.start = offset
            self.end = offset + os.preadv(self.fd, [self.buffer], offset)
        return bytes(self.view[offset - self.start:min(offset + size, self.end) - self.start])


def _walk(tar: tarfile.TarFile, path: str | Path, window: _Window) -> Iterator[_Member]:
    """The members in order, as _members gives them: a plain header block (see _plain) is parsed here,
    any other is read by tarfile, placed at it; then the end-of-archive check."""
    offset, checked = None, set()
    while True:
        member = None
        if offset is not None and not tar.pax_headers:  # a global PAX header changes how tarfile reads all that follows
            member = _plain_member(window.read(offset, BLOCK), offset, checked)
        if member is None:
            if offset is not None:
                tar.offset = offset
            info = _next_member(tar, path)  # the first one was read when `tar` was opened
            if info is None:
                break
            member = _Member.parsed_by_tarfile(info, tar.offset)
        yield member
        offset = member.end
    _check_end(tar, path)


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

    def __init__(self, source: tarfile.TarFile, src: str | Path, out: "_Output", window: _Window, tar_format: int,
                 samples: Sequence[tuple[str, dict[str, str]]], txts: Sequence[str | None] | None, replace: bool):
        self.source, self.src, self.out, self.window, self.format = source, src, out, window, tar_format
        self.samples, self.txts, self.replace = samples, txts, replace

    def run(self) -> Headers:
        """Copy every member in order; returns the digest of their headers. A sample's created members
        are written when the next sample starts (or at the end)."""
        keys, headers = _Keys(self.src), Headers()
        current: _Pending | None = None
        count = 0
        for member in _walk(self.source, self.src, self.window):
            headers.add(member.name, member.size, member.mtime)
            split = split_member(member.name) if member.regular else None
            if split is None:
                self.out.keep(member.end)
                continue
            key, ext = split
            if current is None or key != current.key:
                check_key(key, self.src, member.name, ext=ext)
                self._finish(current, keys)
                current = self._start(count, key, member)
                count += 1
            else:  # the key itself was checked at the sample's first member
                _refuse_key(_dot_problem(key, ext), key, self.src, member.name)
            ext = ext.lower()
            if ext in current.exts:
                raise TarError(f"{self.src}: member {member.name!r}: a second {ext!r} member for sample {key!r}")
            current.exts.add(ext)
            self._member(member, current, ext)
        self._finish(current, keys)
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
            return _read_member(self.source, member.info, self.src)
        data = self.window.read(member.offset_data, member.size)
        if len(data) != member.size:
            raise TarError(f"{self.src}: member {member.name!r}: truncated data ({len(data)} of {member.size} bytes)")
        return data

    def _replace(self, member: _Member, data: bytes) -> None:
        """`member`'s header blocks and data, in place of the source's, for new data."""
        self.out.keep(member.offset)
        self.out.write(_header(member, len(data), self.format) + data + _padding(len(data)), skip_to=member.end)

    def _finish(self, sample: _Pending | None, keys: _Keys) -> None:
        """After a sample's last member: refuse a split sample, create the KEY.txt / KEY.json it lacks but
        has content for."""
        if sample is None:
            return
        keys.ended(sample.key, sample.exts, sample.first.name)
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


class _Output:
    """The output tar, written in order: source byte ranges kept as they are (coalesced until something
    else is written) and new bytes. A kept range's part in the source's window is a slice of it; parts
    outside it (a member bigger than the window) are read in COPY_BUFFER pieces. A regular file gets one
    os.writev per COPY_BUFFER bytes gathered, through its descriptor (os.sendfile of each range between
    two rewritten KEY.json members measured slower: 26 vs 19 ms a 59 MB shard), and every time the
    window moves (the slices gathered are of its buffer); any other file object gets a write() per piece.

    Every WRITEBACK_STEP bytes written to a regular file, the kernel is told to start writing them to disk
    (posix_fadvise DONTNEED, which also lets it drop them from the page cache once written): the fsync
    that commits the tar then finds most of it on disk, written while the copy went on (measured: 58 to
    47 ms a 59 MB shard, copy and fsync), and an export of many GB does not fill the page cache with
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
            data = os.pread(self.window.fd, min(end - start, COPY_BUFFER), start)
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


def sample_images(path: str | Path, exts: tuple[str, ...],
                  check_headers: Callable[[str], None] | None = None) -> Iterator[tuple[str, str, IO[bytes]] | None]:
    """Each sample of a shard in the order the reader gives them (one per row): (where it is, extension in
    lower case, a reader of its data) of its first member with an extension in `exts`, or None when it
    has none. A reader is valid until the next sample is asked for. After the last sample, the digest
    of the member headers walked goes to `check_headers` (see Headers), which refuses a changed tar."""
    headers = Headers()
    with open(path, "rb") as fileobj:
        tar = _open_tar(path, fileobj)
        for _, members, _ in _groups(tar, path, read_exts=(), headers=headers):
            image = next((m for m in members if name_ext(m.name).lower() in exts), None)
            if image is None:
                yield None
                continue
            yield f"{path}: member {image.name!r}", name_ext(image.name).lower(), tar.extractfile(image)
    if check_headers is not None:
        check_headers(headers.hexdigest())
