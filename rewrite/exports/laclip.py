"""LaCLIP's train.py files (`--aug-text --augmented_caption_filelist ...`): train.csv without a header
(image path, original caption; Python's csv defaults) and one text file per rewrite column, line i for
CSV row i, a failed rewrite as an empty line (the loader then uses the original). LaCLIP silently drops a
row whose path does not end in .jpg/.jpeg/.png, which would shift every later rewrite line: such a path
is refused. No caption holds a line break (it would shift the lines too). A row without a caption of its
own is left out (counted in the summary)."""
from __future__ import annotations

import contextlib
import csv
import shutil
from pathlib import Path
from typing import IO, Iterator

from .. import storage
from ..workdir import atomic, layout
from . import tables
from .base import PARTS, ExportError, ExportFormat, ExportJob, Rows, rewrite_columns


CSV_FILE = "train.csv"
KEPT_SUFFIXES = (".jpg", ".jpeg", ".png")  # LaCLIP's CsvDatasetAugCap keeps only these (case-sensitive)
LACLIP_TYPES = tuple(s[1:] for s in KEPT_SUFFIXES)  # extracted images of other types are written as PNG


class LaclipExport(ExportFormat):
    name = "laclip"
    options = ("image_column", "extract_images")

    def reader(self, folder, files):
        return LaclipReader(folder, files)

    def check(self, job):
        tables.image_column(job)

    def _parts(self, job: ExportJob, shard: int) -> dict[str, str]:
        sid = layout.shard_id(shard)
        return {"csv": f"{PARTS}/{sid}.csv", "dropped": f"{PARTS}/{sid}.dropped",
                **{c: f"{PARTS}/{sid}.{c}.txt" for c in job.rewrite_columns()}}

    def shard_files(self, job, shard):
        return list(self._parts(job, shard).values())

    def write_shard(self, job, shard, staged):
        columns, parts = job.rewrite_columns(), self._parts(job, shard)
        lines: list[list[str]] = [[] for _ in columns]
        dropped = 0
        with atomic.atomic_path(staged(parts["csv"])) as tmp, \
                storage.open_file(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            for key, path, original, rewrites in tables.image_rows(job, shard, LACLIP_TYPES):
                if not original or not original.strip() or not path:
                    dropped += 1
                    continue
                if not path.endswith(KEPT_SUFFIXES):
                    raise ExportError(f"row {key}: image path {path!r} does not end in .jpg, .jpeg or .png, so "
                                      "LaCLIP's loader would drop it and misalign every later rewrite: convert "
                                      "the images, or use --extract-images DIR")
                writer.writerow([path, tables.one_line(original)])
                for column_lines, rewrite in zip(lines, rewrites):
                    column_lines.append(tables.one_line(rewrite or ""))
        for c, column_lines in zip(columns, lines):  # as many lines as the CSV part has rows
            atomic.write_text(staged(parts[c]), "".join(line + "\n" for line in column_lines))
        atomic.write_text(staged(parts["dropped"]), f"{dropped}\n")

    def final_files(self, job):
        return [CSV_FILE] + [f"{c}.txt" for c in job.rewrite_columns()]

    def finish(self, job, staged, summary):
        for name, part in [(CSV_FILE, "csv")] + [(f"{c}.txt", c) for c in job.rewrite_columns()]:
            with atomic.atomic_path(staged(name)) as tmp, storage.open_file(tmp, "wb") as out:
                for shard in range(job.manifest.num_shards):
                    with storage.open_file(staged(self._parts(job, shard)[part]), "rb") as f:
                        shutil.copyfileobj(f, out)
        summary["columns"] = ["image path", job.manifest.caption_column] + [f"{c}.txt" for c in job.rewrite_columns()]
        summary["dropped_rows"] = sum(int(storage.read_text(staged(self._parts(job, s)["dropped"])))
                                      for s in range(job.manifest.num_shards))
        summary["rows"] -= summary["dropped_rows"]


class LaclipReader:
    """LaCLIP's train.csv (image path, caption; no header) and a text file per rewrite column, a line per
    CSV row, empty where there is no rewrite."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.path, self.folder, self.total = folder / CSV_FILE, folder, None
        self.columns = rewrite_columns([f.removesuffix(".txt") for f in files if f.endswith(".txt")], folder)

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        with contextlib.ExitStack() as stack:
            texts = {c: stack.enter_context(storage.open_file(self.folder / f"{c}.txt", "r", encoding="utf-8",
                                                              newline="\n"))
                     for c in wanted}
            for block in tables.csv_blocks(self.path, ",", ["path", "caption"], names=["path", "caption"]):
                n = len(block["path"])
                yield Rows(None, block["path"], block["caption"],
                           {c: [self._line(f) or None for _ in range(n)] for c, f in texts.items()})
            longer = [f.name for f in texts.values() if f.readline()]
            if longer:
                raise ExportError(f"{longer[0]} has more lines than {self.path} has rows: the export is damaged")

    def _line(self, f: IO[str]) -> str:
        line = f.readline()
        if not line:
            raise ExportError(f"{f.name} has fewer lines than {self.path} has rows: the export is damaged")
        return line.removesuffix("\n")
