"""The work dir's plan (`manifest.json`): the input files as planned, with their identity, and the rows
of each shard as pieces of them. Written once by `rewrite shard` (inputs/plan.py), read by every command.

A file inside the work dir is recorded relative to it, so the work dir can be moved or copied. Each
input is recorded with its identity (size and the format's digest: see Planned), so that a read refuses
a file that changed since it was planned, naming it, and a `touch` is no change."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from .. import storage
from . import atomic, layout

MANIFEST_VERSION = 2


class PlanError(ValueError):
    """Bad input or a bad plan request: the message names the file, column or option."""


@dataclass(frozen=True)
class Captions:
    """Where a row's caption comes from: `column` names it in the rows (and in a table input); `field`,
    for webdataset input, is the KEY.json field it is read from (None: KEY.txt)."""
    column: str
    field: str | None = None


@dataclass(frozen=True)
class Planned:
    """A file the readers use, as the plan recorded it: its rows and its identity, which a reader checks
    so that rows are never read (or exported beside rewrites made) from a file that changed since: its
    size, and the format's digest of what defines its rows (a parquet footer, a tar's member headers),
    neither of which a `touch` changes. `size` None: a plan made before identities were recorded, not
    checked. `digest` None: the plan did not compute it (a tar counted from img2dataset's stats, so as
    to open no tar); the first read of the whole file then records it in `first_read`, and later reads
    compare with that."""

    data: Path
    rows: int
    size: int | None = None
    digest: str | None = None
    first_read: Path | None = None

    def check_size(self, now: int) -> None:
        """Refuse the file if its size (`now`, as the reader found it) is not the planned one."""
        if self.size is not None and now != self.size:
            raise PlanError(self._changed("planned", f"size {self.size} then, {now} now"))

    def check_digest(self, now: str, how: str) -> None:
        """Refuse the file if `now`, the format's digest of it as just read in full, is not the planned one
        (or the one its first read recorded; recorded now if this is the first). `how`: what differs then,
        in the format's words."""
        if self.size is None:
            return
        if self.digest is not None:
            if now != self.digest:
                raise PlanError(self._changed("planned", how))
        elif self.first_read is not None and now != self._first(now):
            raise PlanError(self._changed("first read", how))

    def _first(self, now: str) -> str:
        """The digest the first full read recorded: `now` when this read is the first. Several readers
        may race: the first to create the record wins, the others compare with it."""
        try:
            return self._recorded()
        except FileNotFoundError:
            pass
        try:
            created = atomic.create_json(self.first_read, {"digest": now, "file": str(self.data)})
        except OSError:  # a work dir this process cannot write to: nothing recorded, nothing to compare with
            return now
        return now if created else self._recorded()

    def _recorded(self) -> str:
        try:
            return json.loads(storage.read_text(self.first_read))["digest"]
        except (ValueError, KeyError, TypeError) as e:
            raise PlanError(f"{self.first_read}: not a valid record of {self.data} ({e!r}): plan again into a new "
                            "work dir") from None

    def _changed(self, since: str, how: str) -> str:
        return (f"input file {self.data} changed since it was {since} ({how}): its rewrites were made from the file "
                "as it was; plan again into a new work dir")


@dataclass(frozen=True)
class InputFile:
    path: str  # the input file (absolute)
    data: str  # the parquet file read (`path`, or its conversion): see Manifest.data_path
    format: str  # the name of its format in inputs.FORMATS
    rows: int
    key_prefix: str  # derived keys are f"{key_prefix}-{row:09d}"
    size: int | None = None  # bytes of `data` when planned; None in plans made before it was recorded (not checked)
    digest: str | None = None  # the format's digest of `data` when planned (None: not taken then; see inputs.Planned)


@dataclass(frozen=True)
class Piece:
    file: int
    start: int
    stop: int


