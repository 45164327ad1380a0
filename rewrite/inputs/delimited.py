"""CSV and TSV inputs: a header row, every cell read as the text written, converted once to parquet in
the work dir (files cannot disagree on inferred types, and ids keep their leading zeros)."""
from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from .. import storage
from ..workdir import atomic
from ..workdir.manifest import PlanError
from .parquet import ConvertedInput, plan_file


def _header(path: Path, delimiter: str) -> list[str]:
    with storage.open_file(path, "rb") as f:
        line = f.readline()
    if not line.strip():
        raise PlanError(f"input file {path} is empty (a CSV/TSV input needs a header row)")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PlanError(f"{path}, line 1: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    return next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter))


def _first_bad_utf8_line(path: Path) -> int | None:
    with storage.open_file(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return None


class DelimitedInput(ConvertedInput):
    def __init__(self, name: str, suffix: str, delimiter: str):
        self.name, self.suffixes, self.delimiter = name, (suffix,), delimiter

    def schema(self, path, captions):
        return pa.schema([(name, pa.string()) for name in _header(path, self.delimiter)])

    def prepare(self, path, converted, schema, captions):
        """Streamed: an empty cell is "" (not null), quoted line breaks stay inside their cell."""
        try:
            reader = pacsv.open_csv(
                storage.arrow_file(path),
                read_options=pacsv.ReadOptions(block_size=1 << 22, column_names=schema.names, skip_rows=1),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types=schema, strings_can_be_null=False),
            )
            with atomic.atomic_path(converted) as tmp, storage.parquet_writer(tmp, schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
        except pa.ArrowInvalid as e:
            bad = _first_bad_utf8_line(path)
            where = f", line {bad}: not valid UTF-8" if bad else f": cannot parse ({e})"
            raise PlanError(f"input file {path}{where}") from None
        return plan_file(converted)
