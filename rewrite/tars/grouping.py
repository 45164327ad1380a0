"""The one sample grouper behind every reading of a tar, built on the member walker (walk.py), the way
webdataset builds on tar_file_iterator + group_by_keys: each member placed in its sample, keys checked.

Samples keep tar order (img2dataset writes them in download-completion order, not key order). A key may
come back later in the tar as a whole second sample (one sharing an extension with the first), which
webdataset reads as a sample of its own, and so do we; members of one sample that other samples split
apart are refused. Samples are told apart by position, never by key.
"""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from .keys import TEXT_EXTS, TarError, _dot_problem, _refuse_key, check_key, split_member
from .walk import Headers, _Member, _read_member, _walk


class Placed(NamedTuple):
    """A member and its place: the key and extension (lower case) of its sample, and whether it starts
    one; key None for a member of no sample (not a regular file, or a name webdataset skips)."""

    member: _Member
    key: str | None
    ext: str | None
    starts: bool


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


def _place(members: Iterable[_Member], path: str | Path, text_exts: tuple[str, ...] = TEXT_EXTS) -> Iterator[Placed]:
    """Each member in order with its place. A sample's key is checked at its first member, its split
    (see _Keys) when it ends; a second member with one extension is refused. The consumer sees a sample's
    members as they are walked, so the copy streams and the readers read text data in file order."""
    keys = _Keys(path)
    key, exts, first = None, set(), ""
    for member in members:
        split = split_member(member.name) if member.regular else None
        if split is None:
            yield Placed(member, None, None, False)
            continue
        member_key, ext = split
        starts = member_key != key
        if starts:
            check_key(member_key, path, member.name, text_exts, ext=ext)
            if key is not None:
                keys.ended(key, exts, first)
            key, exts, first = member_key, set(), member.name
        else:  # the key itself was checked at the sample's first member
            _refuse_key(_dot_problem(member_key, ext, text_exts), member_key, path, member.name)
        ext = ext.lower()
        if ext in exts:
            raise TarError(f"{path}: member {member.name!r}: a second {ext!r} member for sample {key!r}")
        exts.add(ext)
        yield Placed(member, key, ext, starts)
    if key is not None:
        keys.ended(key, exts, first)


def _groups(tar: tarfile.TarFile, path: str | Path, read_exts: tuple[str, ...],
            text_exts: tuple[str, ...] = TEXT_EXTS,
            headers: Headers | None = None) -> Iterator[tuple[str, list[_Member], dict[str, bytes]]]:
    """(key, members, {ext: data} of the read members) per sample, in tar order, for the readers; every
    member header is added to `headers`. Text data is read as soon as its header is seen, so the file
    is read front to back."""
    key, members, texts = None, [], {}
    for placed in _place(_walk(tar, path, headers=headers), path, text_exts):
        if placed.key is None:
            continue
        if placed.starts:
            if key is not None:
                yield key, members, texts
            key, members, texts = placed.key, [], {}
        members.append(placed.member)
        if placed.ext in read_exts:
            texts[placed.ext] = _read_member(tar, placed.member.info, path)
    if key is not None:
        yield key, members, texts
