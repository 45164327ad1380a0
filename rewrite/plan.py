"""Input discovery, shard planning and shard reading.

Parquet inputs are planned from their footers alone (row counts), so planning costs O(files), not
O(rows). CSV/TSV and text inputs are converted once, streaming, to parquet inside the work dir; after
that every reader sees parquet. A shard is a list of pieces (file, first row, end row) covering a
contiguous range of the concatenated inputs; a worker streams it in fixed chunks of rows, reading only
the columns it needs.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import atomic, layout

PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
TEXT_SUFFIXES = (".txt",)
SUPPORTED = PARQUET_SUFFIXES + tuple(CSV_SUFFIXES) + TEXT_SUFFIXES
MANIFEST_VERSION = 1
DEFAULT_ROWS_PER_SHARD = 10_000
_CONVERT_BATCH = 65_536


class PlanError(ValueError):
    """Bad input or a bad plan request: the message names the file, column or option."""


@dataclass(frozen=True)
class InputFile:
    path: str  # as given by the user (resolved)
    data: str  # the parquet file read: `path` itself, or its conversion inside the work dir
    format: str  # parquet | csv | tsv | text
    rows: int
    key_prefix: str  # derived keys are f"{key_prefix}-{row:09d}"


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
    version: int = MANIFEST_VERSION
    created: float = field(default_factory=time.time)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def shard_rows(self, shard: int) -> int:
        return sum(p.stop - p.start for p in self.shards[shard])

    def plan_id(self) -> str:
        """Digest of what defines the rows of every shard (not when it was made)."""
        body = {k: v for k, v in self.to_dict().items() if k != "created"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "created": self.created,
            "caption_column": self.caption_column,
            "key_column": self.key_column,
            "total_rows": self.total_rows,
            "num_shards": self.num_shards,
            "files": [asdict(f) for f in self.files],
            "shards": [[[p.file, p.start, p.stop] for p in s] for s in self.shards],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        return cls(
            caption_column=d["caption_column"],
            key_column=d["key_column"],
            files=[InputFile(**f) for f in d["files"]],
            shards=[[Piece(*p) for p in s] for s in d["shards"]],
            version=d["version"],
            created=d["created"],
        )

    def save(self, work: layout.Work) -> None:
        atomic.write_json(work.manifest, self.to_dict())


def load_manifest(work: str | Path | layout.Work) -> Manifest:
    work = layout.Work(work)
    if not work.manifest.is_file():
        raise PlanError(f"{work.root} has no shard plan ({work.manifest.name}): run `rewrite shard ... --out {work.root}` first")
    try:
        data = json.loads(work.manifest.read_text(encoding="utf-8"))
        if data.get("version") != MANIFEST_VERSION:
            raise PlanError(f"{work.manifest}: plan version {data.get('version')} is not {MANIFEST_VERSION}")
        return Manifest.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PlanError(f"{work.manifest}: not a valid shard plan ({e})") from None


# ---------------------------------------------------------------- discovery


def discover(inputs: Sequence[str]) -> list[Path]:
    """Files named by paths, folders (searched recursively) or glob patterns, in a stable order."""
    if not inputs:
        raise PlanError("no input given")
    found: list[Path] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED)
            if not files:
                raise PlanError(f"input folder {arg} holds no {', '.join(SUPPORTED)} files")
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED:
                raise PlanError(f"input {arg}: unsupported file type {path.suffix!r} (use {', '.join(SUPPORTED)})")
            files = [path]
        elif glob.has_magic(arg):
            files = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).suffix.lower() in SUPPORTED)
            if not files:
                raise PlanError(f"input pattern {arg} matches no {', '.join(SUPPORTED)} files")
        else:
            raise PlanError(f"input path {arg} does not exist")
        for f in files:
            if not os.access(f, os.R_OK):
                raise PlanError(f"input file {f} is not readable")
        found += files
    unique: dict[Path, None] = dict.fromkeys(p.resolve() for p in found)
    return list(unique)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return suffix[1:]
    return "text"


# ---------------------------------------------------------------- planning


def plan(
    inputs: Sequence[str],
    work: str | Path,
    *,
    num_shards: int | None = None,
    rows_per_shard: int | None = None,
    caption_column: str = layout.CAPTION,
    key_column: str | None = None,
) -> Manifest:
    """Plan shards over the inputs and save the plan in `work`."""
    if num_shards is not None and rows_per_shard is not None:
        raise PlanError("give --num-shards or --rows-per-shard, not both")
    if num_shards is not None and num_shards < 1:
        raise PlanError(f"--num-shards must be >= 1, got {num_shards}")
    if rows_per_shard is not None and rows_per_shard < 1:
        raise PlanError(f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    work_dir = layout.Work(work)
    if work_dir.manifest.is_file():  # checked before anything is converted into it
        old = load_manifest(work_dir)
        raise PlanError(f"{work_dir.root} already holds a plan ({old.num_shards} shards over {old.total_rows} rows) "
                        "and the rewrites made from it: choose another --out, or delete that work dir to start over")
    paths = discover(inputs)
    schemas = {p: _parquet_file(p).schema_arrow for p in paths if _format(p) == "parquet"}
    key_column = _choose_key_column(paths, schemas, key_column)
    for p, schema in schemas.items():
        _check_parquet_columns(p, schema, caption_column, key_column)

    files: list[InputFile] = []
    prefixes: set[str] = set()
    for i, path in enumerate(paths):
        fmt = _format(path)
        prefix = path.stem if path.stem not in prefixes else f"{path.stem}.{i}"
        prefixes.add(prefix)
        if fmt == "parquet":
            rows = _parquet_file(path).metadata.num_rows
            data = path
        else:
            data = work_dir.inputs / f"{i:05d}-{path.stem}.parquet"
            if fmt == "text":
                rows = _convert_text(path, data, caption_column)
            else:
                rows = _convert_csv(path, data, CSV_SUFFIXES[path.suffix.lower()], caption_column, key_column)
        files.append(InputFile(path=str(path), data=str(data), format=fmt, rows=rows, key_prefix=prefix))

    total = sum(f.rows for f in files)
    if total == 0:
        raise PlanError(f"the inputs hold no rows: {', '.join(str(p) for p in paths)}")
    bounds = shard_bounds(total, num_shards=num_shards, rows_per_shard=rows_per_shard)
    manifest = Manifest(
        caption_column=caption_column,
        key_column=key_column,
        files=files,
        shards=[pieces(files, start, stop) for start, stop in bounds],
    )
    manifest.save(work_dir)
    return manifest


def shard_bounds(total: int, *, num_shards: int | None = None, rows_per_shard: int | None = None) -> list[tuple[int, int]]:
    """Global [start, stop) row ranges: `num_shards` balanced shards, or shards of `rows_per_shard`."""
    if num_shards is not None:
        if num_shards > total:
            raise PlanError(f"--num-shards {num_shards} is more than the {total} input rows")
        return [(i * total // num_shards, (i + 1) * total // num_shards) for i in range(num_shards)]
    size = rows_per_shard or DEFAULT_ROWS_PER_SHARD
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def pieces(files: Sequence[InputFile], start: int, stop: int) -> list[Piece]:
    """The file-local ranges that make up the global range [start, stop)."""
    out, offset = [], 0
    for i, f in enumerate(files):
        lo, hi = max(start, offset), min(stop, offset + f.rows)
        if lo < hi:
            out.append(Piece(i, lo - offset, hi - offset))
        offset += f.rows
    return out


def _parquet_file(path: Path | str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise PlanError(f"input file {path} is not a readable parquet file ({e})") from None


def _choose_key_column(paths: list[Path], schemas: dict[Path, pa.Schema], key_column: str | None) -> str | None:
    """The key column asked for; else `key` when every input is parquet and has one; else derived keys."""
    if key_column is not None:
        if any(_format(p) == "text" for p in paths):
            raise PlanError(f"--key-column {key_column}: text inputs have no columns (keys are derived from file and line)")
        return key_column
    has_key = [layout.KEY in schemas[p].names for p in paths if p in schemas]
    if all(has_key) and len(has_key) == len(paths):
        return layout.KEY
    if any(has_key):
        raise PlanError(f"some inputs have a `{layout.KEY}` column and some do not: pass --key-column")
    return None


def _check_parquet_columns(path: Path, schema: pa.Schema, caption_column: str, key_column: str | None) -> None:
    for role, col in (("caption", caption_column), ("key", key_column)):
        if col is not None and col not in schema.names:
            raise PlanError(
                f"input file {path} has no {role} column {col!r} (columns: {', '.join(schema.names)}); "
                f"choose it with --{role}-column"
            )
    ctype = schema.field(caption_column).type
    if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype) or pa.types.is_null(ctype)):
        raise PlanError(f"input file {path}: caption column {caption_column!r} holds {ctype}, not strings")


def _first_bad_utf8_line(path: Path) -> int | None:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return None


def _convert_text(path: Path, out: Path, caption_column: str) -> int:
    """One caption per line (line breaks stripped; blank lines kept as rows, so row i is line i+1)."""
    schema = pa.schema([(caption_column, pa.string())])
    rows = 0
    with atomic.atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer, open(path, "rb") as f:
        batch: list[str] = []
        for lineno, raw in enumerate(f, 1):
            try:
                batch.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise PlanError(f"{path}, line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if len(batch) == _CONVERT_BATCH:
                writer.write_table(pa.table({caption_column: batch}, schema=schema))
                rows += len(batch)
                batch = []
        if batch or rows == 0:
            writer.write_table(pa.table({caption_column: batch}, schema=schema))
            rows += len(batch)
    return rows


def _convert_csv(path: Path, out: Path, delimiter: str, caption_column: str, key_column: str | None) -> int:
    """Stream a CSV/TSV with a header row to parquet; caption and key are read as strings."""
    with open(path, "rb") as f:
        header_line = f.readline()
    if not header_line.strip():
        raise PlanError(f"input file {path} is empty (a CSV/TSV input needs a header row)")
    header = next(csv.reader([header_line.decode("utf-8", "replace").rstrip("\r\n")], delimiter=delimiter))
    for role, col in (("caption", caption_column), ("key", key_column)):
        if col is not None and col not in header:
            raise PlanError(
                f"input file {path} has no {role} column {col!r} (columns: {', '.join(header)}); "
                f"choose it with --{role}-column"
            )
    types = {caption_column: pa.string()}
    if key_column:
        types[key_column] = pa.string()
    rows = 0
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False),
        )
        with atomic.atomic_path(out) as tmp:
            writer = None
            try:
                for batch in reader:
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, batch.schema)
                    writer.write_batch(batch)
                    rows += batch.num_rows
                if writer is None:
                    writer = pq.ParquetWriter(tmp, reader.schema)
            finally:
                if writer is not None:
                    writer.close()
    except pa.ArrowInvalid as e:
        bad = _first_bad_utf8_line(path)
        where = f", line {bad}: not valid UTF-8" if bad else f": cannot parse ({e})"
        raise PlanError(f"input file {path}{where}") from None
    return rows


# ---------------------------------------------------------------- reading


def iter_shard(
    manifest: Manifest,
    shard: int,
    chunk_rows: int,
    columns: Sequence[str] | None = (layout.KEY, layout.CAPTION),
) -> Iterator[pa.Table]:
    """The shard's rows in chunks of exactly `chunk_rows` (the last one shorter).

    With the default columns, each chunk has `key` (string) and `caption`; with columns=None, every
    original column (image bytes pass through undecoded), plus a derived `key` when the inputs have none.
    """
    if not 0 <= shard < manifest.num_shards:
        raise PlanError(f"shard {shard} is not in the plan (shards 0-{manifest.num_shards - 1})")
    tables = (t for piece in manifest.shards[shard] for t in _iter_piece(manifest, piece, chunk_rows, columns))
    yield from rechunk(tables, chunk_rows)


def rechunk(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Regroup a stream of tables into tables of exactly `rows` rows (the last one shorter)."""
    buffer: list[pa.Table] = []
    buffered = 0
    for table in tables:
        buffer.append(table)
        buffered += table.num_rows
        while buffered >= rows:
            whole = pa.concat_tables(buffer)
            yield whole.slice(0, rows).combine_chunks()
            rest = whole.slice(rows)
            buffer, buffered = [rest], rest.num_rows
    if buffered:
        yield pa.concat_tables(buffer).combine_chunks()


