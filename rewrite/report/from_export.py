"""The report's figures over an export (`collect_export`): it reads an export (hf, csv, laclip or wds)
through the reader of the format that wrote it (exports/<format>.py), one file at a time (a CSV a block at
a time), only its caption and rewrite columns, and tallies its rows as `collect` does. An export keeps no
status: a rewrite it lacks counts as failed (it failed, or its shard was exported missing; see
EXPORT_NOTE), one whose caption is blank as skipped. What the export holds is read from its record
(publish.MARKER: the files it published, its format, sets and columns; an export made before the record
said so is known by its files and columns). The figures only a run records (shard states, requests,
retries, tokens, reject reasons, the set's example targets) are left null or empty. Every row is read: an
export keeps no counts to take instead of its rows' (it is read in the order its reader gives, which
cannot skip to a part drawn at random), so its per-row figures are exact.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .. import exports, storage
from ..exports import ExportError, hf, laclip, publish, wds
from ..workdir import layout
from .errors import ReportError
from .tallies import COUNTED, Agreement, SetTally
from .from_work import _add_rows, _chosen, _summary

EXPORT_NOTE = ("From an export: no shard, request, retry or reject figures and no example targets (only a work "
               "dir records them). A rewrite the export lacks (null, empty, or in a csv export the caption, which "
               "it fills in) counts as failed: it failed, or its shard was exported without rewrites "
               "(--allow-missing). Rows a csv or laclip export leaves out (no caption, no image path) are not "
               "counted")
RUN_ONLY = ("shards", "shards_left_out", "requests", "first_attempts", "retries", "tokens")  # figures only a run's stats give: null from an export
EXPORT_META_SET = {"digest": None, "file": None, "note": "an export does not record the set it was rewritten with"}


def kind(path: str | Path) -> str:
    """What `path` is: "export" (a folder `rewrite export` published into holds its record) or "work" (a
    work dir holds its plan)."""
    path = Path(path)
    if storage.is_file(path / publish.MARKER):
        return "export"
    if storage.is_file(layout.Work(path).manifest):
        return "work"
    raise ReportError(f"{path} is neither a work dir (no {layout.Work(path).manifest.name}, which `rewrite shard` "
                      f"writes) nor an export (no {publish.MARKER}, which `rewrite export` writes)")


def exported(folder: Path) -> tuple[list[str], dict]:
    """The files of the export published in `folder`, each checked to be as published, and what the export
    is (its format, sets and columns; {} for an export made before its record said so), from its record."""
    record = folder / publish.MARKER
    try:
        marker = json.loads(storage.read_text(record))
    except (OSError, ValueError) as e:
        raise ReportError(f"{record}: cannot read the export's record ({e})") from None
    if not marker.get("published"):
        raise ReportError(f"{folder} holds no finished export (one is being written, or was cut short): "
                          "run `rewrite export` to the end first")
    files = marker.get("files", [])
    for name in files:
        path = folder / name
        if not storage.is_file(path) or storage.size(path) != marker.get("sizes", {}).get(name):
            raise ReportError(f"{path} is missing or changed since it was exported: export again")
    return files, marker.get("export") or {}


DOCS_ORDER = ("hf", "csv", "laclip", "wds")  # every export format, in the order the docs name them


def _holds(fmt: str, files: list[str]) -> bool:
    """Whether an export's published files are those of format `fmt`."""
    names = set(files)
    return {
        "hf": lambda: hf.CARD in names and any(f.startswith("data/") and f.endswith(".parquet") for f in files),
        "wds": lambda: wds.SIZES in names and any(f.endswith(".tar") for f in files),
        "laclip": lambda: laclip.CSV_FILE in names and any(f.endswith(".txt") for f in files),
        "csv": lambda: bool(names & {"train.tsv", "train.csv"}),
    }[fmt]()


def export_format(folder: Path, files: list[str], record: dict) -> str:
    """An export's format: as its record says (an export made before the record said so: the format whose
    files it published), its files checked to be that format's."""
    said = record.get("format")
    for fmt in ([said] if said in exports.FORMATS else ["hf", "wds", "laclip", "csv"]):
        if _holds(fmt, files):
            return fmt
    raise ReportError(f"{folder}: an export of no format the report reads ({', '.join(files[:5])}): it reads "
                      f"{', '.join(DOCS_ORDER)} exports")


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




def _export_sidecar(texts: list[str | None], captions: list[str | None]) -> tuple[list, list]:
    """(rewrites, statuses) of a rewrite column, as a sidecar would hold them: no text is a skip where the
    caption is blank (nothing was rewritten), else a failure."""
    statuses = [layout.STATUS_OK if text is not None else
                layout.STATUS_SKIPPED if caption is None or not caption.strip() else layout.STATUS_FAILED
                for text, caption in zip(texts, captions)]
    return texts, statuses


def _counts(rows: int, sidecar: list[tuple[list, list]]) -> dict:
    """A part's counts as a shard's stats hold them: its rows and its rewrites by status."""
    statuses = Counter(status for _, column in sidecar for status in column)
    return {"rows": rows, **{status: statuses[status] for status in COUNTED}}


def collect_export(folder: str | Path, sources: Sequence[str] | None = None, progress: bool = True,
                   embedder=None) -> dict:
    """The report's figures for each set in the export published in `folder` (or those of `sources`), as
    `collect` gives them; RUN_ONLY figures are null (see EXPORT_NOTE)."""
    folder = Path(folder)
    if kind(folder) != "export":
        raise ReportError(f"{folder} is a work dir, not an export: use collect")
    files, record = exported(folder)
    fmt = export_format(folder, files, record)
    try:
        reader = exports.named(fmt).reader(folder, files)
    except ExportError as e:
        raise ReportError(str(e)) from None
    sets = record.get("sets") or export_sets(reader.columns)
    names = _chosen(folder, list(sets), sources, "exported")
    tallies = {name: SetTally(name, len(sets[name]), embedder) for name in names}
    agreement, rows, read = Agreement(), 0, 0
    parts = reader.rows([c for name in names for c in sets[name]])
    try:
        for part in tqdm(parts, total=reader.total, desc="report", unit="part", disable=not progress,
                         file=sys.stderr, dynamic_ncols=True):
            rows, read = rows + len(part.keys), read + 1
            sidecars = {name: [_export_sidecar(part.rewrites[c], part.captions) for c in sets[name]] for name in names}
            for name, sidecar in sidecars.items():
                tallies[name].add_counts(_counts(len(part.keys), sidecar))
            agreement.add(_add_rows(tallies, part.shard, part.keys, part.captions, sidecars))
    except ExportError as e:
        raise ReportError(str(e)) from None
    figures = {name: {**t.summary(None, EXPORT_META_SET, read), **dict.fromkeys(RUN_ONLY)} for name, t in tallies.items()}
    across_sets = agreement.summary(list(figures), read if len(names) > 1 else 0)
    return _summary(folder, {"shards": None, "rows": rows}, figures, across_sets, "export", fmt, EXPORT_NOTE,
                    {"sample_rows": 0, "seed": None})
