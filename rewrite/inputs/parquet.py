"""Parquet inputs, and the parquet files the other formats are converted to: planned from footers alone
(row counts, and a digest of the footer for identity), read by row group, only the columns asked for."""
from __future__ import annotations

import hashlib
from abc import ABC
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from .base import InputFormat
from ..workdir.manifest import Planned, PlanError

CHANGED_FOOTER = "its parquet footer differs: its row groups, columns or their sizes"
_MAGIC = b"PAR1"


def open_file(path: Path | str, opened: pa.NativeFile | None = None) -> pq.ParquetFile:
    """The parquet file at `path` (read through `opened` when given: a file already open)."""
    try:
        return storage.parquet_file(path if opened is None else opened)
    except (pa.ArrowException, OSError) as e:
        raise PlanError(f"input file {path} is not a readable parquet file ({e})") from None


def _open_native(path: Path | str) -> pa.NativeFile:
    try:
        return storage.arrow_file(path)
    except (pa.ArrowException, OSError) as e:
        raise PlanError(f"input file {path} is not a readable parquet file ({e})") from None


def _footer_digest(opened: pa.NativeFile, path: Path | str) -> str:
    """sha256 of a parquet file's footer (its metadata: schema, row groups, each column chunk's offset,
    size and statistics; then its length and magic): it changes with any change of the rows' layout,
    and reading it costs two small reads."""
    size = opened.size()
    tail = opened.read_at(8, size - 8) if size >= 12 else b""
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != _MAGIC or length > size - 12:
        raise PlanError(f"input file {path} is not a readable parquet file (no parquet footer at its end)")
    return hashlib.sha256(opened.read_at(length + 8, size - 8 - length)).hexdigest()


def plan_file(data: Path) -> Planned:
    """A parquet file as planned: its row count, size and footer digest, from one open of it."""
    with _open_native(data) as opened:
        rows = open_file(data, opened).metadata.num_rows
        return Planned(data, rows, opened.size(), _footer_digest(opened, data))


def read_rows(planned: Planned, start: int, stop: int, batch_rows: int,
              columns: Sequence[str] | None) -> Iterator[pa.Table]:
    """Rows [start, stop) of a parquet file, reading only the row groups that overlap them, once its
    size and footer are found to be the planned ones (all from the one open file that is read)."""
    data, rows = planned.data, planned.rows
    with _open_native(data) as opened:
        pf = open_file(data, opened)
        if pf.metadata.num_rows != rows:
            raise PlanError(f"input file {data} changed since it was planned ({rows} rows then, "
                            f"{pf.metadata.num_rows} now): plan again into a new work dir")
        planned.check_size(opened.size())
        planned.check_digest(_footer_digest(opened, data), CHANGED_FOOTER)
        groups, offset, first_row = [], 0, None
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < stop:
                groups.append(g)
                first_row = offset if first_row is None else first_row
            offset += n
        if not groups:
            return
        row = first_row
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups,
                                         columns=None if columns is None else list(columns)):
                lo, hi = max(start, row), min(stop, row + batch.num_rows)
                if lo < hi:
                    yield pa.Table.from_batches([batch.slice(lo - row, hi - lo)])
                row += batch.num_rows
                if row >= stop:
                    break
        except (pa.ArrowException, OSError) as e:
            raise PlanError(f"input file {data}: cannot read rows ({e})") from None


class ParquetInput(InputFormat):
    name = "parquet"
    suffixes = (".parquet",)

    def schema(self, path, captions):
        return open_file(path).schema_arrow

    def prepare(self, path, converted, schema, captions):
        return plan_file(path)

    def read(self, planned, start, stop, batch_rows, columns, captions):
        return read_rows(planned, start, stop, batch_rows, columns)


class ConvertedInput(InputFormat, ABC):
    """A format converted once, at planning time, to a parquet file in the work dir."""

    def read(self, planned, start, stop, batch_rows, columns, captions):
        return read_rows(planned, start, stop, batch_rows, columns)
