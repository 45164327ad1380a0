"""The interface every export format implements: one module per format, registered in __init__.py.

An export is written shard by shard: each format names the files a shard gives (`shard_files`) and
writes them (`write_shard`); once every shard's files are there, `finish` writes what spans the whole
export (a dataset card, sizes.json, one CSV joined from the shards' parts). Files under PARTS are the
export's own scratch: staged, never published.
"""
from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import pyarrow as pa

from .. import storage
from ..inputs import plan
from ..workdir import layout
from ..workdir.manifest import Manifest


PARTS = "parts"
READ_BYTES = 64 << 20  # a chunk of joined rows holds about this much input data, whatever the row size
MAX_READ_ROWS = 8192


class ExportError(RuntimeError):
    pass


@dataclass
class ExportOptions:
    image_column: str | None = None  # csv/laclip: the input column holding each row's image path
    extract_images: Path | None = None  # csv/laclip: write images held in tars or parquet here, named by key
    captions_only: bool = False  # only the key, the original caption and the rewrites
    views: list[str] = field(default_factory=list)  # wds: also write tars whose .txt is this rewrite column
    separator: str = "\t"  # csv
    replace_json_fields: bool = False  # wds: a KEY.json that has a rewrite field already gets it replaced (else refused)


@dataclass
class ExportJob:
    """What every format reads: the plan, each source's settings and shard states, and the options."""
    work: layout.Work
    manifest: Manifest
    settings: dict[str, dict]  # source -> its recorded settings
    done: dict[str, set[int]]  # source -> shards whose rewrites are committed and intact
    options: ExportOptions

    @property
    def key_column(self) -> str:
        return self.manifest.key_column or layout.KEY

    def set_columns(self) -> dict[str, list[str]]:
        """Each set's rewrite columns: `caption_<set>` (`caption_<set>_<i>` when n > 1), in the sets' order."""
        return {src: [layout.export_column(src, i, s["num_rewrites"]) for i in range(s["num_rewrites"])]
                for src, s in self.settings.items()}

    def rewrite_columns(self) -> list[str]:
        return [c for columns in self.set_columns().values() for c in columns]

    def where(self, shard: int) -> str:
        """A shard and its input files, for messages."""
        names = [Path(self.manifest.files[p.file].path).name for p in self.manifest.shards[shard]]
        return f"shard {layout.shard_id(shard)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"

    def row_schema(self, columns: list[str] | None = None) -> pa.Schema:
        """The schema of what `rows(shard, columns)` yields, known without a row (a shard may have none)."""
        fields = list(self.manifest.schema) + ([pa.field(layout.KEY, pa.string())] if self.manifest.key_column is None else [])
        if columns is not None:
            fields = [next(f for f in fields if f.name == c) for c in columns]
        return pa.schema(fields + [pa.field(c, pa.string()) for c in self.rewrite_columns()],
                         metadata=self.manifest.schema.metadata)

    def batch_rows(self, shard: int) -> int:
        """Rows per chunk so that a chunk holds about READ_BYTES of input data (images included)."""
        per_row = 0.0
        for piece in self.manifest.shards[shard]:
            f = self.manifest.files[piece.file]
            if f.format == "parquet" and f.rows:
                meta = storage.parquet_file(self.manifest.data_path(f)).metadata
                size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
                per_row = max(per_row, size / f.rows)
        return max(1, min(MAX_READ_ROWS, int(READ_BYTES / per_row) if per_row else MAX_READ_ROWS))

    def rows(self, shard: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The shard's input rows (all columns, or `columns` of them) joined with every rewrite column; a
        source whose shard is not done gives nulls."""
        batch = self.batch_rows(shard)
        sidecars = {src: _aligned(self.work, src, shard, self.manifest.shard_rows(shard), batch, shard in self.done[src])
                    for src in self.settings}
        for base in plan.iter_shard(self.manifest, shard, batch, columns=None):
            keys = base.column(self.key_column).cast(pa.string())
            table = base if columns is None else base.select(columns)
            for src, chunks in sidecars.items():
                table = _join(table, keys, next(chunks), src, self.settings[src]["num_rewrites"], self.where(shard))
            yield table


    def rewrites(self, shard: int) -> Iterator[pa.Table]:
        """The shard's keys and rewrite columns, read from the sidecars alone (which hold the keys in
        input order), so a format that copies its input as it is need not read it twice."""
        done = [src for src in self.settings if shard in self.done[src]]
        if not done:
            yield from self.rows(shard, [self.key_column])
            return
        rows, batch = self.manifest.shard_rows(shard), MAX_READ_ROWS
        sidecars = {src: _aligned(self.work, src, shard, rows, batch, src in done) for src in self.settings}
        for side in _aligned(self.work, done[0], shard, rows, batch, True):
            keys = side.column(layout.KEY)
            table = pa.table({self.key_column: keys})
            for src, chunks in sidecars.items():
                table = _join(table, keys, next(chunks), src, self.settings[src]["num_rewrites"], self.where(shard))
            yield table


def _aligned(w: layout.Work, source: str, shard: int, rows: int, batch: int, done: bool) -> Iterator[pa.Table | None]:
    """The source's sidecar rows in chunks of `batch` rows (None chunks when the shard is not done)."""
    if not done:
        for _ in range(plan.chunk_count(rows, batch)):
            yield None
        return
    path = w.rewrite_file(source, shard)
    try:
        reader = storage.parquet_file(path)  # no thread pool: starting one costs an export worker time on every shard
        batches = (pa.Table.from_batches([b]) for b in reader.iter_batches(batch_size=batch, use_threads=False))
        yield from plan.rechunk(batches, batch)
    except (pa.ArrowException, OSError) as e:
        raise ExportError(f"{path}: cannot read the rewrites ({e})") from None


