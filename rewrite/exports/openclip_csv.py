"""open_clip's CSV/TSV (`--csv-img-key`, `--csv-caption-key`, `--csv-separator`, read with pandas): one
file, train.tsv (train.csv with a comma separator), with a header row, the image path column, `title`
(the original caption) and one column per rewrite. pandas reads an empty cell (or "NA", "null", ...) as
NaN, which trains as the text "nan": a rewrite that failed is filled with the original caption, and a row
whose own caption would read as missing is left out (counted in the summary)."""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Iterator

from .. import storage
from ..workdir import atomic, layout
from . import tables
from .base import PARTS, ExportError, ExportFormat, ExportJob, Rows, rewrite_columns


TITLE = "title"  # open_clip's default --csv-caption-key


class OpenClipCsvExport(ExportFormat):
    name = "csv"
    options = ("image_column", "extract_images", "captions_only", "separator")

    def reader(self, folder, files):
        return CsvReader(folder, files)

    def _file(self, job: ExportJob) -> str:
        return "train.tsv" if job.options.separator == "\t" else "train.csv"

    def _path_column(self, job: ExportJob) -> str:
        return job.options.image_column or tables.image_column(job) or "filepath"

    def check(self, job):
        if not job.options.captions_only:
            tables.image_column(job)

    def shard_files(self, job, shard):
        return [f"{PARTS}/{layout.shard_id(shard)}.{self.name}", f"{PARTS}/{layout.shard_id(shard)}.dropped"]

    def header(self, job: ExportJob) -> list[str]:
        first = job.key_column if job.options.captions_only else self._path_column(job)
        return [first, TITLE] + job.rewrite_columns()

    def write_shard(self, job, shard, staged):
        part, dropped_file = self.shard_files(job, shard)
        dropped = 0
        rows = _keyed_rows(job, shard) if job.options.captions_only else tables.image_rows(job, shard)
        with atomic.atomic_path(staged(part)) as tmp, storage.open_file(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter=job.options.separator, lineterminator="\n")
            for key, path, original, rewrites in rows:
                if not tables.readable(original) or not path:
                    dropped += 1
                    continue
                writer.writerow([path, original] + [r if tables.readable(r) else original for r in rewrites])
        atomic.write_text(staged(dropped_file), f"{dropped}\n")

    def final_files(self, job):
        return [self._file(job)]

    def finish(self, job, staged, summary):
        with atomic.atomic_path(staged(self._file(job))) as tmp, \
                storage.open_file(tmp, "w", encoding="utf-8", newline="") as out:
            csv.writer(out, delimiter=job.options.separator, lineterminator="\n").writerow(self.header(job))
            for shard in range(job.manifest.num_shards):
                with storage.open_file(staged(self.shard_files(job, shard)[0]), "r", encoding="utf-8",
                                       newline="") as part:
                    shutil.copyfileobj(part, out)
        summary["columns"] = self.header(job)
        summary["dropped_rows"] = sum(int(storage.read_text(staged(self.shard_files(job, s)[1])))
                                      for s in range(job.manifest.num_shards))
        summary["rows"] -= summary["dropped_rows"]


def _keyed_rows(job: ExportJob, shard: int):
    """--captions-only: each row's key stands where the image path would (key, key, caption, rewrites)."""
    caption, rewrites = job.manifest.caption_column, job.rewrite_columns()
    for table in job.rows(shard, [job.key_column, caption]):
        keys, originals = table.column(job.key_column).to_pylist(), table.column(caption).to_pylist()
        values = [table.column(c).to_pylist() for c in rewrites]
        for i, key in enumerate(keys):
            yield key, key, originals[i], [v[i] for v in values]


class CsvReader:
    """open_clip's train.tsv (train.csv with another separator): image path, `title`, the rewrite columns.
    A failed rewrite was filled with the caption, which an ok rewrite never equals (validate: echo)."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.path, self.total = folder / next(f for f in files if f in ("train.tsv", "train.csv")), None
        with storage.open_file(self.path, "r", encoding="utf-8", newline="") as f:
            line = f.readline()
        found = re.search(rf"(.){TITLE}\1{layout.EXPORT_PREFIX}", line)  # the separator around `title`
        if not found:
            raise ExportError(f"{self.path}: its header has no {TITLE!r} column before the rewrite columns")
        self.separator = found.group(1)
        header = next(csv.reader([line], delimiter=self.separator))
        self.image, self.columns = header[0], rewrite_columns(header, self.path)

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for block in tables.csv_blocks(self.path, self.separator, [self.image, TITLE] + wanted):
            captions = block[TITLE]
            yield Rows(None, block[self.image], captions,
                       {c: [None if r == caption else r for r, caption in zip(block[c], captions)] for c in wanted})
