"""The report's figures over an export (`collect_export`): it reads an export (hf, csv, laclip or wds) one
file at a time (a CSV a block at a time), only its caption and rewrite columns, and tallies its rows as
`collect` does. An export keeps no status: a rewrite it lacks counts as failed (it failed, or its shard
was exported missing; see EXPORT_NOTE), one whose caption is blank as skipped. What the export holds is
read from its record (publish.MARKER: the files it published) and from those files' own columns; the
record names no format, so the files tell it. The figures only a run records (shard states, requests,
retries, reject reasons, the set's example targets) are left null or empty.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import re
import sys
from pathlib import Path
from typing import IO, Iterator, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from .. import tars
from ..workdir import layout
from ..exports import publish
from ..exports import hf, laclip, openclip_csv, wds
from .errors import ReportError
from .tallies import Agreement, SetTally
from .from_work import _add_rows, _chosen, _summary

EXPORT_NOTE = ("From an export: no shard, request, retry or reject figures and no example targets (only a work "
               "dir records them). A rewrite the export lacks (null, empty, or in a csv export the caption, which "
               "it fills in) counts as failed: it failed, or its shard was exported without rewrites "
               "(--allow-missing). Rows a csv or laclip export leaves out (no caption, no image path) are not "
               "counted")
RUN_ONLY = ("shards", "shards_left_out", "requests", "first_attempts", "retries")  # figures only a run's stats give: null from an export
EXPORT_META_SET = {"digest": None, "file": None, "note": "an export does not record the set it was rewritten with"}


class Rows(NamedTuple):
    """Rows of an export read together: keys, captions and each rewrite column's texts (None: no rewrite)."""
    shard: int | None  # the plan's shard, where the export keeps it (hf)
    keys: list
    captions: list[str | None]
    rewrites: dict[str, list[str | None]]


def kind(path: str | Path) -> str:
    """What `path` is: "export" (a folder `rewrite export` published into holds its record) or "work" (a
    work dir holds its plan)."""
    path = Path(path)
    if (path / publish.MARKER).is_file():
        return "export"
    if layout.Work(path).manifest.is_file():
        return "work"
    raise ReportError(f"{path} is neither a work dir (no {layout.Work(path).manifest.name}, which `rewrite shard` "
                      f"writes) nor an export (no {publish.MARKER}, which `rewrite export` writes)")


def exported_files(folder: Path) -> list[str]:
    """The files of the export published in `folder`, from its record, each checked to be as published."""
    record = folder / publish.MARKER
    try:
        marker = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"{record}: cannot read the export's record ({e})") from None
    if not marker.get("published"):
        raise ReportError(f"{folder} holds no finished export (one is being written, or was cut short): "
                          "run `rewrite export` to the end first")
    files = marker.get("files", [])
    for name in files:
        path = folder / name
        if not path.is_file() or path.stat().st_size != marker.get("sizes", {}).get(name):
            raise ReportError(f"{path} is missing or changed since it was exported: export again")
    return files


def export_format(folder: Path, files: list[str]) -> str:
    """An export's format, from the files it published (its record names none)."""
    names = set(files)
    if hf.CARD in names and any(f.startswith("data/") and f.endswith(".parquet") for f in files):
        return "hf"
    if wds.SIZES in names and any(f.endswith(".tar") for f in files):
        return "wds"
    if laclip.CSV_FILE in names and any(f.endswith(".txt") for f in files):
        return "laclip"
    if names & {"train.tsv", "train.csv"}:
        return "csv"
    raise ReportError(f"{folder}: an export of no format the report reads ({', '.join(files[:5])}): it reads "
                      f"{', '.join(READERS)} exports")


def rewrite_columns(names: Sequence[str], where: Path) -> list[str]:
    """The rewrite columns of an export: the `caption_<set>` ones every format writes after the input's own."""
    columns = list(itertools.takewhile(lambda n: n.startswith(layout.EXPORT_PREFIX), reversed(names)))[::-1]
    if not columns:
        raise ReportError(f"{where}: no rewrite column ({layout.EXPORT_PREFIX}<set>) after the input's columns")
    return columns


def export_sets(columns: list[str]) -> dict[str, list[str]]:
    """Each set's rewrite columns: `caption_<set>`, or `caption_<set>_0`, `caption_<set>_1`, ... for a set
    with several rewrites a row (as layout.export_column names them)."""
    sets, rest = {}, list(columns)
    while rest:
        name = rest[0][len(layout.EXPORT_PREFIX):]
        base = name.removesuffix("_0")
        n = 0
        while base != name and n < len(rest) and rest[n] == layout.export_column(base, n, 2):  # 2: any n > 1
            n += 1
        if n < 2:
            base, n = name, 1
        sets[base], rest = rest[:n], rest[n:]
    return sets


def _csv_blocks(path: Path, delimiter: str, columns: list[str], names: list[str] | None = None) -> Iterator[dict]:
    """`columns` of a CSV a block at a time, every cell the text written (none read as missing)."""
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(column_names=names),
                                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                                convert_options=pacsv.ConvertOptions(include_columns=columns,
                                                                     column_types=dict.fromkeys(columns, pa.string())))
        for batch in reader:
            yield {c: batch.column(c).to_pylist() for c in columns}
    except (pa.ArrowException, OSError) as e:
        raise ReportError(f"{path}: cannot read it as the export wrote it ({e})") from None


