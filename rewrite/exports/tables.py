"""What the CSV-shaped exports (open_clip's CSV, LaCLIP's files) share: each row's image path, and the
rules that keep one text per cell that their readers read back as written."""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

from .. import storage, tars
from ..inputs import wds as wds_input
from . import images
from .base import ExportError, ExportJob


IMAGE_COLUMNS = ("filepath", "image_path", "image", "path")
# Cells pandas.read_csv reads as missing by default (so a caption "null" would train as "nan").
PANDAS_NA = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Field separators a CSV cannot use: the quote character, line breaks (and what pandas reads as a regex).
UNUSABLE_SEPARATORS = frozenset('"\r\n\\') | frozenset("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def one_line(text: str) -> str:
    """A caption on one line: any line boundary (CR, LF, and the others str.splitlines() breaks at, such
    as U+2028) would shift every later row of a line-per-row reader."""
    lines = text.splitlines()
    return text if lines == [text] else " ".join(lines)


def readable(text: str | None) -> bool:
    """Whether a CSV reader gets this text back as a caption (not as missing)."""
    return text is not None and text.strip() not in PANDAS_NA


def check_key(key: str, where: str) -> None:
    """A row key that can become a file name: nothing that leads out of the folder it is written in."""
    try:
        tars.check_key(key, where, key)
    except tars.TarError as e:
        raise ExportError(str(e)) from None


def image_column(job: ExportJob) -> str | None:
    """The input column of image paths: --image-column, else the first of IMAGE_COLUMNS the input has;
    None when images are extracted instead."""
    names = job.manifest.columns
    chosen = job.options.image_column
    if job.options.extract_images is not None:
        if image_bytes_column(job) is None and not any(f.format == "wds" for f in job.manifest.files):
            raise ExportError("--extract-images: the input holds no images (no webdataset tars, no column of image "
                              "bytes)")
        return None
    if chosen is not None:
        if chosen not in names:
            raise ExportError(f"--image-column {chosen!r}: the input has no such column (columns: {', '.join(names)})")
        return chosen
    found = next((c for c in IMAGE_COLUMNS if c in names), None)
    if found is None:
        raise ExportError(f"the input has none of the image path columns {', '.join(IMAGE_COLUMNS)} (columns: "
                          f"{', '.join(names)}): name one with --image-column, or pass --extract-images DIR to "
                          "write the images held in the tars or parquet as files")
    return found


def image_paths(table: pa.Table, column: str) -> list[str | None]:
    """Each row's image path as the input's column has it (a Hugging Face Image column: its `path`)."""
    values = table.column(column)
    if pa.types.is_struct(values.type):  # a Hugging Face Image column: {bytes, path}
        values = values.combine_chunks().field("path")
    return [None if v is None else str(v) for v in values.to_pylist()]


def image_rows(job: ExportJob, shard: int, kept: tuple[str, ...] = IMAGE_EXTS
               ) -> Iterator[tuple[str, str | None, str | None, list[str | None]]]:
    """(key, image path, original caption, [rewrite per rewrite column]) for each row of the shard, the
    images extracted first when --extract-images asks for it (as `kept` types; others become PNG):
    what the CSV-shaped formats write."""
    column = image_column(job)
    extracted = extract(job, shard, kept) if column is None else None
    caption, rewrites = job.manifest.caption_column, job.rewrite_columns()
    wanted = [job.key_column, caption] + ([column] if column and column not in (job.key_column, caption) else [])
    row = 0
    for table in job.rows(shard, wanted):
        paths = image_paths(table, column) if column else extracted[row:row + table.num_rows]
        row += table.num_rows
        values = [table.column(c).to_pylist() for c in rewrites]
        for i, (key, original) in enumerate(zip(table.column(job.key_column).to_pylist(),
                                                table.column(caption).to_pylist())):
            yield key, paths[i], original, [v[i] for v in values]


def extract(job: ExportJob, shard: int, kept: tuple[str, ...]) -> list[str | None]:
    """Write the shard's images into --extract-images (exports/images.py); each row's path."""
    if any(job.manifest.files[p.file].format == "wds" for p in job.manifest.shards[shard]):
        found = _images_in_tars(job, shard)
    else:
        found = _images_in_rows(job, shard)
    try:
        return images.write_shard(job.options.extract_images, shard, found, kept)
    except tars.TarError as e:
        raise ExportError(str(e)) from None
    except (tarfile.TarError, EOFError) as e:  # an image member's data cut short
        raise ExportError(f"shard {shard}: an image in its tars is truncated ({e})") from None


def _images_in_tars(job: ExportJob, shard: int) -> Iterator:
    """The image of each sample of the shard's tars, each tar refused (before its images are kept) if it
    changed since it was planned, as a read of its rows would refuse it."""
    for piece in job.manifest.shards[shard]:
        planned = job.manifest.planned(piece.file)
        planned.check_size(storage.size(planned.data))
        yield from tars.sample_images(planned.data, IMAGE_EXTS, wds_input.headers_check(planned))


def _images_in_rows(job: ExportJob, shard: int) -> Iterator:
    """Images held in a parquet column of bytes (or a Hugging Face Image column's bytes), one per row."""
    column = image_bytes_column(job)
    for table in job.rows(shard, [job.key_column, column]):
        values = table.column(column)
        if pa.types.is_struct(values.type):
            values = values.combine_chunks().field("bytes")
        for key, data in zip(table.column(job.key_column).to_pylist(), values.to_pylist()):
            yield None if data is None else (f"row {key}", sniff(data), data)


def image_bytes_column(job: ExportJob) -> str | None:
    """The input column of image bytes (a binary column or a Hugging Face Image column), if any."""
    return next((c for c in job.manifest.schema.names if holds_bytes(job.manifest.schema.field(c).type)), None)


def holds_bytes(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return any(t.field(i).name == "bytes" and pa.types.is_binary(t.field(i).type) for i in range(t.num_fields))
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def sniff(data: bytes) -> str:
    """An image's extension from its first bytes (LaCLIP keeps only .jpg/.jpeg/.png paths)."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def csv_blocks(path: Path, delimiter: str, columns: list[str], names: list[str] | None = None) -> Iterator[dict]:
    """`columns` of a CSV a block at a time, every cell the text written (none read as missing)."""
    try:
        reader = pacsv.open_csv(storage.arrow_file(path), read_options=pacsv.ReadOptions(column_names=names),
                                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                                convert_options=pacsv.ConvertOptions(include_columns=columns,
                                                                     column_types=dict.fromkeys(columns, pa.string())))
        for batch in reader:
            yield {c: batch.column(c).to_pylist() for c in columns}
    except (pa.ArrowException, OSError) as e:
        raise ExportError(f"{path}: cannot read it as the export wrote it ({e})") from None