@dataclass
class Manifest:
    caption_column: str
    key_column: str | None  # None: keys are derived from (file, row)
    files: list[InputFile]
    shards: list[list[Piece]]
    schema: pa.Schema  # every input is read as this (see unify); a derived `key` is not in it
    inputs: list[str]  # the input arguments, absolute: a file, a folder, or a glob's folder before its first wildcard
    root: Path = field(compare=False)  # the work dir, absolute; not saved, so the work dir can move
    caption_field: str | None = None  # webdataset inputs: the KEY.json field captions come from (None: KEY.txt)
    version: int = MANIFEST_VERSION
    created: float = field(default_factory=time.time)

    @property
    def captions(self) -> Captions:
        return Captions(self.caption_column, self.caption_field)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def columns(self) -> list[str]:
        """The input columns of a row with columns=None, in order: the schema's, then `key` when derived."""
        return self.schema.names + ([layout.KEY] if self.key_column is None else [])

    def data_path(self, f: InputFile) -> Path:
        """The parquet file read for `f`: recorded relative to the work dir when it lies inside it, else absolute
        (or a URL: a remote input is recorded by its URL, which holds no credential)."""
        return storage.location(f.data) if storage.is_remote(f.data) else self.root / f.data

    def shard_rows(self, shard: int) -> int:
        return sum(p.stop - p.start for p in self.shards[shard])

    def planned(self, index: int) -> Planned:
        """Input file `index` as planned, for a reader to refuse it if it changed since (see inputs.Planned)."""
        f = self.files[index]
        return Planned(self.data_path(f), f.rows, f.size, f.digest, first_read_record(self.root, index, f.path))

    def plan_id(self) -> str:
        """Digest of what defines the rows of every shard (not when it was made)."""
        body = {k: v for k, v in self.to_dict().items() if k != "created"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "created": self.created,
            "caption_column": self.caption_column,
            "caption_field": self.caption_field,
            "key_column": self.key_column,
            "total_rows": self.total_rows,
            "num_shards": self.num_shards,
            "inputs": self.inputs,
            "columns": self.columns,
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode("ascii"),
            # None fields left out: a plan made before they existed keeps its dict, and so its plan_id
            "files": [{k: v for k, v in asdict(f).items() if v is not None} for f in self.files],
            "shards": [[[p.file, p.start, p.stop] for p in s] for s in self.shards],
        }

    @classmethod
    def from_dict(cls, d: dict, root: Path) -> "Manifest":
        return cls(
            caption_column=d["caption_column"],
            caption_field=d.get("caption_field"),
            key_column=d["key_column"],
            files=[InputFile(**f) for f in d["files"]],
            shards=[[Piece(*p) for p in s] for s in d["shards"]],
            schema=pa.ipc.read_schema(pa.py_buffer(base64.b64decode(d["schema"], validate=True))),
            inputs=d["inputs"],
            root=root,
            version=d["version"],
            created=d["created"],
        )

    def save(self, work: layout.Work) -> None:
        atomic.write_json(work.manifest, self.to_dict())


def load_manifest(work: str | Path | layout.Work) -> Manifest:
    work = layout.Work(work)
    if not storage.is_file(work.manifest):
        raise PlanError(f"{work.root} has no shard plan ({work.manifest.name}): run `rewrite shard ... --out {work.root}` first")
    try:
        data = json.loads(storage.read_text(work.manifest))
    except json.JSONDecodeError as e:
        raise PlanError(f"{work.manifest}: not a valid shard plan ({e})") from None
    if data.get("version") != MANIFEST_VERSION:
        raise PlanError(f"{work.manifest}: plan version {data.get('version')} is not {MANIFEST_VERSION} (made by "
                        "another version of rewrite): plan again into a new work dir")
    try:
        return Manifest.from_dict(data, work.root.resolve())
    except (KeyError, TypeError, ValueError) as e:  # ValueError: a bad schema (base64 or Arrow)
        raise PlanError(f"{work.manifest}: not a valid shard plan ({e})") from None


def first_read_record(root: Path, index: int, path: str) -> Path:
    """Where the first full read of input file `index` records its digest when the plan did not take it."""
    return layout.Work(root).inputs / f"{index:05d}-{Path(path).stem}.digest.json"


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_shard_spec(spec: str, num_shards: int) -> list[int]:
    """`0-127`, `7`, `0,3,9-12` or `all` -> sorted shard ids, each checked against the plan."""
    if spec.strip() == "all":
        return list(range(num_shards))
    shards: set[int] = set()
    for part in spec.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise PlanError(f"--shards {spec!r}: {part.strip()!r} is not a shard id or range like 0-127")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise PlanError(f"--shards {spec!r}: range {part.strip()} runs backwards")
        if hi >= num_shards:
            raise PlanError(f"--shards {spec!r}: shard {hi} is not in the plan (shards 0-{num_shards - 1})")
        shards.update(range(lo, hi + 1))
    return sorted(shards)


def format_shard_spec(shards: Sequence[int]) -> str:
    """[0,1,2,5] -> '0-2,5': the inverse of parse_shard_spec."""
    out, run = [], []
    for s in sorted(shards):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)
