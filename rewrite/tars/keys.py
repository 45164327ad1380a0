"""Sample keys and member names, and the errors every format problem raises.

A sample is the run of adjacent members sharing a key; the key is the member path up to the first dot
of its basename, exactly as webdataset groups them (`dir/abc.seg.png` -> key `dir/abc`, extension
`seg.png`), so that what we read and write is what open_clip's loader sees. Every format problem raises
`TarError` naming the tar file and the member.
"""
from __future__ import annotations

import re
from pathlib import Path

TEXT_EXTS = ("txt", "json")

# webdataset's tariterators.base_plus_ext: the key may hold folders, its basename part holds no dot.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_UNSAFE = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"  # Unicode's Cc and Cs (surrogates stand for bytes that are not UTF-8)
_UNSAFE_CHAR = re.compile(f"[{_UNSAFE}]")
_PLAIN_KEY = re.compile(rf"[^/\\{_UNSAFE}]+(?:/[^/\\{_UNSAFE}]+)*")  # no empty part, backslash or unsafe character


class TarError(ValueError):
    """A shard that cannot be read as webdataset samples; the message names the tar and the member."""


class FieldExists(TarError):
    """A KEY.json that already has a field the copy was asked to add (see copy_with_fields)."""


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
