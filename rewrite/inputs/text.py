"""Text inputs: one caption per line, converted once to parquet in the work dir."""
from __future__ import annotations

import pyarrow as pa

from .. import storage
from ..workdir import atomic
from ..workdir.manifest import PlanError
from .parquet import ConvertedInput, plan_file

CONVERT_BATCH = 65_536


class TextInput(ConvertedInput):
    name = "text"
    suffixes = (".txt",)
    has_columns = False

    def schema(self, path, captions):
        return pa.schema([(captions.column, pa.string())])

    def prepare(self, path, converted, schema, captions):
        """Line breaks stripped; blank lines kept as rows, so row i is line i+1."""
        rows = 0
        with atomic.atomic_path(converted) as tmp, storage.parquet_writer(tmp, schema) as writer, \
                storage.open_file(path, "rb") as f:
            batch: list[str] = []
            for lineno, raw in enumerate(f, 1):
                try:
                    batch.append(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as e:
                    raise PlanError(f"{path}, line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
                if len(batch) == CONVERT_BATCH:
                    writer.write_table(pa.table({captions.column: batch}, schema=schema))
                    rows += len(batch)
                    batch = []
            if batch or rows == 0:
                writer.write_table(pa.table({captions.column: batch}, schema=schema))
                rows += len(batch)
        return plan_file(converted)