def _join(table: pa.Table, keys: pa.ChunkedArray, side: pa.Table | None, source: str, n: int, where: str) -> pa.Table:
    names = [layout.export_column(source, i, n) for i in range(n)]
    if side is None:
        for name in names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        return table
    if side.num_rows != table.num_rows or not side.column(layout.KEY).equals(keys):
        ours, theirs = side.column(layout.KEY).to_pylist(), keys.to_pylist()
        row = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        found = (f"the rewrites' key {ours[row]!r} stands where the input's row has key {theirs[row]!r}" if row is not None
                 else f"the rewrites hold {len(ours)} rows where the input has {len(theirs)}")
        raise ExportError(f"{source} rewrites of {where} do not line up with its input rows "
                          f"({found}): the input changed after the run, or the rewrites were made from another plan; "
                          "plan again into a new work dir if the input changed, else rerun the shard with --overwrite")
    for i, name in enumerate(names):
        table = table.append_column(name, side.column(layout.rewrite_column(i, n)))
    return table


Staged = Callable[[str], Path]  # where a file of the export (a path relative to OUT) is written


class Rows(NamedTuple):
    """Rows of an export read together: keys, captions and each rewrite column's texts (None: no rewrite)."""
    shard: int | None  # the plan's shard, where the export keeps it (hf)
    keys: list
    captions: list[str | None]
    rewrites: dict[str, list[str | None]]


def rewrite_columns(names: Sequence[str], where: Path) -> list[str]:
    """The rewrite columns of an export: the `caption_<set>` ones every format writes after the input's own."""
    columns = list(itertools.takewhile(lambda n: n.startswith(layout.EXPORT_PREFIX), reversed(names)))[::-1]
    if not columns:
        raise ExportError(f"{where}: no rewrite column ({layout.EXPORT_PREFIX}<set>) after the input's columns")
    return columns


class ExportFormat(ABC):
    name: str = ""
    options: tuple[str, ...] = ()  # the ExportOptions fields this format reads (others are refused)

    def check(self, job: ExportJob) -> None:
        """Refuse options or inputs this format cannot export, before anything is written."""

    @abstractmethod
    def shard_files(self, job: ExportJob, shard: int) -> list[str]:
        ...

    @abstractmethod
    def write_shard(self, job: ExportJob, shard: int, staged: Staged) -> None:
        """Write the shard's files, each committed atomically (a killed export keeps the finished ones)."""
        ...

    def final_files(self, job: ExportJob) -> list[str]:
        return []

    @abstractmethod
    def reader(self, folder: Path, files: list[str]):
        """What reads back the export this format published in `folder` (`files`, as its record lists
        them): `columns` (its rewrite columns), `total` (its parts, or None) and `rows(wanted)`, which
        yields Rows. The report reads an export through it."""
        ...

    def finish(self, job: ExportJob, staged: Staged, summary: dict) -> None:
        """Write the final files from the staged shard files."""
