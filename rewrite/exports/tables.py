"""What the CSV-shaped exports (open_clip's CSV, LaCLIP's files) share: each row's image path, and the
rules that keep one text per cell that their readers read back as written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from .. import atomic, tars
from .base import ExportError, ExportJob

IMAGE_COLUMNS = ("filepath", "image_path", "image", "path")
# Cells pandas.read_csv reads as missing by default (so a caption "null" would train as "nan").
PANDAS_NA = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def one_line(text: str) -> str:
    """A caption on one line: CR and LF would shift every later row of a line-per-row reader."""
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


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


def image_paths(job: ExportJob, table: pa.Table, column: str | None, extracted: dict[str, str]) -> list[str | None]:
    """Each row's image path: the input's column as written, or the file --extract-images wrote for its
    key (None where there is none)."""
    if column is not None:
        values = table.column(column)
        if pa.types.is_struct(values.type):  # a Hugging Face Image column: {bytes, path}
            values = values.combine_chunks().field("path")
        return [None if v is None else str(v) for v in values.to_pylist()]
    folder = job.options.extract_images
    return [str(folder / extracted[key]) if key in extracted else None
            for key in table.column(job.key_column).to_pylist()]


def image_rows(job: ExportJob, shard: int) -> Iterator[tuple[str, str | None, str | None, list[str | None]]]:
    """(key, image path, original caption, [rewrite per rewrite column]) for each row of the shard, the
    images extracted first when --extract-images asks for it: what the CSV-shaped formats write."""
    column, extracted = image_column(job), extract(job, shard)
    caption, rewrites = job.manifest.caption_column, job.rewrite_columns()
    wanted = [job.key_column, caption] + ([column] if column and column not in (job.key_column, caption) else [])
    for table in job.rows(shard, wanted):
        paths = image_paths(job, table, column, extracted)
        values = [table.column(c).to_pylist() for c in rewrites]
        for i, (key, original) in enumerate(zip(table.column(job.key_column).to_pylist(),
                                                table.column(caption).to_pylist())):
            yield key, paths[i], original, [v[i] for v in values]


def extract(job: ExportJob, shard: int) -> dict[str, str]:
    """Write the shard's images into --extract-images, named by key; key -> file name written (nothing
    when paths come from an input column)."""
    folder: Path | None = job.options.extract_images
    if folder is None:
        return {}
    written: dict[str, str] = {}
    for piece in job.manifest.shards[shard]:
        f = job.manifest.files[piece.file]
        if f.format == "wds":
            try:
                written.update(tars.extract_images(f.path, folder, IMAGE_EXTS))
            except tars.TarError as e:
                raise ExportError(str(e)) from None
    if not written:
        written.update(_extract_from_rows(job, shard, folder))
    return written


def _extract_from_rows(job: ExportJob, shard: int, folder: Path) -> dict[str, str]:
    """Images held in a parquet column of bytes (or a Hugging Face Image column's bytes)."""
    column = next((c for c in job.manifest.schema.names if holds_bytes(job.manifest.schema.field(c).type)), None)
    if column is None:
        raise ExportError("--extract-images: the input holds no images (no .tar members, no column of image bytes)")
    written = {}
    for table in job.rows(shard, [job.key_column, column]):
        values = table.column(column)
        if pa.types.is_struct(values.type):
            values = values.combine_chunks().field("bytes")
        for key, data in zip(table.column(job.key_column).to_pylist(), values.to_pylist()):
            if data is None:
                continue
            check_key(key, "--extract-images")
            name = f"{key}.{sniff(data)}"
            _write_whole(folder / name, data)
            written[key] = name
    return written


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



def _write_whole(path: Path, data: bytes) -> None:
    """The file whole or not at all (a temporary name, then a rename), as tars.extract_images writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_beside(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
