"""`rewrite report`: how good the rewrites are, per set."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import defaults
from ..report.from_work import SAMPLE_ROWS
from .shared import _number, _share, app, fail, reported


def _margin(sample: dict, figure: str) -> str:
    """A per-row figure's 95% margin of error, as the per-set line shows it after the figure."""
    if sample["exact"]:
        return " (exact)"
    margin = sample["margin_95"][figure]
    if margin is None:
        return " (margin unknown: one shard read)"
    return f" ± {margin:.3f}"


def _read(sample: dict) -> str:
    """How many rows the per-row figures came from, when not from all of them."""
    if sample["exact"]:
        return ""
    return f"; per-row figures from {sample['rows']} rows, {sample['shards']}/{sample['of_shards']} shards"


@app.command()
def report(
    work: Optional[Path] = typer.Option(None, "--work", help="Work dir made by `rewrite shard` and run."),
    export_dir: Optional[Path] = typer.Option(None, "--export", help="Or an export folder (hf, csv, laclip or wds): no reject or retry figures there."),
    out: Path = typer.Option(..., "--out", help="Folder for report.html, the .png plots and report.json."),
    source: Optional[List[str]] = typer.Option(None, help="Only these sets (default: every set that was run)."),
    embedding_model: Optional[Path] = typer.Option(None, help="A local CLIP (Hugging Face form) or sentence-embedding model folder: adds the embedding similarity of each rewrite to its caption."),
    overwrite: bool = typer.Option(False, help="Replace an earlier report in --out (only the files a report wrote)."),
    sample_rows: int = typer.Option(
        SAMPLE_ROWS, help="Rows to read for the per-row figures (lengths, scores, diversity, best and worst rows, "
        "agreement): whole done shards drawn at random until at least this many, each mean and share with its 95% "
        "margin of error; 0: every row. Counts (valid rate, reasons, requests, retries, tokens) always come exact "
        "from every done shard's stats. The default takes one or two minutes of one core (0.2-0.6 ms a row) and, at "
        "10,000 rows a shard, reads 20 shards: enough to estimate the margins. An export is read whole."),
    seed: int = typer.Option(defaults.SEED, help="Seed of the draw of shards for --sample-rows."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """How good the rewrites are, per set: valid rate and reject reasons, retries, lengths, word overlap,
    diversity, faithfulness to the caption, the best and worst rows (reads only the caption columns)."""
    from .. import report as report_lib

    if (work is None) == (export_dir is None):
        fail("give one of --work or --export")
    with reported():
        made = report_lib.report(work or export_dir, out, source, progress=progress, embedding_model=embedding_model,
                                 overwrite=overwrite, sample_rows=sample_rows, seed=seed)
    total = made["summary"]["plan"]["rows"]
    for name, figures in made["summary"]["sets"].items():
        sample = figures["sample"]
        typer.echo(f"{name}: valid {_share(figures['valid_rate'])} of {figures['rows']}/{total} rows, faithfulness "
                   f"{_number(figures['faithfulness']['mean'])}{_margin(sample, 'faithfulness.mean')} "
                   f"(below 0.3: {_share(figures['faithfulness']['below']['0.3'])}), "
                   f"words {_number(figures['length']['words']['original']['mean'])} -> "
                   f"{_number(figures['length']['words']['rewrite']['mean'])}{_read(sample)}")
        left_out = figures.get("shards_left_out") or {}
        if left_out:
            detail = "; ".join(f"{int(k):05d} {why}" for k, why in list(left_out.items())[:3])
            typer.echo(f"warning: {name}: {len(left_out)} shards not counted ({detail}{'; ...' if len(left_out) > 3 else ''})",
                       err=True)
    typer.echo(f"report: {made['paths']['html'].resolve()} (figures for scripts: {made['paths']['json'].name})")