class HfReader:
    """data/train-*.parquet, one file a shard: `key`, `caption` (the input's, kept as stored) and the rewrite
    columns, nulls where there is no rewrite."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.paths = [folder / f for f in sorted(files) if f.startswith("data/") and f.endswith(".parquet")]
        self.total = len(self.paths)
        names = pq.read_schema(self.paths[0]).names
        if layout.CAPTION not in names:
            raise ReportError(f"{self.paths[0]} has no {layout.CAPTION!r} column: the export does not record which "
                              "column holds the captions (planned with --caption-column?)")
        self.key = layout.KEY if layout.KEY in names else None
        self.columns = rewrite_columns(names, self.paths[0])

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for shard, path in enumerate(self.paths):
            try:
                table = pq.read_table(path, columns=[c for c in (self.key, layout.CAPTION) if c] + wanted)
            except (pa.ArrowException, OSError) as e:
                raise ReportError(f"{path}: cannot read its caption columns ({e})") from None
            keys = table.column(self.key).to_pylist() if self.key else [None] * table.num_rows
            yield Rows(shard, keys, table.column(layout.CAPTION).to_pylist(),
                       {c: table.column(c).to_pylist() for c in wanted})


class CsvReader:
    """open_clip's train.tsv (train.csv with another separator): image path, `title`, the rewrite columns.
    A failed rewrite was filled with the caption, which an ok rewrite never equals (validate: echo)."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.path, self.total = folder / next(f for f in files if f in ("train.tsv", "train.csv")), None
        with open(self.path, encoding="utf-8", newline="") as f:
            line = f.readline()
        found = re.search(rf"(.){openclip_csv.TITLE}\1{layout.EXPORT_PREFIX}", line)  # the separator around `title`
        if not found:
            raise ReportError(f"{self.path}: its header has no {openclip_csv.TITLE!r} column before the rewrite columns")
        self.separator = found.group(1)
        header = next(csv.reader([line], delimiter=self.separator))
        self.image, self.columns = header[0], rewrite_columns(header, self.path)

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for block in _csv_blocks(self.path, self.separator, [self.image, openclip_csv.TITLE] + wanted):
            captions = block[openclip_csv.TITLE]
            yield Rows(None, block[self.image], captions,
                       {c: [None if r == caption else r for r, caption in zip(block[c], captions)] for c in wanted})


class LaclipReader:
    """LaCLIP's train.csv (image path, caption; no header) and a text file per rewrite column, a line per
    CSV row, empty where there is no rewrite."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.path, self.folder, self.total = folder / laclip.CSV_FILE, folder, None
        self.columns = rewrite_columns([f.removesuffix(".txt") for f in files if f.endswith(".txt")], folder)

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        with contextlib.ExitStack() as stack:
            texts = {c: stack.enter_context(open(self.folder / f"{c}.txt", encoding="utf-8", newline="\n"))
                     for c in wanted}
            for block in _csv_blocks(self.path, ",", ["path", "caption"], names=["path", "caption"]):
                n = len(block["path"])
                yield Rows(None, block["path"], block["caption"],
                           {c: [self._line(f) or None for _ in range(n)] for c, f in texts.items()})
            longer = [f.name for f in texts.values() if f.readline()]
            if longer:
                raise ReportError(f"{longer[0]} has more lines than {self.path} has rows: the export is damaged")

    def _line(self, f: IO[str]) -> str:
        line = f.readline()
        if not line:
            raise ReportError(f"{f.name} has fewer lines than {self.path} has rows: the export is damaged")
        return line.removesuffix("\n")


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
            raise ReportError(str(e)) from None

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for path in self.paths:
            samples = list(self._samples(path))
            yield Rows(None, [s.key for s in samples], [s.caption for s in samples],
                       {c: [(s.json or {}).get(c) or None for s in samples] for c in wanted})


READERS = {"hf": HfReader, "csv": CsvReader, "laclip": LaclipReader, "wds": WdsReader}


def _export_sidecar(texts: list[str | None], captions: list[str | None]) -> tuple[list, list, None]:
    """(rewrites, statuses, reasons) of a rewrite column, as a sidecar would hold them: no text is a skip
    where the caption is blank (nothing was rewritten), else a failure; the reasons are unknown."""
    statuses = [layout.STATUS_OK if text is not None else
                layout.STATUS_SKIPPED if caption is None or not caption.strip() else layout.STATUS_FAILED
                for text, caption in zip(texts, captions)]
    return texts, statuses, None


def collect_export(folder: str | Path, sources: Sequence[str] | None = None, progress: bool = True,
                   embedder=None) -> dict:
    """The report's figures for each set in the export published in `folder` (or those of `sources`), as
    `collect` gives them; RUN_ONLY figures are null (see EXPORT_NOTE)."""
    folder = Path(folder)
    if kind(folder) != "export":
        raise ReportError(f"{folder} is a work dir, not an export: use collect")
    files = exported_files(folder)
    fmt = export_format(folder, files)
    reader = READERS[fmt](folder, files)
    sets = export_sets(reader.columns)
    names = _chosen(folder, list(sets), sources, "exported")
    tallies = {name: SetTally(name, len(sets[name]), embedder) for name in names}
    agreement, rows = Agreement(), 0
    for part in tqdm(reader.rows([c for name in names for c in sets[name]]), total=reader.total, desc="report",
                     unit="part", disable=not progress, file=sys.stderr, dynamic_ncols=True):
        rows += len(part.keys)
        _add_rows(tallies, agreement, part.shard, part.keys, part.captions,
                  {name: [_export_sidecar(part.rewrites[c], part.captions) for c in sets[name]] for name in names})
    figures = {name: {**t.summary(None, EXPORT_META_SET), **dict.fromkeys(RUN_ONLY)} for name, t in tallies.items()}
    return _summary(folder, {"shards": None, "rows": rows}, figures, agreement, "export", fmt, EXPORT_NOTE)
