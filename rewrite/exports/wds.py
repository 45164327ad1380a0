"""Webdataset tars, as open_clip and webdataset read them: for webdataset input, one output tar per input
tar, with the same name, keys and member order, every member copied byte for byte except KEY.json, which
gains one flat string field per rewrite column (`caption_<source>`, "" where the rewrite failed), and is
created where a sample had none; a sizes.json (tar name -> samples) beside them. Rewrites go to samples
by position (a key may repeat); a tar that changed since it was planned is refused before its copy is
committed, and so is a KEY.json that has a rewrite column's field already, unless
--replace-json-fields.

Table input (parquet, CSV) with images, as bytes (a binary column or a Hugging Face Image column) or as
paths (--image-column), exports to one tar per shard, `{shard:05d}.tar`: KEY.<image type>, KEY.txt (the
caption) and KEY.json (the row's other plain columns and the rewrite fields).

`--views SOURCE` also writes views/caption_<source>/ with the same tars whose KEY.txt is that rewrite (the
original where it failed), so released open_clip, which trains on KEY.txt only, can train on rewrites,
and views mixed with the originals (open_clip's `::` and --train-data-upsampling-factors).
"""
from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from .. import storage, tars
from ..inputs.wds import headers_check
from ..workdir import atomic, layout
from . import tables
from .base import ExportError, ExportFormat, ExportJob, Rows, rewrite_columns


SIZES = "sizes.json"
VIEWS = "views"


class WebdatasetExport(ExportFormat):
    name = "wds"
    options = ("image_column", "views", "replace_json_fields")

    def reader(self, folder, files):
        return WdsReader(folder, files)

    def check(self, job):
        formats = {f.format for f in job.manifest.files}
        if "wds" in formats and formats != {"wds"}:
            raise ExportError("--format wds: webdataset input planned together with other input cannot be exported "
                              f"as tars ({', '.join(sorted(formats))}); export it with --format hf, csv or laclip")
        if "wds" not in formats:
            _image_source(job)
        names = [Path(f.path).name for f in job.manifest.files]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated:
            raise ExportError(f"two input tars are named {repeated}: a wds export keeps each tar's name, so the "
                              "inputs' names must differ")
        columns = job.rewrite_columns()
        for view in job.options.views:
            if view not in columns:
                raise ExportError(f"--views {view}: not a rewrite column of this export ({', '.join(columns)})")
        if job.options.captions_only:
            raise ExportError("--captions-only writes no tars: use --format hf, csv or laclip with it")

    def _tars(self, job: ExportJob, shard: int) -> list[str]:
        if not _from_tars(job):
            return [f"{layout.shard_id(shard)}.tar"]
        return [Path(job.manifest.files[p.file].path).name for p in job.manifest.shards[shard]]

    def shard_files(self, job, shard):
        return [name for folder in self._folders(job) for name in (f"{folder}{t}" for t in self._tars(job, shard))]

    def _folders(self, job: ExportJob) -> list[str]:
        """The folders written, relative to OUT: OUT itself ("") and each view's."""
        return [""] + [f"{VIEWS}/{view}/" for view in job.options.views]

    def write_shard(self, job, shard, staged):
        if not _from_tars(job):
            return self._write_from_rows(job, shard, staged)
        pieces = job.manifest.shards[shard]
        rewrites = self._rewrites(job, shard)
        start = 0
        for piece in pieces:
            f, planned = job.manifest.files[piece.file], job.manifest.planned(piece.file)
            rows = rewrites[start:start + f.rows]  # in input order: the tar's samples in order
            start += f.rows
            samples = [(key, {c: v or "" for c, v in values.items()}) for key, values in rows]
            planned.check_size(storage.size(f.path))
            for folder in self._folders(job):
                view = folder[len(VIEWS) + 1:-1] if folder else None
                txts = [values[view] or None for _, values in rows] if view else None
                with atomic.atomic_path(staged(folder + Path(f.path).name)) as tmp, storage.open_file(tmp, "wb") as out:
                    try:
                        tars.copy_with_fields(f.path, out, samples, txts, replace_fields=job.options.replace_json_fields,
                                              check_headers=headers_check(planned))
                    except tars.FieldExists as e:
                        raise ExportError(f"{e}, which the export would replace with the rewrite: pass "
                                          "--replace-json-fields to replace it") from None
                    except tars.TarError as e:
                        raise ExportError(str(e)) from None

    def _rewrites(self, job: ExportJob, shard: int) -> list[tuple[str, dict]]:
        """(key, {column: rewrite or None}) for each row of the shard, in order."""
        columns = job.rewrite_columns()
        out = []
        for table in job.rewrites(shard):
            keys = table.column(job.key_column).to_pylist()
            values = {c: table.column(c).to_pylist() for c in columns}
            out += [(key, {c: values[c][i] for c in columns}) for i, key in enumerate(keys)]
        return out

    def _write_from_rows(self, job: ExportJob, shard: int, staged) -> None:
        """One tar of the shard's rows: image, caption and a json of the rest, per row (views too)."""
        column, is_path = _image_source(job)
        caption, rewrites = job.manifest.caption_column, job.rewrite_columns()
        plain = [f.name for f in job.manifest.schema if f.name not in (column, caption) and _plain(f.type)]
        name = self._tars(job, shard)[0]
        with contextlib.ExitStack() as stack:
            writers = {}
            for folder in self._folders(job):  # each tar is closed before its file is committed
                tmp = stack.enter_context(atomic.atomic_path(staged(folder + name)))
                out = stack.enter_context(storage.open_file(tmp, "wb"))
                writers[folder] = stack.enter_context(tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT))
            for table in job.rows(shard):
                for row in table.to_pylist():
                    key = row[job.key_column]
                    _check_key(key, name)
                    image, ext = _image(row[column], is_path, key)
                    fields = {c: row[c] for c in plain if row[c] is not None}
                    fields.update({c: row[c] or "" for c in rewrites})
                    meta = json.dumps(fields, ensure_ascii=False, default=str).encode()
                    for folder, tar in writers.items():
                        view = folder[len(VIEWS) + 1:-1] if folder else None
                        text = (row[view] if view and row[view] else row[caption]) or ""
                        for member, data in ((f"{key}.{ext}", image), (f"{key}.txt", text.encode()), (f"{key}.json", meta)):
                            info = tarfile.TarInfo(member)
                            info.size, info.mode = len(data), 0o644
                            tar.addfile(info, io.BytesIO(data))

    def final_files(self, job):
        return [f"{folder}{SIZES}" for folder in self._folders(job)]

    def finish(self, job, staged, summary):
        if _from_tars(job):
            sizes = {Path(f.path).name: f.rows for f in job.manifest.files}
        else:
            sizes = {self._tars(job, s)[0]: job.manifest.shard_rows(s) for s in range(job.manifest.num_shards)}
        for folder in self._folders(job):
            atomic.write_text(staged(f"{folder}{SIZES}"), json.dumps(sizes, indent=1) + "\n")
        summary["columns"] = [layout.KEY, "txt", "json"] + [f"json.{c}" for c in job.rewrite_columns()]


