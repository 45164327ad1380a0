"""Input discovery: the files that paths, folders, glob patterns and brace ranges name, local or at a URL
of a remote store, and the rule that a work dir lies apart from its inputs."""
from __future__ import annotations

import glob
import itertools
from pathlib import Path
from typing import Sequence

from .. import storage
from ..tars import expand_braces
from ..workdir import outputs
from ..workdir.manifest import PlanError
from . import SUFFIXES, for_path


def discover(inputs: Sequence[str]) -> list[Path]:
    """Files named by paths, folders (searched recursively), glob patterns or brace ranges
    (`shards/{00000..00127}.tar`), local or at a URL of a remote store (s3://, https://, ...), in a
    stable order."""
    if not inputs:
        raise PlanError("no input given")
    known = ", ".join(SUFFIXES)
    found: list[Path] = []
    for arg in inputs:
        if storage.is_remote(arg) and storage.redact(arg) != arg:
            raise PlanError(f"input {storage.redact(arg)}: the URL holds a credential (user:password@ or a signed "
                            "query), which the plan would record: give it through the environment or "
                            "--storage-option instead")
        for one in expand_braces(arg):
            path = storage.location(one)
            if glob.has_magic(one) and storage.is_remote(one):  # a listing, not a lookup of a name with a `*`
                files = [p for p in storage.glob_pattern(one) if for_path(p)]
                if not files:
                    raise PlanError(f"input pattern {storage.redact(one)} matches no {known} files")
            elif storage.is_file(path):
                if not for_path(path):
                    raise PlanError(f"input {storage.redact(one)}: unsupported file type {path.suffix!r} (use {known})")
                files = [path]
            elif storage.is_dir(path):
                files = sorted(p for p in storage.glob(path, "**/*")
                               if for_path(p) and storage.is_file(p) and not _beside_its_tar(p))
                if not files:
                    raise PlanError(f"input folder {storage.redact(one)} holds no {known} files")
            elif glob.has_magic(one):
                files = [p for p in storage.glob_pattern(one) if for_path(p)]
                if not files:
                    raise PlanError(f"input pattern {one} matches no {known} files")
            else:
                raise PlanError(f"input path {storage.redact(one)} does not exist" + (f" (from {arg})" if one != arg else ""))
            for f in files:
                if not storage.readable(f):
                    raise PlanError(f"input file {f} is not readable")
            found += files
    unique = {str(p): p for p in (p if storage.is_remote(p) else p.resolve() for p in found)}
    return list(unique.values())


def _beside_its_tar(path: Path) -> bool:
    """img2dataset writes NNNNN.parquet (each sample's metadata, failures included) beside NNNNN.tar: a
    folder of tars is read from the tars, not from these too."""
    return path.suffix.lower() == ".parquet" and storage.is_file(path.with_suffix(".tar"))


def input_roots(inputs: Sequence[str]) -> list[Path]:
    """Each input argument as absolute paths: a file, a folder; a recursive glob's folder before its first
    wildcard (anything below it may match again), a plain glob's matched files (a folder beside them
    cannot: `rewrite shard "*.parquet" --out work` is fine)."""
    roots = []
    for one in (one for arg in inputs for one in expand_braces(arg)):
        if storage.is_remote(one):  # its folder before the first wildcard
            roots.append(storage.location(one if not glob.has_magic(one) else _before_magic(one)))
            continue
        path = Path(one)
        if storage.exists(path) or not glob.has_magic(one):
            roots.append(path.resolve())
        elif "**" in one:
            roots.append(Path(*itertools.takewhile(lambda part: not glob.has_magic(part), path.parts)).resolve())
        else:
            roots += [p.resolve() for p in storage.glob_pattern(one, recursive=False)]
    return roots


def _before_magic(pattern: str) -> str:
    """The folder of a pattern before its first wildcard: `s3://b/shards/*.tar` -> `s3://b/shards`."""
    first = min(i for i, c in enumerate(pattern) if c in "*?[")
    return pattern[:first].rsplit("/", 1)[0]


def check_work_dir(root: Path, inputs: Sequence[Path]) -> None:
    """A work dir apart from its inputs: rewrites and conversions never land among the user's files."""
    for given in inputs:
        found = outputs.relation(root, given)
        if found == "is":
            what = "is the input folder" if storage.is_dir(given) else "is the input file"
        elif found == "lies inside":
            what = "lies inside the input folder"
        else:
            continue
        raise PlanError(f"--out {root} {what} {given}: choose a work dir outside the inputs")
