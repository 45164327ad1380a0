"""The interface every input format implements: one module per format, registered in __init__.py."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from ..workdir.manifest import Captions, Planned


class InputFormat(ABC):
    """How `rewrite shard` plans a kind of input file and how a worker reads its rows.

    A format sees one file at a time. `schema` says which columns its rows have; `prepare` runs once at
    planning time and returns the file the readers use (the input itself, or a conversion written into
    the work dir) as Planned: its row count and identity; `read` yields the rows [start, stop) of that
    file in tables of at most `batch_rows` rows, with the columns asked for (None: all of `schema`'s),
    after refusing a file whose identity is not the planned one (see Planned)."""

    name: str = ""
    suffixes: tuple[str, ...] = ()
    has_columns: bool = True  # False: rows have only the caption, so keys are derived from file and row
    has_json_fields: bool = False  # True: --caption-field can name the KEY.json field captions come from
    whole_files: bool = False  # True: a shard holds whole files (an export writes one output file per input file)

    @abstractmethod
    def schema(self, path: Path, captions: Captions) -> pa.Schema:
        ...

    @abstractmethod
    def prepare(self, path: Path, converted: Path, schema: pa.Schema, captions: Captions) -> Planned:
        ...

    @abstractmethod
    def read(self, planned: Planned, start: int, stop: int, batch_rows: int, columns: Sequence[str] | None,
             captions: Captions) -> Iterator[pa.Table]:
        ...
