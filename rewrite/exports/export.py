"""Export: the input rows joined with each source's rewrites, in the form a CLIP trainer reads
(rewrite/exports/: Hugging Face parquet, webdataset tars, open_clip CSV, LaCLIP's files).

An export is written shard by shard into OUT/.rewrite-staging/ and published all at once (publish.py):
a reader never sees part of an export, a killed export is finished by a rerun that skips the shards
already written, and only files an export wrote are ever replaced. Array tasks may each export their
own shards (`--shards`) into one OUT; whichever finds every shard written last publishes it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Sequence

from .. import children, exports, faults, meta, stop, storage
from ..workdir import atomic, layout, outputs, status
from ..workdir.manifest import Manifest, format_shard_spec, load_manifest
from ..workdir.record import recorded_settings
from . import ExportError, ExportJob, ExportOptions, images, publish
from .base import PARTS


def check_out_folder(out: Path, w: layout.Work, manifest: Manifest, option: str = "--out",
                     others: Sequence[tuple[str, Path]] = ()) -> None:
    """Refuse an output folder that is, holds or lies inside the work dir, an input or `others`."""
    read = outputs.read_by(w, manifest) + [(name, p.resolve()) for name, p in others]
    out = storage.location(out) if isinstance(out, str) else out
    problem = outputs.overlap(out if storage.is_remote(out) else out.resolve(), read, option, "an export")
    if problem:
        raise ExportError(problem)


def export_id(manifest: Manifest, settings: dict, fmt: str, options: ExportOptions) -> str:
    """What defines the export being staged: the plan, each source's settings, the format and its options.
    (Which rewrites each shard's files were made from is recorded per shard: `_made_from`.)"""
    body = {"plan": manifest.plan_id(), "format": fmt, "sources": settings,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _made_from(statuses: list, shard: int) -> dict[str, str | None]:
    """The committed rewrite files a shard's export is made from (sha256 per source; None: not done)."""
    return {st.source: st.digests.get(shard) for st in statuses}


def _content(made_from: dict) -> str:
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:16]


def _record(shard: int) -> str:
    """Staged beside a shard's files, written after them: what they were made from."""
    return f"{PARTS}/{layout.shard_id(shard)}.from.json"


def _images_present(job: ExportJob, shards: Sequence[int]) -> bool:
    """With --extract-images, each shard's image folder is there."""
    folder = job.options.extract_images
    return folder is None or all(images.present(folder, s) for s in shards)


def _written(folder: publish.OutputFolder, job: ExportJob, files: list[str], shard: int, made_from: dict) -> bool:
    """The shard's files are staged (its images extracted, if asked), made from the rewrites committed now
    (a shard redone since, or done since it was exported with --allow-missing, is exported again), and
    still the files its record lists: same size, and while staged the same checksum (an object's ETag)."""
    record = folder.path(_record(shard))
    if not (storage.is_file(record) and all(folder.written(f) for f in files) and _images_present(job, [shard])):
        return False
    try:
        kept = json.loads(storage.read_text(record))
    except ValueError:
        return False
    listed = kept.get("files") if isinstance(kept, dict) else None
    return (kept.get("made_from") == made_from and isinstance(listed, dict)
            and all(_same(folder, f, listed.get(f)) for f in files))


def _same(folder: publish.OutputFolder, name: str, recorded: dict | None) -> bool:
    """Whether written file `name` is the one recorded: by fingerprint while staged; once moved into place
    by a publish cut short, by size (a server-side copy may give an object another ETag)."""
    if not isinstance(recorded, dict):
        return False
    staged = folder.path(name)
    if storage.is_file(staged):
        return storage.fingerprint(staged) == recorded
    return storage.size(folder.out / name) == recorded.get("size")


def export(
    work: str | Path,
    out: str | Path,
    sources: Sequence[str] | None = None,
    *,
    fmt: str = exports.DEFAULT,
    shards: Sequence[int] | None = None,
    workers: int = 1,
    options: ExportOptions | None = None,
    allow_missing: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    manifest: Manifest | None = None,
) -> dict:
    """Write the export's files for `shards` (default: all), and publish it once every shard is written.
    Returns a summary (files, rows, columns, missing shards, whether it is published). `manifest`: the
    plan, when the caller has read it (it is read once per export)."""
    w, out, options = layout.Work(work), storage.location(str(out)), options or ExportOptions()
    export_format = exports.named(fmt)
    exports.check_options(export_format, options)
    if workers < 1:
        raise ExportError(f"--workers must be >= 1, got {workers}")
    manifest = manifest or load_manifest(w)
    everything = list(range(manifest.num_shards))
    chosen = everything if shards is None else list(shards)
    check_out_folder(out, w, manifest)
    if options.extract_images is not None and storage.is_remote(out):
        raise ExportError("--extract-images writes image files beside an export on a filesystem: with --out a URL, "
                          "export the images' tars with --format wds instead")
    if options.extract_images is not None:  # images land there: never among the inputs, nor another's files
        check_out_folder(options.extract_images, w, manifest, "--extract-images", [("the export folder --out", out)])
        images.check(options.extract_images, out, overwrite)
    names = meta.chosen(w.root, w.sources_present(), sources, "run")
    _, statuses = status.collect(w, names, checksum=set(chosen), manifest=manifest)
    if not statuses:
        raise ExportError(f"{w.root} has no rewrites yet: run `rewrite run` first")
    missing = _missing(statuses, chosen, allow_missing)
    settings = {st.source: recorded_settings(w, st.source) for st in statuses}
    done = {st.source: {s for s, state in st.shards.items() if state == status.DONE} for st in statuses}
    job = ExportJob(w, manifest, settings, done, options)
    export_format.check(job)
    per_shard = {s: export_format.shard_files(job, s) for s in everything}
    made_from = {s: _made_from(statuses, s) for s in everything}
    files = [f for s in everything for f in per_shard[s] + [_record(s)]] + export_format.final_files(job)
    published = [f for f in files if Path(f).parts[0] != PARTS]
    summary = {"out": str(out), "format": fmt, "files": published, "rows": manifest.total_rows,
               "sources": list(settings), "missing": {k: format_shard_spec(v) for k, v in missing.items()},
               "damaged": [problem for st in statuses for problem in st.damage.values()],
               "counts": {st.source: {"ok": st.ok, "failed": st.failed, "skipped": st.skipped} for st in statuses},
               "whole": chosen == everything}
    locks = w.export_state(out) if storage.is_remote(out) else None
    with publish.OutputFolder(out, export_id(manifest, settings, fmt, options), published, content=_content(made_from),
                              overwrite=overwrite, scratch=[f for f in files if f not in published], locks=locks) as folder:
        if folder.up_to_date and _images_present(job, everything):
            return {**summary, "published": True, "up_to_date": True}
        if options.extract_images is not None:
            images.claim(options.extract_images, out, overwrite)
        folder.begin()
        todo = [s for s in chosen if not _written(folder, job, per_shard[s], s, made_from[s])]
        for shard in _write_shards(export_format, job, todo, folder.placement, workers, progress):
            atomic.write_json(folder.path(_record(shard)), {"made_from": made_from[shard], "files": {
                f: storage.fingerprint(folder.path(f)) for f in per_shard[shard]}})
        summary["written"] = format_shard_spec(todo)
        if not folder.alone():
            return {**summary, "published": False, "waiting": "other exports still write shards of this folder"}
        if folder.published():
            return {**summary, "published": True}
        # Other processes may have committed shards since this one started: judge by what is there now.
        _, statuses = status.collect(w, list(settings), manifest=manifest)
        made_from = {s: _made_from(statuses, s) for s in everything}
        folder.content = _content(made_from)
        summary["counts"] = {st.source: {"ok": st.ok, "failed": st.failed, "skipped": st.skipped} for st in statuses}
        unwritten = [s for s in everything if not _written(folder, job, per_shard[s], s, made_from[s])]
        if unwritten:
            return {**summary, "published": False, "unwritten": format_shard_spec(unwritten)}
        export_format.finish(job, folder.path, summary)
        folder.publish({"format": fmt, "sets": job.set_columns()})
    return {**summary, "published": True}


def _missing(statuses: list, shards: list[int], allow_missing: bool) -> dict[str, list[int]]:
    """Sources' shards among `shards` that are not done; refused unless `allow_missing`."""
    missing = {st.source: [s for s in shards if st.shards[s] != status.DONE] for st in statuses}
    missing = {k: v for k, v in missing.items() if v}
    if missing and not allow_missing:
        damage = [problem for st in statuses for problem in st.damage.values()]
        detail = "; ".join(f"{src}: shards {format_shard_spec(v)}" for src, v in missing.items())
        raise ExportError(f"not every shard is rewritten ({detail}). " + "".join(f"Damaged: {d}. " for d in damage[:3])
                          + "Finish them (`rewrite run`), or pass --allow-missing to export with nulls there")
    return missing


def _staged(placement: publish.Placement, name: str) -> Path:
    path = placement(name)
    storage.make_dirs(path.parent)
    return path


def _write_shards(export_format: exports.ExportFormat, job: ExportJob, shards: list[int],
                  placement: publish.Placement, workers: int, progress: bool) -> Iterator[int]:
    """Each shard's files, by `workers` processes at once; each file is committed as it is finished, and
    each shard is yielded once its files are on disk. Workers leave the fsyncs to this process (see
    atomic.deferred_sync), which makes each shard durable while they write the next ones. They die with
    this process, and a stop request (stop.py) drops the shards in flight: what is committed stays."""
    from tqdm import tqdm

    staged = functools.partial(_staged, placement)
    write = functools.partial(_write_unsynced, export_format, job, staged=staged)
    with tqdm(total=len(shards), unit="shard", desc="export", disable=not progress, file=sys.stderr) as bar, \
            contextlib.ExitStack() as stack:
        if workers == 1 or len(shards) < 2:
            written = (write(shard) for shard in shards)
        else:
            context = multiprocessing.get_context("fork")  # the job is not pickled whole per worker start
            pool = stack.enter_context(context.Pool(min(workers, len(shards)), initializer=_start_worker,
                                                    initargs=(os.getpid(),)))  # leaving it terminates them
            written = pool.imap(write, shards)
        for shard, files in zip(shards, written):
            atomic.sync_files(files)
            faults.point("exported")
            bar.update()
            yield shard
            stop.check()  # asked to stop: take no new shard


def _start_worker(parent: int) -> None:
    children.die_with_parent(parent)
    children.worker_signals()


def _write_unsynced(export_format: exports.ExportFormat, job: ExportJob, shard: int, *, staged) -> list[Path]:
    """Write one shard's files, committed but not yet fsynced; their paths."""
    with atomic.deferred_sync() as committed:
        export_format.write_shard(job, shard, staged)
    return committed
