"""Parquet inputs, and the parquet files the other formats are converted to: planned from footers alone
(row counts), read by row group, only the columns asked for."""
from __future__ import annotations

from abc import ABC
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .base import InputFormat, PlanError


def open_file(path: Path | str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise PlanError(f"input file {path} is not a readable parquet file ({e})") from None


def read_rows(data: Path, rows: int, start: int, stop: int, batch_rows: int,
              columns: Sequence[str] | None) -> Iterator[pa.Table]:
    """Rows [start, stop) of a parquet file, reading only the row groups that overlap them."""
    pf = open_file(data)
    if pf.metadata.num_rows != rows:
        raise PlanError(f"input file {data} changed since it was planned ({rows} rows then, "
                        f"{pf.metadata.num_rows} now): plan again into a new work dir")
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
        return path, open_file(path).metadata.num_rows

    def read(self, data, rows, start, stop, batch_rows, columns, captions):
        return read_rows(data, rows, start, stop, batch_rows, columns)


class ConvertedInput(InputFormat, ABC):
    """A format converted once, at planning time, to a parquet file in the work dir."""

    def read(self, data, rows, start, stop, batch_rows, columns, captions):
        return read_rows(data, rows, start, stop, batch_rows, columns)
