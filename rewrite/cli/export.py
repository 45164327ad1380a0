"""`rewrite export`: join the inputs with their rewrites in a form a CLIP trainer reads."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..exports import export as export_lib
from .. import exports
from ..workdir.manifest import load_manifest, parse_shard_spec
from ..exports import publish
from .. import stop
from ..stop import StopRequested, EXIT_CODE as STOPPED
from .shared import StorageOptions, app, reported, report_export, use_storage_options


@app.command()
def export(
    work: str = typer.Option(..., "--work"),
    out: str = typer.Option(..., "--out", help="Folder to write (not inside the work dir or an input), or a URL of a remote store (s3://bucket/dataset)."),
    source: Optional[List[str]] = typer.Option(None, help="Sources to include (default: all that were run)."),
    fmt: str = typer.Option(exports.DEFAULT, "--format", help="hf (parquet + dataset card), wds (webdataset tars), csv (open_clip) or laclip (LaCLIP's CSV + one text file per rewrite)."),
    shards: str = typer.Option("all", help="Shards to export now (array tasks each export theirs; the last to finish publishes)."),
    workers: int = typer.Option(1, help="Shards exported at once by local processes."),
    image_column: Optional[str] = typer.Option(None, help="csv/laclip: the input column of image paths (default: the first of " + ", ".join(exports.tables.IMAGE_COLUMNS) + ")."),
    extract_images: Optional[Path] = typer.Option(None, help="csv/laclip: write images held in tars or parquet to this folder, named by key, and point the path column there."),
    captions_only: bool = typer.Option(False, help="Only key, caption and rewrites (hf, csv): for joining at training time."),
    views: Optional[List[str]] = typer.Option(None, "--views", help="wds: also write views/<column>/ tars whose .txt is this rewrite column, e.g. caption_chatgpt (repeatable)."),
    separator: str = typer.Option("\t", help="csv: the field separator (open_clip's --csv-separator)."),
    replace_json_fields: bool = typer.Option(False, help="wds: replace a rewrite field (caption_<set>) that an input KEY.json has already (else such a sample is refused)."),
    allow_missing: bool = typer.Option(False, help="Export even when shards are unfinished (their rewrites are null)."),
    overwrite: bool = typer.Option(False, help="Replace an earlier export in --out (only files an export wrote are replaced)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    storage_option: StorageOptions = None,
):
    """Join the inputs with their rewrites in the form a CLIP trainer reads.

    The export appears all at once; a killed export is finished by running it again. Exit codes: 0
    published (or, with --shards, those shards written: the export that writes the last shard publishes),
    1 a file could not be read or written, 2 bad input or options, 75 stopped by a signal or not
    published because another export holds OUT (run the same command again to finish)."""
    try:
        with reported(), stop.handling():
            use_storage_options(storage_option)
            options = exports.ExportOptions(image_column=image_column, extract_images=extract_images,
                                            captions_only=captions_only, views=list(views or []),
                                            separator=_separator(separator), replace_json_fields=replace_json_fields)
            manifest = load_manifest(work)
            summary = export_lib.export(work, out, source, fmt=fmt, shards=parse_shard_spec(shards, manifest.num_shards),
                                        workers=workers, options=options, allow_missing=allow_missing,
                                        overwrite=overwrite, progress=progress, manifest=manifest)
    except StopRequested as e:
        typer.echo(f"{e}: the shards exported so far are kept; run the same command again to finish the export",
                   err=True)
        raise typer.Exit(STOPPED)
    except publish.Busy as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(STOPPED)
    report_export(summary, out)


def _separator(text: str) -> str:
    """--separator as typed, backslash escapes read (`\\t`); a malformed escape is a bad option."""
    try:
        return text.encode().decode("unicode_escape")
    except UnicodeDecodeError:
        raise ValueError(f"--separator {text!r}: not a character or an escape such as \\t") from None