def _iter_piece(manifest: Manifest, piece: Piece, batch_rows: int, columns: Sequence[str] | None) -> Iterator[pa.Table]:
    f = manifest.files[piece.file]
    pf = _parquet_file(f.data)
    if pf.metadata.num_rows != f.rows:
        raise PlanError(f"input file {f.data} changed since it was planned ({f.rows} rows then, "
                        f"{pf.metadata.num_rows} now): plan again into a new work dir")
    cap, key = manifest.caption_column, manifest.key_column
    if columns is None:
        read_cols = None
    else:
        read_cols = [cap] + ([key] if key and key != cap else [])
    # Only the row groups that overlap the piece are read.
    groups, offset, first_row = [], 0, None
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n > piece.start and offset < piece.stop:
            groups.append(g)
            first_row = offset if first_row is None else first_row
        offset += n
    if not groups:
        return
    row = first_row
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=read_cols):
            lo, hi = max(piece.start, row), min(piece.stop, row + batch.num_rows)
            if lo < hi:
                table = pa.Table.from_batches([batch.slice(lo - row, hi - lo)])
                yield _standardise(table, manifest, f, lo, columns)
            row += batch.num_rows
            if row >= piece.stop:
                break
    except (pa.ArrowException, OSError) as e:
        raise PlanError(f"input file {f.data}: cannot read rows ({e})") from None


def _standardise(table: pa.Table, manifest: Manifest, f: InputFile, first: int, columns: Sequence[str] | None) -> pa.Table:
    key_col = manifest.key_column
    if key_col is None:
        keys = pa.array([f"{f.key_prefix}-{r:09d}" for r in range(first, first + table.num_rows)], pa.string())
    else:
        keys = table.column(key_col).cast(pa.string())
    if columns is None:
        if key_col is None:
            table = table.append_column(layout.KEY, keys)
        return table
    captions = table.column(manifest.caption_column)
    if not pa.types.is_string(captions.type):
        captions = captions.cast(pa.string())
    return pa.table({layout.KEY: keys, layout.CAPTION: captions})


# ---------------------------------------------------------------- shard specs

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


def chunk_count(rows: int, chunk_rows: int) -> int:
    return math.ceil(rows / chunk_rows)
