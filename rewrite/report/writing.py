"""The report folder: `report` collects (a work dir or an export) and `write` turns the summary into
report.json, PNG plots and one self-contained report.html there, in a folder of its own that keeps the
record (MARKER) of the files it wrote.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .. import defaults, storage
from ..workdir import atomic, layout, outputs
from .errors import ReportError
from .from_work import SAMPLE_ROWS, _manifest, checked_sample_rows, collect
from .from_export import collect_export, kind
from .render import plots, render_html


MARKER = ".rewrite-report.json"  # in a report folder: the files the report wrote there


def check_out(path: str | Path, out: str | Path, read_from: str = "work", overwrite: bool = False) -> Path:
    """The report folder: a folder of its own (never the folder read, inside it or holding it, nor one
    of the work dir's inputs), new or empty, or holding an earlier report (replaced only with
    `overwrite`); a folder with anything a report did not write is refused."""
    out, path = Path(out).resolve(), Path(path).resolve()
    read = outputs.read_by(layout.Work(path), _manifest(layout.Work(path))) if read_from == "work" else [("the export", path)]
    problem = outputs.overlap(out, read, "--out", "a report")
    if problem:
        raise ReportError(problem)
    if storage.exists(out) and not storage.is_dir(out):
        raise ReportError(f"--out {out} is a file, not a folder")
    entries = storage.list_dir(out) if storage.is_dir(out) else []
    ours = _written_before(out)
    foreign = [name for name in entries if name != MARKER and name not in ours]
    if foreign:
        raise ReportError(f"--out {out} holds files a report did not write ({', '.join(foreign[:5])}): choose a new "
                          "or empty folder; nothing there is removed or replaced")
    if ours and not overwrite:
        raise ReportError(f"--out {out} holds an earlier report: pass --overwrite to replace it, or choose another folder")
    return out


def _written_before(out: Path) -> list[str]:
    """The files an earlier report wrote in `out` (its record), [] when there is none."""
    try:
        record = json.loads(storage.read_text(out / MARKER))
        files = record["files"]
        if not (isinstance(files, list) and all(isinstance(f, str) and "/" not in f for f in files)):
            raise ValueError
        return files
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ReportError(f"{out / MARKER} is damaged: remove {out} yourself, or choose another --out") from None


def write(summary: dict, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """report.json, the plots and report.html in `out_dir` (made if missing; see check_out), then the
    record of what it wrote; the files of an earlier report there that this one does not write go."""
    out = check_out(summary["work"], out_dir, summary["source"], overwrite)
    before = _written_before(out)
    storage.make_dirs(out)
    paths = {"json": out / "report.json"}
    atomic.write_json(paths["json"], summary)
    paths.update(plots(summary, out))
    paths["html"] = out / "report.html"
    atomic.write_text(paths["html"], render_html(summary, paths))
    names = sorted(p.name for p in paths.values())
    atomic.write_json(out / MARKER, {"made_by": "rewrite report", "files": names})
    for name in set(before) - set(names):
        storage.remove(out / name)
    return paths


def report(path: str | Path, out: str | Path, sources: Sequence[str] | None = None, progress: bool = True,
           embedding_model: str | Path | None = None, overwrite: bool = False, sample_rows: int = SAMPLE_ROWS,
           seed: int = defaults.SEED) -> dict:
    """collect (`path` a work dir; its per-row figures from `sample_rows` rows drawn with `seed`, see
    collect) or collect_export (an export, read whole), then write: {"summary": ..., "paths": ...}. The
    options and the report folder are checked (and the embedding model loaded) before the reading."""
    checked_sample_rows(sample_rows)
    read_from = kind(path)
    check_out(path, out, read_from, overwrite)
    embedder = None
    if embedding_model is not None:
        from ..rewriting.embedding import Embedder

        embedder = Embedder(embedding_model)
    summary = (collect(path, sources, progress, embedder, sample_rows, seed) if read_from == "work" else
               collect_export(path, sources, progress, embedder))
    summary["embedding_model"] = embedder.name if embedder else None
    return {"summary": summary, "paths": write(summary, out, overwrite)}
