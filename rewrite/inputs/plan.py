"""Shard planning and shard reading (discover.py finds the input files).

Each input format (rewrite/inputs/) says how a file is planned and read: parquet from its footer alone,
CSV/TSV and text converted once to parquet inside the work dir, webdataset tars counted from img2dataset's
stats (else their headers) and read in place, text members only. A shard is a list of pieces (file,
first row, end row) covering a contiguous range of the concatenated inputs (the plan itself:
workdir/manifest.py); a worker streams it in fixed chunks of rows, reading only the columns it needs.
The inputs' schemas are unified at planning time, so a column whose type differs between files is
refused before any rewriting, and every chunk read with all columns has the one unified schema.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa

from .. import storage
from ..workdir import layout
from ..workdir.manifest import Captions, InputFile, Manifest, Piece, PlanError, first_read_record, load_manifest
from . import InputFormat, for_path
from . import named as format_named
from .discover import check_work_dir, discover, input_roots

DEFAULT_ROWS_PER_SHARD = 10_000


# ---------------------------------------------------------------- planning


def plan(
    inputs: Sequence[str],
    work: str | Path,
    *,
    num_shards: int | None = None,
    rows_per_shard: int | None = None,
    caption_column: str = layout.CAPTION,
    key_column: str | None = None,
    caption_field: str | None = None,
) -> Manifest:
    """Plan shards over the inputs and save the plan in `work`. `caption_field`: for webdataset inputs,
    the KEY.json field that holds the caption (default: KEY.txt)."""
    if num_shards is not None and rows_per_shard is not None:
        raise PlanError("give --num-shards or --rows-per-shard, not both")
    if num_shards is not None and num_shards < 1:
        raise PlanError(f"--num-shards must be >= 1, got {num_shards}")
    if rows_per_shard is not None and rows_per_shard < 1:
        raise PlanError(f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    work_dir = layout.Work(layout.local_work_dir(work, "--out").resolve())
    roots = input_roots(inputs)
    check_work_dir(work_dir.root, roots)  # first: an --out that is an input is named as such
    if storage.exists(work_dir.root) and not storage.is_dir(work_dir.root):
        raise PlanError(f"--out {work_dir.root} is a file, not a folder: the work dir is a folder of its own")
    if storage.is_file(work_dir.manifest):  # checked before anything is converted into it
        old = load_manifest(work_dir)
        raise PlanError(f"{work_dir.root} already holds a plan ({old.num_shards} shards over {old.total_rows} rows) "
                        "and the rewrites made from it: choose another --out, or delete that work dir to start over")
    paths = discover(inputs)
    # A work dir is the tool's own: a plan never writes among someone else's files (an `inputs/`
    # folder is what a plan cut short left, and is written over).
    others = (sorted(name for name in storage.list_dir(work_dir.root) if name != "inputs")
              if storage.is_dir(work_dir.root) else [])
    if others:
        raise PlanError(f"--out {work_dir.root} is not empty ({', '.join(others[:5])}) and holds no plan: "
                        "choose a new or empty folder for the work dir")
    captions = Captions(caption_column, caption_field)
    formats = {p: for_path(p) for p in paths}
    if caption_field is not None and not any(f.has_json_fields for f in formats.values()):
        raise PlanError("--caption-field names a KEY.json field of webdataset (.tar) inputs, and there are none: "
                        "use --caption-column for a table's column")
    schemas = {p: formats[p].schema(p, captions) for p in paths}
    key_column = _choose_key_column(formats, schemas, key_column)
    for p, schema in schemas.items():
        _check_columns(p, schema, caption_column, key_column)
    schema = unify(schemas)

    files: list[InputFile] = []
    prefixes: set[str] = set()
    leftovers = storage.is_dir(work_dir.inputs)  # from a plan cut short, or one whose manifest was deleted by hand
    for i, path in enumerate(paths):
        prefix = path.stem if path.stem not in prefixes else f"{path.stem}.{i}"
        prefixes.add(prefix)
        converted = work_dir.inputs / f"{i:05d}-{path.stem}.parquet"
        if leftovers:  # a first read's record of another plan would be compared with
            storage.remove(first_read_record(work_dir.root, i, str(path)))
        prepared = formats[path].prepare(path, converted, schemas[path], captions)
        data = prepared.data
        inside = not storage.is_remote(data) and data.is_relative_to(work_dir.root)
        recorded = data.relative_to(work_dir.root) if inside else data
        files.append(InputFile(path=str(path), data=str(recorded), format=formats[path].name, rows=prepared.rows,
                               key_prefix=prefix, size=prepared.size, digest=prepared.digest))

    total = sum(f.rows for f in files)
    if total == 0:
        raise PlanError(f"the inputs hold no rows: {', '.join(str(p) for p in paths)}")
    if any(formats[p].whole_files for p in paths):  # an empty file is a piece too: an export writes it
        groups = file_groups([f.rows for f in files], num_shards=num_shards, rows_per_shard=rows_per_shard)
        shards = [[Piece(i, 0, files[i].rows) for i in group] for group in groups]
    else:
        shards = [pieces(files, start, stop)
                  for start, stop in shard_bounds(total, num_shards=num_shards, rows_per_shard=rows_per_shard)]
    manifest = Manifest(
        caption_column=caption_column,
        caption_field=caption_field,
        key_column=key_column,
        files=files,
        shards=shards,
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


def file_groups(rows: Sequence[int], *, num_shards: int | None = None,
                rows_per_shard: int | None = None) -> list[range]:
    """The files of each shard when shards hold whole files (webdataset tars: one output tar per input
    tar): one file a shard by default, or `num_shards` groups balanced by rows, or groups of at most
    `rows_per_shard` rows (a larger file alone)."""
    if num_shards is None and rows_per_shard is None:
        return [range(i, i + 1) for i in range(len(rows))]
    ends = list(itertools.accumulate(rows))
    total = ends[-1] if ends else 0
    if num_shards is not None:
        if num_shards > len(rows):
            raise PlanError(f"--num-shards {num_shards} is more than the {len(rows)} input files, and a shard of "
                            "webdataset input holds whole tars")
        cuts = sorted({min(range(len(ends)), key=lambda i: abs(ends[i] - total * k / num_shards))
                       for k in range(1, num_shards)} | {len(ends) - 1})
        cuts = _spread(cuts, num_shards, len(ends))
    else:
        cuts, start = [], 0
        for i, end in enumerate(ends):
            if i + 1 == len(ends) or ends[i + 1] - start > rows_per_shard:
                cuts.append(i)
                start = end
    groups, first = [], 0
    for last in cuts:
        groups.append(range(first, last + 1))
        first = last + 1
    return groups


def _spread(cuts: list[int], count: int, files: int) -> list[int]:
    """`count` distinct last-file indices, the chosen `cuts` first, the rest filled in where free."""
    chosen = set(cuts)
    for i in range(files):
        if len(chosen) >= count:
            break
        chosen.add(i)
    return sorted(chosen)


def pieces(files: Sequence[InputFile], start: int, stop: int) -> list[Piece]:
    """The file-local ranges that make up the global range [start, stop)."""
    out, offset = [], 0
    for i, f in enumerate(files):
        lo, hi = max(start, offset), min(stop, offset + f.rows)
        if lo < hi:
            out.append(Piece(i, lo - offset, hi - offset))
        offset += f.rows
    return out


def _choose_key_column(formats: dict[Path, InputFormat], schemas: dict[Path, pa.Schema],
                       key_column: str | None) -> str | None:
    """The key column asked for; else `key` when every input has one (text has no columns); else derived keys."""
    if key_column is not None:
        if not all(f.has_columns for f in formats.values()):
            raise PlanError(f"--key-column {key_column}: text inputs have no columns (keys are derived from file and line)")
        return key_column
    has_key = {p: f.has_columns and layout.KEY in schemas[p].names for p, f in formats.items()}
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
    cap, key = manifest.caption_column, manifest.key_column
    read_cols = None if columns is None else [cap] + ([key] if key and key != cap else [])
    rows = format_named(f.format).read(manifest.planned(piece.file), piece.start, piece.stop, batch_rows,
                                       read_cols, manifest.captions)
    first = piece.start
    for table in rows:
        yield _standardise(table, manifest, f, first, columns)
        first += table.num_rows


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


def chunk_count(rows: int, chunk_rows: int) -> int:
    return math.ceil(rows / chunk_rows)
