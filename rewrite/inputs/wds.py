"""Webdataset tar shards (img2dataset / LAION / DataComp): read in place, text members only.

A sample is a row: its key is the sample key, its caption KEY.txt (or a KEY.json field, --caption-field),
and `json` holds KEY.json as text. Image bytes are never read: the tar is walked header by header and
only .txt/.json members are read (tars.py). Row counts come from img2dataset's NNNNN_stats.json or
NNNNN.parquet beside the tar, else from one scan of its headers; a worker that finds another count
refuses the tar. Samples keep their tar order.

A remote tar (s3://...) with img2dataset's NNNNN.parquet beside it is not fetched by a run: its keys and
captions come from that parquet's "success" rows, in order (only the tar's size is checked then; the
wds export's copy, which reads the tar, checks its headers).

A tar's identity is its size and the digest of its member headers (tars.Headers): taken by the plan's
scan, or, when the plan took the count from img2dataset's stats (opening no tar), recorded by the first
read of the whole tar; every later read (and the wds export's copy) compares with it. The digest is
known once the tar is walked to its end, so a read gives out no row before that (it holds one tar's
text rows): a run never commits rows of a tar that changed.
"""
from __future__ import annotations

import json
from typing import Callable, Iterator

import pyarrow as pa

from ..workdir import layout
from .. import storage, tars
from .base import InputFormat
from ..workdir.manifest import Planned, PlanError

JSON = "json"  # the row column holding KEY.json as text
CHANGED_HEADERS = "its member headers differ: a member's name, size or time"


def headers_check(planned: Planned) -> Callable[[str], None]:
    """What refuses the tar of `planned` given the digest of its member headers as just walked in full."""
    return lambda digest: planned.check_digest(digest, CHANGED_HEADERS)


def _checked(fn, *args):
    try:
        return fn(*args)
    except tars.TarError as e:
        raise PlanError(str(e)) from None


class WebdatasetInput(InputFormat):
    name = "wds"
    suffixes = (".tar",)
    has_json_fields = True
    whole_files = True

    def schema(self, path, captions):
        if captions.column in (layout.KEY, JSON):
            raise PlanError(f"--caption-column {captions.column!r} would clash with the `{layout.KEY}` and `{JSON}` "
                            "columns of webdataset rows: choose another name")
        return pa.schema([(layout.KEY, pa.string()), (captions.column, pa.string()), (JSON, pa.string())])

    def prepare(self, path, converted, schema, captions):
        size = storage.size(path)
        rows = tars.stats_count(path)
        if rows is not None:
            return Planned(path, rows, size)
        headers = tars.Headers()
        rows = _checked(tars.count_samples, path, None, headers)
        return Planned(path, rows, size, headers.hexdigest())

    def read(self, planned, start, stop, batch_rows, columns, captions):
        names = [layout.KEY, captions.column, JSON] if columns is None else list(dict.fromkeys(columns))
        if storage.is_remote(planned.data) and captions.field is None and JSON not in names:
            beside = _checked(tars.captions_beside, planned.data)
            if beside is not None:
                return self._read_beside(planned, beside, start, stop, batch_rows, names, captions)
        return self._read(planned, start, stop, batch_rows, columns, captions)

    def _read_beside(self, planned: Planned, beside: pa.Table, start: int, stop: int, batch_rows: int,
                     names: list[str], captions) -> Iterator[pa.Table]:
        """Keys and captions of a remote tar from img2dataset's parquet beside it: the tar is not fetched
        (its size is checked, and the parquet's count against the plan's)."""
        planned.check_size(storage.size(planned.data))
        if beside.num_rows != planned.rows:
            raise PlanError(f"input file {storage.redact(planned.data)}: img2dataset's parquet beside it lists "
                            f"{beside.num_rows} samples where the plan counted {planned.rows}: the tar or its "
                            "files changed; plan again into a new work dir")
        table = beside.slice(start, stop - start).rename_columns([layout.KEY, captions.column]).select(names)
        for offset in range(0, table.num_rows, batch_rows):
            yield table.slice(offset, batch_rows).cast(_schema(names))

    def _read(self, planned: Planned, start: int, stop: int, batch_rows: int, columns, captions) -> Iterator[pa.Table]:
        data, rows = planned.data, planned.rows
        planned.check_size(storage.size(data))
        names = [layout.KEY, captions.column, JSON] if columns is None else list(dict.fromkeys(columns))
        batch: dict[str, list] = {n: [] for n in names}
        tables: list[pa.Table] = []  # given out once the tar is found to be the planned one
        seen, headers, whole = 0, tars.Headers(), False
        try:
            # KEY.json is read (and parsed) only when the caption or the row's json column comes from it.
            text = tars.TEXT_EXTS if captions.field is not None or JSON in names else ("txt",)
            for sample in tars.iter_samples(data, captions.field, text, headers=headers):
                if seen >= stop:
                    seen += 1  # past the rows asked for: when they end the tar, one too many
                    break
                if seen >= start:
                    values = {layout.KEY: sample.key, captions.column: sample.caption,
                              JSON: None if sample.json is None else json.dumps(sample.json, ensure_ascii=False)}
                    for n in names:
                        batch[n].append(values[n])
                    if len(batch[names[0]]) == batch_rows:
                        tables.append(pa.table(batch, schema=_schema(names)))
                        batch = {n: [] for n in names}
                seen += 1
            else:
                whole = True
        except tars.TarError as e:
            raise PlanError(str(e)) from None
        if seen < stop or (stop == rows and seen > rows):
            raise PlanError(f"input file {data} holds {'more than ' if seen > rows else ''}{min(seen, rows)} samples "
                            f"where the plan counted {rows} (from img2dataset's stats beside it, or an earlier scan): "
                            "the tar or its stats changed; plan again into a new work dir")
        if whole:
            headers_check(planned)(headers.hexdigest())
        if batch[names[0]]:
            tables.append(pa.table(batch, schema=_schema(names)))
        yield from tables


def _schema(names: list[str]) -> pa.Schema:
    return pa.schema([(n, pa.string()) for n in names])