def _from_tars(job: ExportJob) -> bool:
    return all(f.format == "wds" for f in job.manifest.files)


def _image_source(job: ExportJob) -> tuple[str, bool]:
    """The column the images of table input come from, and whether it holds paths (else bytes)."""
    schema = job.manifest.schema
    for f in schema:
        if tables.holds_bytes(f.type):
            return f.name, False
    if job.options.image_column or any(c in schema.names for c in tables.IMAGE_COLUMNS):
        return tables.image_column(job), True
    raise ExportError("--format wds: the input holds no images (no column of image bytes, none of the path columns "
                      f"{', '.join(tables.IMAGE_COLUMNS)}): name one with --image-column, or use --format hf or csv")


def _plain(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or \
        pa.types.is_floating(t) or pa.types.is_boolean(t)


def _image(value, is_path: bool, key: str) -> tuple[bytes, str]:
    """A row's image bytes and extension, from its bytes (or a Hugging Face Image's) or its path."""
    if is_path:
        path = Path(value["path"] if isinstance(value, dict) else value or "")
        try:
            data = storage.read_bytes(path)
        except OSError as e:
            raise ExportError(f"row {key}: cannot read its image {path} ({e.strerror})") from None
        return data, path.suffix.lstrip(".").lower() or tables.sniff(data)
    data = value["bytes"] if isinstance(value, dict) else value
    if data is None:
        raise ExportError(f"row {key}: no image bytes (a sample needs an image)")
    return data, tables.sniff(data)


def _check_key(key: str, tar: str) -> None:
    """A row key that can name tar members: no way out of a folder, and no dot (readers cut keys there)."""
    tables.check_key(key, tar)
    if "." in key.rsplit("/", 1)[-1]:
        raise ExportError(f"row {key}: a webdataset key cannot hold a dot (readers cut the key there)")


class WdsReader:
    """Webdataset tars: KEY.txt the caption, KEY.json the rewrite fields ("" where there is no rewrite) after
    the input's own. Only the text members are read; the views/ tars repeat the same rewrites. (For tar input
    whose captions came from a KEY.json field, KEY.txt is not the caption: the export does not record that.)"""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.paths = [folder / f for f in files if f.endswith(".tar") and "/" not in f]
        self.total = len(self.paths)
        first = next((s for path in self.paths for s in self._samples(path)), None)
        self.columns = rewrite_columns(list((first and first.json) or {}), folder)

    def _samples(self, path: Path) -> Iterator[tars.Sample]:
        try:
            yield from tars.iter_samples(path)
        except tars.TarError as e:
            raise ExportError(str(e)) from None

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for path in self.paths:
            samples = list(self._samples(path))
            yield Rows(None, [s.key for s in samples], [s.caption for s in samples],
                       {c: [(s.json or {}).get(c) or None for s in samples] for c in wanted})
