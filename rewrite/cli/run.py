"""`rewrite shard`, `rewrite run` and `rewrite status`: plan the shards, rewrite them, say where they stand."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import List, Optional

import typer

from .. import defaults, engines, exports, meta as meta_lib, stop
from ..exports import export as export_lib
from ..inputs import plan
from ..launch import slurm as slurm_lib
from ..launch.task import TaskResult, run_task
from ..run.config import EngineUnavailable, set_configs
from ..stop import STOP_WITHIN, StopRequested, EXIT_CODE as STOPPED
from ..workdir import layout, status as status_lib
from ..workdir.manifest import format_shard_spec, load_manifest, parse_shard_spec
from . import engine_options as opt
from .shared import EXIT_UNAVAILABLE, StorageOptions, app, reported, report_export, use_storage_options


def schedule_option(scheduler: str, open_chunks: int, builders: int | None = None) -> defaults.Schedule:
    choices = {"auto": None, "stream": True, "chunked": False}
    if scheduler not in choices:
        raise ValueError(f"--scheduler must be auto, stream or chunked, got {scheduler!r}")
    return defaults.Schedule(streaming=choices[scheduler], open_chunks=open_chunks, builders=builders)


@app.command()
def shard(
    inputs: List[str] = typer.Argument(..., help="Parquet/CSV/TSV/text files or webdataset .tar shards: files, folders, globs or brace ranges (shards/{00000..00127}.tar)."),
    out: str = typer.Option(..., "--out", help="Work dir to hold the plan and all outputs (a local or shared filesystem, not a bucket)."),
    num_shards: Optional[int] = typer.Option(None, help="Number of shards."),
    rows_per_shard: Optional[int] = typer.Option(None, help=f"Rows per shard (default {plan.DEFAULT_ROWS_PER_SHARD})."),
    caption_column: str = typer.Option("caption", help="Caption column of parquet/CSV/TSV inputs."),
    key_column: Optional[str] = typer.Option(None, help="Key column (default: `key` when present, else derived from file and row)."),
    caption_field: Optional[str] = typer.Option(None, help="Webdataset input: the KEY.json field holding the caption (default: KEY.txt)."),
    storage_option: StorageOptions = None,
):
    """Plan shards over the inputs and save the plan in the work dir. Inputs may be URLs of a remote
    store (s3://bucket/shards/{00000..00127}.tar, https://...): planning reads only footers, stats and
    tar headers there."""
    with reported():
        use_storage_options(storage_option)
        m = plan.plan(inputs, out, num_shards=num_shards, rows_per_shard=rows_per_shard,
                      caption_column=caption_column, key_column=key_column, caption_field=caption_field)
    typer.echo(f"planned {m.num_shards} shards over {m.total_rows} rows from {len(m.files)} files in {out}")


@app.command()
def run(
    work: str = typer.Option(..., "--work", help="Work dir made by `rewrite shard`."),
    source: str = typer.Option(..., help="Meta set: chatgpt, bard, coco (mscoco), human, or a .jsonl file; a comma-separated list of them, or all (the four): one engine start, each set its own column."),
    meta_dir: Optional[Path] = typer.Option(None, help="Read the sets named chatgpt, bard, coco, human from DIR/<name>.jsonl (e.g. the paper's own, from `rewrite meta import-laclip`)."),
    shards: str = typer.Option("all", help="Shards to run: 0-127, 7, 0,3,9-12 or all."),
    engine: opt.Engine = defaults.ENGINE,
    model: opt.Model = None,
    seed: int = typer.Option(defaults.SEED, help="Global seed: every random choice derives from it."),
    num_rewrites: int = typer.Option(defaults.NUM_REWRITES, help="Rewrites per caption."),
    num_examples: int = typer.Option(defaults.NUM_EXAMPLES, help="In-context examples per prompt (k)."),
    batch_size: Optional[int] = typer.Option(None, help=f"transformers: prompts per forward batch (default {defaults.BATCH_SIZE})."),
    dtype: opt.Dtype = None,
    max_model_len: opt.MaxModelLen = None,
    tensor_parallel_size: Optional[int] = typer.Option(None, help="vllm: GPUs per model."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="vllm: share of GPU memory to use."),
    enforce_eager: Optional[bool] = typer.Option(None, "--enforce-eager/--no-enforce-eager", help="vllm: skip CUDA graphs (default: on CPU only)."),
    engine_arg: opt.EngineArg = None,
    base_url: opt.BaseUrl = None,
    api: opt.Api = None,
    concurrency: opt.Concurrency = None,
    timeout: Optional[float] = typer.Option(None, help="openai: seconds per request (default 60)."),
    request_retries: Optional[int] = typer.Option(None, help="openai: retries of a request the server could not serve (no connection, a timeout, 429, 5xx), with exponential backoff (default 5)."),
    unavailable_after: Optional[int] = typer.Option(None, help="openai: after this many requests in a row the server could not serve (after their retries), stop the run (exit 69; its rows wait for a rerun); default twice --concurrency."),
    retry_failed: bool = typer.Option(False, help="Give the failed rows of the named shards, done ones included, another --max-attempts tries each (attempts numbered on from those spent, so the result is reproducible); other rows are kept."),
    chunk_rows: int = typer.Option(defaults.CHUNK_ROWS, help="Rows committed together."),
    scheduler: str = typer.Option("auto", help="stream: requests built ahead of the engine, a rejected rewrite retried at once, each chunk committed when its rows are final (keeps a GPU busy); chunked: a chunk at a time with retry rounds (reruns byte-identical with any engine); auto: stream with vllm and openai, chunked with transformers. Both send the same requests."),
    open_chunks: int = typer.Option(defaults.OPEN_CHUNKS, help="stream: chunks in flight at once (each holds its rows in memory; a kill loses at most these)."),
    builders: Optional[int] = typer.Option(None, help="stream: worker processes that build requests and judge rewrites beside the engine's process, so its Python (vLLM's front end, the stream) has a core and a GIL to itself; 0: none (default: a quarter of the cores the task was given, none below 4). Output is the same."),
    max_attempts: int = typer.Option(defaults.MAX_ATTEMPTS, help="Tries per rewrite before it is stored as failed."),
    min_faithfulness: Optional[float] = typer.Option(None, help="Reject (and retry) a rewrite whose faithfulness to its caption (content-word F1, 0-1; see `rewrite report`) is below this; e.g. 0.2."),
    temperature: opt.Temperature = opt.DEFAULT_TEMPERATURE,
    top_p: opt.TopP = opt.DEFAULT_TOP_P,
    max_new_tokens: int = typer.Option(defaults.Sampling.max_new_tokens),
    template: str = typer.Option(defaults.TEMPLATE, help="Prompt template name or .toml path."),
    dedup: bool = typer.Option(True, help="Rewrite identical captions once."),
    max_caption_tokens: int = typer.Option(defaults.MAX_CAPTION_TOKENS, help="A caption's share of the prompt, in model tokens: a longer caption is cut (reason caption_cut), so one huge row costs what a row costs."),
    example_sets: int = typer.Option(defaults.EXAMPLE_SETS, help="0: fresh examples per caption (LaCLIP); K: draw from K shared example sets, so prompts share a prefix an engine computes once (faster)."),
    overwrite: bool = typer.Option(False, help="Redo the named shards; with other settings, start the source over (every shard with output must be named)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    requeue_on_warning: bool = typer.Option(False, help="In a Slurm job: after stopping on SIGUSR1 (the time-limit warning), requeue the job so it resumes (set by `rewrite slurm submit`)."),
    stop_within: float = typer.Option(STOP_WITHIN, help="After SIGTERM/SIGUSR1: seconds the chunk in flight gets to finish and commit before the run stops without it."),
    then_export: Optional[str] = typer.Option(None, "--then-export", help="Then export this run's shards of this source to this folder or bucket URL (array tasks: each its own; the last to finish publishes)."),
    export_format: str = typer.Option(exports.DEFAULT, help="Format of --then-export (see `rewrite export --format`)."),
    storage_option: StorageOptions = None,
):
    """Rewrite the captions of some shards with one meta set, or several (one column each).

    Exit codes: 0 done (shards held by another live worker are skipped), 1 a file could not be read or
    written, 2 bad input or options, 69 the engine's server could not serve some requests (down,
    overloaded, refusing): their rows are kept as failed (engine_unavailable), their shards are not done,
    and running the same command again requests exactly those rows, 75 stopped by SIGTERM/SIGUSR1/SIGINT
    with every committed chunk kept (run again to resume)."""
    result, names, unavailable = TaskResult([], []), [], None
    try:
        with reported(), stop.handling(stop_within):  # a signal while the model loads stops the run too
            use_storage_options(storage_option)
            manifest = load_manifest(work)
            configs = set_configs(
                defaults.source_list(source), meta_dir, seed=seed, num_rewrites=num_rewrites, num_examples=num_examples,
                max_attempts=max_attempts, chunk_rows=chunk_rows, dedup=dedup, template=template,
                example_sets=example_sets, max_caption_tokens=max_caption_tokens, min_faithfulness=min_faithfulness,
                sampling=defaults.Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens),
            )
            names = [c.source for c in configs]
            schedule = schedule_option(scheduler, open_chunks, builders)
            if stop_within <= 0:
                raise ValueError(f"--stop-within must be > 0 seconds, got {stop_within}")
            if then_export is not None:  # refused now, not after the rewriting
                export_lib.check_out_folder(then_export, layout.Work(work), manifest, "--then-export")
                exports.named(export_format, "--export-format")
            options = engines.given(
                batch_size=batch_size, dtype=dtype, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, engine_args=engine_arg,
                base_url=base_url, api=api, concurrency=concurrency, timeout=timeout, request_retries=request_retries,
                unavailable_after=unavailable_after)
            try:
                result = run_task(work, configs, parse_shard_spec(shards, manifest.num_shards), engine, model,
                                         options, overwrite=overwrite, progress=progress, schedule=schedule,
                                         stop_within=stop_within, say=lambda m: typer.echo(m, err=True),
                                         retry_failed=retry_failed, manifest=manifest)
            except EngineUnavailable as e:
                result, unavailable = TaskResult([], e.finished), e
    except StopRequested as e:
        typer.echo(f"{e}: committed chunks are kept; run the same command again to resume", err=True)
        if requeue_on_warning and e.signum == signal.SIGUSR1:
            try:
                typer.echo(f"requeued Slurm job {slurm_lib.requeue_after_warning(os.environ)}: it resumes from the "
                           "committed chunks", err=True)
            except slurm_lib.SlurmError as err:
                typer.echo(f"error: {err}", err=True)
        raise typer.Exit(STOPPED)
    if result.done_already:
        typer.echo(f"{', '.join(names)}: shards {format_shard_spec(result.shards) or 'none'} are done "
                   + ("already, with no failed rows" if retry_failed else "already (--overwrite to redo them)"))
    for s in result.finished:
        typer.echo(f"{s['source']} shard {s['shard']:05d}: {s['rows']} rows, ok {s['ok']}, failed {s['failed']}, "
                   f"skipped {s['skipped']}, {s['captions_per_s']} captions/s")
    if unavailable is not None:
        typer.echo(f"error: {unavailable}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE)
    if then_export is not None and result.shards:
        with reported():
            summary = export_lib.export(work, then_export, names, fmt=export_format,
                                        shards=result.shards, overwrite=True, progress=False, manifest=manifest)
        report_export(summary, then_export)


@app.command()
def status(
    work: Path = typer.Option(..., "--work"),
    source: Optional[List[str]] = typer.Option(None, help="Only these sources."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Shards x sources: done, partial, missing or damaged, with totals."""
    with reported():
        w = layout.Work(work)
        manifest, statuses = status_lib.collect(w, meta_lib.chosen(w.root, w.sources_present(), source, "run"))
        if as_json:
            typer.echo(json.dumps([{**vars(s), "slurm": slurm_lib.submissions(work, s.source)} for s in statuses], indent=2,
                                  default=str))
            return
        typer.echo(slurm_lib.status_text(work, manifest, statuses, layout.Work(work).strays()))
