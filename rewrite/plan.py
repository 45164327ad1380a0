"""Input discovery, shard planning and shard reading.

Parquet inputs are planned from their footers alone (row counts), so planning costs O(files), not
O(rows). CSV/TSV and text inputs are converted once, streaming, to parquet inside the work dir; after
that every reader sees parquet. A shard is a list of pieces (file, first row, end row) covering a
contiguous range of the concatenated inputs; a worker streams it in fixed chunks of rows, reading only
the columns it needs.

A work dir is self-contained: a file inside it is recorded relative to it, so it can be moved or
copied. The inputs' schemas are unified at planning time, so a column whose type differs between files
is refused before any rewriting, and every chunk read with all columns has the one unified schema.
"""
from __future__ import annotations

import base64
import csv
import glob
import hashlib
import itertools
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
MANIFEST_VERSION = 2
DEFAULT_ROWS_PER_SHARD = 10_000
_CONVERT_BATCH = 65_536


class PlanError(ValueError):
    """Bad input or a bad plan request: the message names the file, column or option."""


@dataclass(frozen=True)
class InputFile:
    path: str  # the input file (absolute)
    data: str  # the parquet file read (`path`, or its conversion): see Manifest.data_path
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
    schema: pa.Schema  # every input is read as this (see unify); a derived `key` is not in it
    inputs: list[str]  # the input arguments, absolute: a file, a folder, or a glob's folder before its first wildcard
    root: Path = field(compare=False)  # the work dir, absolute; not saved, so the work dir can move
    version: int = MANIFEST_VERSION
    created: float = field(default_factory=time.time)

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
        """The parquet file read for `f`: recorded relative to the work dir when it lies inside it, else absolute."""
        return self.root / f.data

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
            "inputs": self.inputs,
            "columns": self.columns,
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode("ascii"),
            "files": [asdict(f) for f in self.files],
            "shards": [[[p.file, p.start, p.stop] for p in s] for s in self.shards],
        }

    @classmethod
    def from_dict(cls, d: dict, root: Path) -> "Manifest":
        return cls(
            caption_column=d["caption_column"],
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
    if not work.manifest.is_file():
        raise PlanError(f"{work.root} has no shard plan ({work.manifest.name}): run `rewrite shard ... --out {work.root}` first")
    try:
        data = json.loads(work.manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PlanError(f"{work.manifest}: not a valid shard plan ({e})") from None
    if data.get("version") != MANIFEST_VERSION:
        raise PlanError(f"{work.manifest}: plan version {data.get('version')} is not {MANIFEST_VERSION} (made by "
                        "another version of rewrite): plan again into a new work dir")
    try:
        return Manifest.from_dict(data, work.root.resolve())
    except (KeyError, TypeError, ValueError) as e:  # ValueError: a bad schema (base64 or Arrow)
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


def _input_roots(inputs: Sequence[str]) -> list[Path]:
    """Each input argument as absolute paths: a file, a folder; a recursive glob's folder before its first
    wildcard (anything below it may match again), a plain glob's matched files (a folder beside them
    cannot: `rewrite shard "*.parquet" --out work` is fine)."""
    roots = []
    for arg in inputs:
        path = Path(arg)
        if path.exists() or not glob.has_magic(arg):
            roots.append(path.resolve())
        elif "**" in arg:
            roots.append(Path(*itertools.takewhile(lambda part: not glob.has_magic(part), path.parts)).resolve())
        else:
            roots += [Path(p).resolve() for p in sorted(glob.glob(arg))]
    return roots


def _check_work_dir(root: Path, inputs: Sequence[Path]) -> None:
    """A work dir apart from its inputs: rewrites and conversions never land among the user's files."""
    for given in inputs:
        if given == root:
            what = "is the input folder" if given.is_dir() else "is the input file"
        elif given in root.parents:
            what = "lies inside the input folder"
        else:
            continue
        raise PlanError(f"--out {root} {what} {given}: choose a work dir outside the inputs")


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
    work_dir = layout.Work(Path(work).resolve())
    if work_dir.manifest.is_file():  # checked before anything is converted into it
        old = load_manifest(work_dir)
        raise PlanError(f"{work_dir.root} already holds a plan ({old.num_shards} shards over {old.total_rows} rows) "
                        "and the rewrites made from it: choose another --out, or delete that work dir to start over")
    paths = discover(inputs)
    roots = _input_roots(inputs)
    _check_work_dir(work_dir.root, roots)
    # A work dir is the tool's own: a plan never writes among someone else's files (an `inputs/`
    # folder is what a plan cut short left, and is written over).
    others = sorted(p.name for p in work_dir.root.iterdir() if p.name != "inputs") if work_dir.root.is_dir() else []
    if others:
        raise PlanError(f"--out {work_dir.root} is not empty ({', '.join(others[:5])}) and holds no plan: "
                        "choose a new or empty folder for the work dir")
    schemas = {p: _input_schema(p, caption_column) for p in paths}
    key_column = _choose_key_column(paths, schemas, key_column)
    for p, schema in schemas.items():
        _check_columns(p, schema, caption_column, key_column)
    schema = unify(schemas)

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
                rows = _convert_csv(path, data, CSV_SUFFIXES[path.suffix.lower()], schemas[path])
        recorded = data.relative_to(work_dir.root) if data.is_relative_to(work_dir.root) else data
        files.append(InputFile(path=str(path), data=str(recorded), format=fmt, rows=rows, key_prefix=prefix))

    total = sum(f.rows for f in files)
    if total == 0:
        raise PlanError(f"the inputs hold no rows: {', '.join(str(p) for p in paths)}")
    bounds = shard_bounds(total, num_shards=num_shards, rows_per_shard=rows_per_shard)
    manifest = Manifest(
        caption_column=caption_column,
        key_column=key_column,
        files=files,
        shards=[pieces(files, start, stop) for start, stop in bounds],
        schema=schema,
        inputs=[str(r) for r in roots],
        root=work_dir.root,
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


def _input_schema(path: Path, caption_column: str) -> pa.Schema:
    """The columns an input is read with: a parquet footer's, a CSV/TSV header's (all text), or the caption."""
    fmt = _format(path)
    if fmt == "parquet":
        return _parquet_file(path).schema_arrow
    if fmt == "text":
        return pa.schema([(caption_column, pa.string())])
    return pa.schema([(name, pa.string()) for name in _csv_header(path, CSV_SUFFIXES[path.suffix.lower()])])


def _csv_header(path: Path, delimiter: str) -> list[str]:
    with open(path, "rb") as f:
        line = f.readline()
    if not line.strip():
        raise PlanError(f"input file {path} is empty (a CSV/TSV input needs a header row)")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PlanError(f"{path}, line 1: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    return next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter))


def _choose_key_column(paths: list[Path], schemas: dict[Path, pa.Schema], key_column: str | None) -> str | None:
    """The key column asked for; else `key` when every input has one (text has no columns); else derived keys."""
    if key_column is not None:
        if any(_format(p) == "text" for p in paths):
            raise PlanError(f"--key-column {key_column}: text inputs have no columns (keys are derived from file and line)")
        return key_column
    has_key = {p: _format(p) != "text" and layout.KEY in schemas[p].names for p in paths}
    if all(has_key.values()):
        return layout.KEY
    if any(has_key.values()):
        having = next(p for p, has in has_key.items() if has)
        lacking = next(p for p, has in has_key.items() if not has)
        raise PlanError(f"input file {having} has a `{layout.KEY}` column and input file {lacking} has none: "
                        "pass --key-column")
    return None


def _check_columns(path: Path, schema: pa.Schema, caption_column: str, key_column: str | None) -> None:
    """Columns that can be read without clobbering: each name once, the caption and key there, no `key` to shadow."""
    names = schema.names
    if len(set(names)) < len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise PlanError(f"input file {path} has more than one column named {repeated!r}")
    if key_column is None and layout.KEY in names:
        raise PlanError(f"input file {path} has a column named {layout.KEY!r}, where the keys derived from file and "
                        "row would go: rename it (a text input's column is named by --caption-column)")
    for role, col in (("caption", caption_column), ("key", key_column)):
        if col is not None and col not in names:
            raise PlanError(
                f"input file {path} has no {role} column {col!r} (columns: {', '.join(names)}); "
                f"choose it with --{role}-column"
            )
    ctype = schema.field(caption_column).type
    if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype) or pa.types.is_null(ctype)):
        raise PlanError(f"input file {path}: caption column {caption_column!r} holds {ctype}, not strings")


def unify(schemas: dict[Path, pa.Schema]) -> pa.Schema:
    """The one schema every input is read as: each column once, in order of first appearance, at the widest
    of its types; a column whose types do not widen to one another is refused, naming both files."""
    widest: dict[str, tuple[pa.Field, Path]] = {}
    for path, schema in schemas.items():
        for fld in schema:
            seen = widest.get(fld.name)
            if seen is not None and _widens(fld.type, seen[0].type):
                continue
            if seen is not None and not _widens(seen[0].type, fld.type):
                raise PlanError(f"column {fld.name!r} is {seen[0].type} in {seen[1]} and {fld.type} in {path}: "
                                "inputs planned together must agree on each column's type")
            widest[fld.name] = (fld, path)
    metadata = next(iter(schemas.values())).metadata
    return pa.schema([fld.with_nullable(True) for fld, _ in widest.values()], metadata=metadata)


def _widens(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether every value of `src` is a value of `dst` (so a cast cannot fail or lose anything)."""
    if src == dst or pa.types.is_null(src):
        return True
    if (src, dst) in ((pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())):
        return True
    if pa.types.is_integer(src) and pa.types.is_integer(dst):
        if pa.types.is_signed_integer(src) == pa.types.is_signed_integer(dst):
            return dst.bit_width >= src.bit_width
        return pa.types.is_unsigned_integer(src) and dst.bit_width > src.bit_width
    return pa.types.is_floating(src) and pa.types.is_floating(dst) and dst.bit_width >= src.bit_width


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


def _convert_csv(path: Path, out: Path, delimiter: str, schema: pa.Schema) -> int:
    """Stream a CSV/TSV to parquet, every cell as the text written (an empty cell is ""): files cannot
    disagree on inferred types, and ids keep their leading zeros."""
    rows = 0
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 22, column_names=schema.names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=schema, strings_can_be_null=False),
        )
        with atomic.atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
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

    With the default columns, each chunk has `key` (string) and `caption` (string); with columns=None,
    every input column as `manifest.schema` has it (a column a file lacks is null there; image bytes pass
    through undecoded), plus a derived `key` (string) at the end when keys are derived: `manifest.columns`.
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
    data = manifest.data_path(f)
    pf = _parquet_file(data)
    if pf.metadata.num_rows != f.rows:
        raise PlanError(f"input file {data} changed since it was planned ({f.rows} rows then, "
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
        raise PlanError(f"input file {data}: cannot read rows ({e})") from None


def _standardise(table: pa.Table, manifest: Manifest, f: InputFile, first: int, columns: Sequence[str] | None) -> pa.Table:
    key_col = manifest.key_column
    if key_col is None:
        keys = pa.array([f"{f.key_prefix}-{r:09d}" for r in range(first, first + table.num_rows)], pa.string())
    else:
        keys = table.column(key_col).cast(pa.string())
    if columns is None:
        table = _conform(table, manifest.schema)
        return table.append_column(layout.KEY, keys) if key_col is None else table
    captions = table.column(manifest.caption_column)
    if not pa.types.is_string(captions.type):
        captions = captions.cast(pa.string())
    return pa.table({layout.KEY: keys, layout.CAPTION: captions})


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` as `schema`: its columns in the schema's order and types, and a column it lacks as nulls."""
    present = set(table.column_names)
    arrays = [table.column(fld.name).cast(fld.type) if fld.name in present else pa.nulls(table.num_rows, fld.type)
              for fld in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


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
