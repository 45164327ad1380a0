"""The interface every input format implements: one module per format, registered in __init__.py."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from .. import atomic


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
            return json.loads(self.first_read.read_text(encoding="utf-8"))["digest"]
        except (ValueError, KeyError, TypeError) as e:
            raise PlanError(f"{self.first_read}: not a valid record of {self.data} ({e!r}): plan again into a new "
                            "work dir") from None

    def _changed(self, since: str, how: str) -> str:
        return (f"input file {self.data} changed since it was {since} ({how}): its rewrites were made from the file "
                "as it was; plan again into a new work dir")


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
