"""The `rewrite` command: a thin shell over the library (parse options, call one function, print)."""
from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from .exports import export as export_lib
from . import exports
from . import meta as meta_lib
from .workdir import layout, status as status_lib
from .workdir.manifest import format_shard_spec, load_manifest, parse_shard_spec
from .inputs import plan
from .exports import publish
from . import defaults, stop
from .launch import slurm as slurm_lib
from .rewriting.clip_tokens import ClipTokenizerError
from .engines import EngineError
from .engines.model import ModelError
from .rewriting.prompt import TemplateError
from .stop import STOP_WITHIN, StopRequested, EXIT_CODE as STOPPED
from .run.config import EngineUnavailable, RunError, set_configs
from .workdir.record import RecordError
from .launch.task import TaskResult, run_task

app = typer.Typer(help="Rewrite image captions with an LLM, LaCLIP-style, for CLIP training.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
meta_app = typer.Typer(help="Inspect, check, import and generate meta sets of in-context examples.", no_args_is_help=True)
app.add_typer(meta_app, name="meta")
slurm_app = typer.Typer(help="Run shards as Slurm array jobs.", no_args_is_help=True)
app.add_typer(slurm_app, name="slurm")

USER_ERRORS = (plan.PlanError, meta_lib.MetaSetError, RunError, RecordError, exports.ExportError, publish.PublishError,
               EngineError, ModelError, TemplateError, ClipTokenizerError, slurm_lib.SlurmError,
               ValueError)
EXIT_BAD_INPUT = 2  # bad input or options: the message names the file, row or option
EXIT_IO = 1  # a file could not be read or written (read-only or full disk, permissions): the message names it
EXIT_INTERRUPTED = 130
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the engine's server could not serve requests; their rows wait for a rerun


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def describe_os_error(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {e.strerror or e}" if where else str(e)


def schedule_option(scheduler: str, open_chunks: int) -> defaults.Schedule:
    choices = {"auto": None, "stream": True, "chunked": False}
    if scheduler not in choices:
        raise ValueError(f"--scheduler must be auto, stream or chunked, got {scheduler!r}")
    return defaults.Schedule(streaming=choices[scheduler], open_chunks=open_chunks)


@contextmanager
def reported():
    """One line and a documented exit code for every error a user can cause or meet, never a traceback.
    Everything committed before it stays (commits are atomic)."""
    try:
        yield
    except USER_ERRORS as e:
        fail(str(e))
    except OSError as e:
        fail(describe_os_error(e), EXIT_IO)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


@app.command()
def shard(
    inputs: List[str] = typer.Argument(..., help="Parquet/CSV/TSV/text files or webdataset .tar shards: files, folders, globs or brace ranges (shards/{00000..00127}.tar)."),
    out: Path = typer.Option(..., "--out", help="Work dir to hold the plan and all outputs."),
    num_shards: Optional[int] = typer.Option(None, help="Number of shards."),
    rows_per_shard: Optional[int] = typer.Option(None, help=f"Rows per shard (default {plan.DEFAULT_ROWS_PER_SHARD})."),
    caption_column: str = typer.Option("caption", help="Caption column of parquet/CSV/TSV inputs."),
    key_column: Optional[str] = typer.Option(None, help="Key column (default: `key` when present, else derived from file and row)."),
    caption_field: Optional[str] = typer.Option(None, help="Webdataset input: the KEY.json field holding the caption (default: KEY.txt)."),
):
    """Plan shards over the inputs and save the plan in the work dir."""
    with reported():
        m = plan.plan(inputs, out, num_shards=num_shards, rows_per_shard=rows_per_shard,
                      caption_column=caption_column, key_column=key_column, caption_field=caption_field)
    typer.echo(f"planned {m.num_shards} shards over {m.total_rows} rows from {len(m.files)} files in {out}")


@app.command()
def run(
    work: Path = typer.Option(..., "--work", help="Work dir made by `rewrite shard`."),
    source: str = typer.Option(..., help="Meta set: chatgpt, bard, coco (mscoco), human, or a .jsonl file; a comma-separated list of them, or all (the four): one engine start, each set its own column."),
    meta_dir: Optional[Path] = typer.Option(None, help="Read the sets named chatgpt, bard, coco, human from DIR/<name>.jsonl (e.g. the paper's own, from `rewrite meta import-laclip`)."),
    shards: str = typer.Option("all", help="Shards to run: 0-127, 7, 0,3,9-12 or all."),
    engine: str = typer.Option(defaults.ENGINE, help="transformers, vllm, openai, or auto (vllm on a GPU when installed)."),
    model: Optional[str] = typer.Option(None, help="Local model dir (or hub id on your cluster; the served name with openai); default: the embedded SmolLM2-135M."),
    seed: int = typer.Option(defaults.SEED, help="Global seed: every random choice derives from it."),
    num_rewrites: int = typer.Option(defaults.NUM_REWRITES, help="Rewrites per caption."),
    num_examples: int = typer.Option(defaults.NUM_EXAMPLES, help="In-context examples per prompt (k)."),
    batch_size: Optional[int] = typer.Option(None, help=f"transformers: prompts per forward batch (default {defaults.BATCH_SIZE})."),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16, float16 or auto (the checkpoint's own); default: on a CPU float32 (vllm: bfloat16 where the CPU has AVX-512 BF16 or AMX); on a GPU bfloat16 with transformers, the model's own with vllm."),
    max_model_len: Optional[int] = typer.Option(None, help="Cap on prompt + completion tokens."),
    tensor_parallel_size: Optional[int] = typer.Option(None, help="vllm: GPUs per model."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="vllm: share of GPU memory to use."),
    enforce_eager: Optional[bool] = typer.Option(None, "--enforce-eager/--no-enforce-eager", help="vllm: skip CUDA graphs (default: on CPU only)."),
    engine_arg: Optional[List[str]] = typer.Option(None, help="vllm: extra LLM(...) argument as key=value (repeatable)."),
    base_url: Optional[str] = typer.Option(None, help="openai: server URL, e.g. http://127.0.0.1:8000/v1 (key from $OPENAI_API_KEY)."),
    api: Optional[str] = typer.Option(None, help="openai: completions (base models, default) or chat."),
    concurrency: Optional[int] = typer.Option(None, help="openai: requests in flight (default 16)."),
    timeout: Optional[float] = typer.Option(None, help="openai: seconds per request (default 60)."),
    request_retries: Optional[int] = typer.Option(None, help="openai: retries of a request the server could not serve (no connection, a timeout, 429, 5xx), with exponential backoff (default 5)."),
    unavailable_after: Optional[int] = typer.Option(None, help="openai: after this many requests in a row the server could not serve (after their retries), stop the run (exit 69; its rows wait for a rerun); default twice --concurrency."),
    retry_failed: bool = typer.Option(False, help="Give the failed rows of the named shards, done ones included, another --max-attempts tries each (attempts numbered on from those spent, so the result is reproducible); other rows are kept."),
    chunk_rows: int = typer.Option(defaults.CHUNK_ROWS, help="Rows committed together."),
    scheduler: str = typer.Option("auto", help="stream: requests built ahead of the engine, a rejected rewrite retried at once, each chunk committed when its rows are final (keeps a GPU busy); chunked: a chunk at a time with retry rounds (reruns byte-identical with any engine); auto: stream with vllm and openai, chunked with transformers. Both send the same requests."),
    open_chunks: int = typer.Option(defaults.OPEN_CHUNKS, help="stream: chunks in flight at once (each holds its rows in memory; a kill loses at most these)."),
    max_attempts: int = typer.Option(defaults.MAX_ATTEMPTS, help="Tries per rewrite before it is stored as failed."),
    min_faithfulness: Optional[float] = typer.Option(None, help="Reject (and retry) a rewrite whose faithfulness to its caption (content-word F1, 0-1; see `rewrite report`) is below this; e.g. 0.2."),
    temperature: float = typer.Option(defaults.Sampling.temperature),
    top_p: float = typer.Option(defaults.Sampling.top_p),
    max_new_tokens: int = typer.Option(defaults.Sampling.max_new_tokens),
    template: str = typer.Option(defaults.TEMPLATE, help="Prompt template name or .toml path."),
    dedup: bool = typer.Option(True, help="Rewrite identical captions once."),
    max_caption_tokens: int = typer.Option(defaults.MAX_CAPTION_TOKENS, help="A caption's share of the prompt, in model tokens: a longer caption is cut (reason caption_cut), so one huge row costs what a row costs."),
    example_sets: int = typer.Option(defaults.EXAMPLE_SETS, help="0: fresh examples per caption (LaCLIP); K: draw from K shared example sets, so prompts share a prefix an engine computes once (faster)."),
    overwrite: bool = typer.Option(False, help="Redo the named shards; with other settings, start the source over (every shard with output must be named)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    requeue_on_warning: bool = typer.Option(False, help="In a Slurm job: after stopping on SIGUSR1 (the time-limit warning), requeue the job so it resumes (set by `rewrite slurm submit`)."),
    stop_within: float = typer.Option(STOP_WITHIN, help="After SIGTERM/SIGUSR1: seconds the chunk in flight gets to finish and commit before the run stops without it."),
    then_export: Optional[Path] = typer.Option(None, "--then-export", help="Then export this run's shards of this source to this folder (array tasks: each its own; the last to finish publishes)."),
    export_format: str = typer.Option(exports.DEFAULT, help="Format of --then-export (see `rewrite export --format`)."),
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
            manifest = load_manifest(work)
            configs = set_configs(
                defaults.source_list(source), meta_dir, seed=seed, num_rewrites=num_rewrites, num_examples=num_examples,
                max_attempts=max_attempts, chunk_rows=chunk_rows, dedup=dedup, template=template,
                example_sets=example_sets, max_caption_tokens=max_caption_tokens, min_faithfulness=min_faithfulness,
                sampling=defaults.Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens),
            )
            names = [c.source for c in configs]
            schedule = schedule_option(scheduler, open_chunks)
            if stop_within <= 0:
                raise ValueError(f"--stop-within must be > 0 seconds, got {stop_within}")
            if then_export is not None:  # refused now, not after the rewriting
                export_lib.check_out_folder(then_export, layout.Work(work), manifest, "--then-export")
                exports.named(export_format, "--export-format")
            options = {k: v for k, v in dict(
                batch_size=batch_size, dtype=dtype, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, engine_args=engine_arg or None,
                base_url=base_url, api=api, concurrency=concurrency, timeout=timeout, request_retries=request_retries,
                unavailable_after=unavailable_after,
            ).items() if v is not None}
            try:
                result = run_task(work, configs, parse_shard_spec(shards, manifest.num_shards), engine, model,
                                         options, overwrite=overwrite, progress=progress, schedule=schedule,
                                         stop_within=stop_within, say=lambda m: typer.echo(m, err=True),
                                         retry_failed=retry_failed)
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
                                        shards=result.shards, overwrite=True, progress=False)
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
            typer.echo(json.dumps([{**vars(s), "slurm": slurm_lib.jobs(work, s.source)} for s in statuses], indent=2,
                                  default=str))
            return
        typer.echo(slurm_lib.status_text(work, manifest, statuses, layout.Work(work).strays()))


@app.command()
def export(
    work: Path = typer.Option(..., "--work"),
    out: Path = typer.Option(..., "--out", help="Folder to write (not inside the work dir or an input)."),
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
):
    """Join the inputs with their rewrites in the form a CLIP trainer reads.

    The export appears all at once; a killed export is finished by running it again. Exit codes: 0
    published (or, with --shards, those shards written: the export that writes the last shard publishes),
    1 a file could not be read or written, 2 bad input or options, 75 stopped by a signal or not
    published because another export holds OUT (run the same command again to finish)."""
    try:
        with reported(), stop.handling():
            options = exports.ExportOptions(image_column=image_column, extract_images=extract_images,
                                            captions_only=captions_only, views=list(views or []),
                                            separator=_separator(separator), replace_json_fields=replace_json_fields)
            manifest = load_manifest(work)
            summary = export_lib.export(work, out, source, fmt=fmt, shards=parse_shard_spec(shards, manifest.num_shards),
                                        workers=workers, options=options, allow_missing=allow_missing,
                                        overwrite=overwrite, progress=progress)
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


def report_export(summary: dict, out: Path) -> None:
    """What the export did; exits 75 when a whole export (all shards) could not be published."""
    if summary.get("up_to_date"):
        typer.echo(f"{out} holds this export already ({summary['rows']} rows in {len(summary['files'])} files)")
    elif summary["published"]:
        typer.echo(f"wrote {summary['rows']} rows in {len(summary['files'])} files to {out} "
                   f"(columns: {', '.join(summary.get('columns', []))})")
        if summary.get("dropped_rows"):
            typer.echo(f"left out {summary['dropped_rows']} rows without a caption or an image path", err=True)
        if summary.get("note"):
            typer.echo(f"note: {summary['note']}", err=True)
    else:
        waiting = summary.get("unwritten") and f"shards {summary['unwritten']} are still to export" or summary.get("waiting")
        typer.echo(f"exported shards {summary['written'] or 'none (written already)'} into {out}; not published yet: "
                   f"{waiting}")
    for src, spec in summary["missing"].items():
        typer.echo(f"warning: {src} has no rewrites for shards {spec} (null in the export)", err=True)
    for problem in summary["damaged"]:
        typer.echo(f"warning: damaged, exported as null: {problem}", err=True)
    if not summary["published"] and summary.get("whole"):
        typer.echo(f"error: {out} is not published: run the same command again to finish it", err=True)
        raise typer.Exit(STOPPED)


@app.command()
def report(
    work: Optional[Path] = typer.Option(None, "--work", help="Work dir made by `rewrite shard` and run."),
    export_dir: Optional[Path] = typer.Option(None, "--export", help="Or an export folder (hf, csv, laclip or wds): no reject or retry figures there."),
    out: Path = typer.Option(..., "--out", help="Folder for report.html, the .png plots and report.json."),
    source: Optional[List[str]] = typer.Option(None, help="Only these sets (default: every set that was run)."),
    embedding_model: Optional[Path] = typer.Option(None, help="A local CLIP (Hugging Face form) or sentence-embedding model folder: adds the embedding similarity of each rewrite to its caption."),
    overwrite: bool = typer.Option(False, help="Replace an earlier report in --out (only the files a report wrote)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """How good the rewrites are, per set: valid rate and reject reasons, retries, lengths, word overlap,
    diversity, faithfulness to the caption, the best and worst rows (reads only the caption columns)."""
    from . import report as report_lib

    if (work is None) == (export_dir is None):
        fail("give one of --work or --export")
    with reported():
        made = report_lib.report(work or export_dir, out, source, progress=progress, embedding_model=embedding_model,
                                 overwrite=overwrite)
    total = made["summary"]["plan"]["rows"]
    for name, figures in made["summary"]["sets"].items():
        typer.echo(f"{name}: valid {_share(figures['valid_rate'])} of {figures['rows']}/{total} rows, faithfulness "
                   f"{_number(figures['faithfulness']['mean'])} (below 0.3: {_share(figures['faithfulness']['below']['0.3'])}), "
                   f"words {_number(figures['length']['words']['original']['mean'])} -> "
                   f"{_number(figures['length']['words']['rewrite']['mean'])}")
        left_out = figures.get("shards_left_out") or {}
        if left_out:
            detail = "; ".join(f"{int(k):05d} {why}" for k, why in list(left_out.items())[:3])
            typer.echo(f"warning: {name}: {len(left_out)} shards not counted ({detail}{'; ...' if len(left_out) > 3 else ''})",
                       err=True)
    typer.echo(f"report: {made['paths']['html'].resolve()} (figures for scripts: {made['paths']['json'].name})")


def _share(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


@app.command()
def demo(
    out: Path = typer.Option(Path("rewrite-demo"), "--out", help="Where the demo writes: OUT/work, OUT/dataset and OUT/report."),
    source: str = typer.Option("chatgpt", help="The meta set whose pairs are the in-context examples."),
    template: Optional[str] = typer.Option(None, help="Prompt template name or .toml path (default: the demo's own, named on its `used:` line)."),
    min_faithfulness: Optional[float] = typer.Option(None, help="The faithfulness gate, as `rewrite run --min-faithfulness` (default: the demo's own; 0: none)."),
    engine: str = typer.Option(defaults.ENGINE),
    model: Optional[str] = typer.Option(None),
):
    """Rewrite the shipped demo captions end to end, say with what, and show the first few."""
    from .launch.demo import run_demo

    chosen = {k: v for k, v in dict(template=template, min_faithfulness=min_faithfulness).items() if v is not None}
    try:
        with reported(), stop.handling():
            summary = run_demo(out, source=source, engine_name=engine, model=model, **chosen)
    except StopRequested as e:
        typer.echo(f"{e}: the chunks rewritten so far are kept; run the same command again to go on", err=True)
        raise typer.Exit(STOPPED)
    used = summary["used"]
    gate = (f"faithfulness gate {used['min_faithfulness']} (a rewrite scoring below it is tried again, up to "
            f"{used['max_attempts']} attempts)" if used.get("min_faithfulness") is not None else "no faithfulness gate")
    typer.echo(f"used: {Path(used['model']).name} ({used['engine']}), {used['template']} template, "
               f"{used['num_examples']} examples per caption from the {used['source']} set, {gate}")
    col = f"caption_{meta_lib.source_name(source)}"
    for row in summary["examples"]:
        shown = row[col] if row[col] is not None else "(none: every attempt was rejected)"
        typer.echo(f"  {row['caption']}\n    -> {shown}")
    typer.echo(f"\ndataset: {Path(summary['out']).resolve()}  ({summary['rows']} rows; "
               f"with `datasets` installed, load it with datasets.load_dataset({str(Path(summary['out']).resolve())!r}))")
    made = summary["report"]
    figures = made["summary"]["sets"][meta_lib.source_name(source)]
    typer.echo(f"quality report: {made['paths']['html'].resolve()}  (valid {_share(figures['valid_rate'])}, "
               f"faithfulness to the captions {_number(figures['faithfulness']['mean'])}; see `rewrite report`)")


@meta_app.command("show")
def meta_show(source: str = typer.Argument(..., help="chatgpt, bard, coco (mscoco), human or a .jsonl file.")):
    """Print a meta set."""
    with reported():
        m = meta_lib.load(source)
    typer.echo(f"# {m.name}: {len(m)} {m.kind} ({m.path})")
    if m.pairs:
        for s, t in m.pairs:
            typer.echo(f"{s} => {t}")
    for g in m.groups:
        typer.echo("\n".join(g) + "\n")


@meta_app.command("validate")
def meta_validate(
    files: Optional[List[str]] = typer.Argument(None, help="Meta sets to check (default: the four shipped)."),
    num_examples: int = typer.Option(defaults.NUM_EXAMPLES, help="In-context examples per prompt (k), as `rewrite run --num-examples`."),
):
    """Check meta sets as `rewrite run` does before it loads a model (enough entries for k; strings of at
    most 77 CLIP tokens, without `=>`, control characters or line breaks; no duplicates) and print length
    statistics. Exit 1 when a set is invalid."""
    if num_examples < 1:
        fail(f"--num-examples must be >= 1, got {num_examples}")
    bad = False
    with reported():  # an unreadable file, or no CLIP tokenizer to count with: one line, as in `run`
        for name in files or list(defaults.SOURCES):
            if name.endswith(".jsonl") and not Path(name).is_file():
                raise meta_lib.MetaSetError(f"meta set file {name} does not exist")  # a bad argument, not a bad set
            try:
                m = meta_lib.load(name)
            except USER_ERRORS as e:
                typer.echo(f"{name}: INVALID: {e}")
                bad = True
                continue
            problems = meta_lib.problems(m, num_examples)
            st = meta_lib.stats(m)
            typer.echo(f"{m.name}: {'ok' if not problems else 'INVALID'}: {st['entries']} {st['kind']}, "
                       f"source {st['mean_source_words']} words, target {st['mean_target_words']} words "
                       f"(max {st['max_target_words']}), word overlap {st['mean_word_overlap']}")
            for p in problems:
                typer.echo(f"  - {p}")
            bad |= bool(problems)
    if bad:
        raise typer.Exit(1)


@meta_app.command("import-laclip")
def meta_import_laclip(
    utils_py: Path = typer.Argument(..., help="rewrite/utils.py of your own checkout of LaCLIP's code (read, never run)."),
    out: Path = typer.Option(..., "--out", help="Folder to write chatgpt.jsonl, bard.jsonl, human.jsonl and coco.jsonl to."),
    overwrite: bool = typer.Option(False, help="Replace sets an earlier `rewrite meta` command wrote there (never a set of your own)."),
):
    """The paper's own four example sets, from LaCLIP's code; run with them through `rewrite run --meta-dir`."""
    from .meta import importers as metasets

    with reported():
        written = metasets.import_laclip(utils_py, out, overwrite=overwrite)
    for name, path in written.items():
        m = meta_lib.load(str(path))
        typer.echo(f"{name}: {len(m)} {m.kind} -> {path}")
    typer.echo(f"use them with: rewrite run --source all --meta-dir {out} ...")


@meta_app.command("import-coco")
def meta_import_coco(
    annotations: Path = typer.Argument(..., help="A COCO captions annotation file (captions_train2017.json)."),
    out: Path = typer.Option(..., "--out", help="The group set to write (a .jsonl file)."),
    groups: int = typer.Option(16, help="Images (groups of captions) to draw."),
    seed: int = typer.Option(defaults.SEED, help="Seed of the draw."),
    captions_per_group: int = typer.Option(5, help="Captions per image."),
    overwrite: bool = typer.Option(False, help="Replace a set an earlier `rewrite meta` command wrote (never a set of your own)."),
):
    """A coco-style group set: captions of the same image, from COCO annotations."""
    from .meta import importers as metasets

    with reported():
        path = metasets.import_coco(annotations, out, groups=groups, seed=seed, captions_per_group=captions_per_group,
                                    overwrite=overwrite)
        m = meta_lib.load(str(path))
    typer.echo(f"{m.name}: {len(m)} groups -> {path}")


@meta_app.command("generate")
def meta_generate(
    captions: Path = typer.Option(..., "--from", help="Caption file, one caption per line: the sources are drawn from it."),
    out: Path = typer.Option(..., "--out", help="The pair set to write (a .jsonl file)."),
    count: int = typer.Option(16, help="Pairs to make."),
    seed: int = typer.Option(defaults.SEED, help="Seed of the draw of sources and of sampling."),
    instruction: Optional[str] = typer.Option(None, help="What the model is asked, before each caption (default: the paper's chatbot instruction)."),
    engine: str = typer.Option(defaults.ENGINE, help="transformers, vllm, openai, or auto."),
    model: Optional[str] = typer.Option(None, help="Local model dir (the served name with openai); default: the embedded model."),
    dtype: Optional[str] = typer.Option(None, help="As `rewrite run --dtype`."),
    max_model_len: Optional[int] = typer.Option(None),
    engine_arg: Optional[List[str]] = typer.Option(None, help="vllm: extra LLM(...) argument as key=value (repeatable)."),
    base_url: Optional[str] = typer.Option(None, help="openai: server URL, e.g. http://127.0.0.1:8000/v1."),
    api: str = typer.Option("chat", help="openai: chat (default here: the instruction is a user turn) or completions."),
    concurrency: Optional[int] = typer.Option(None),
    max_attempts: int = typer.Option(defaults.MAX_ATTEMPTS, help="Tries per source before another caption is drawn."),
    temperature: float = typer.Option(defaults.Sampling.temperature),
    top_p: float = typer.Option(defaults.Sampling.top_p),
    overwrite: bool = typer.Option(False, help="Replace a set an earlier `rewrite meta` command wrote (never a set of your own)."),
):
    """A pair set made by an LLM from your captions (the paper made its chatgpt and bard sets this way)."""
    from . import engines
    from .meta import generate as metagen

    options = {k: v for k, v in dict(dtype=dtype, max_model_len=max_model_len, engine_args=engine_arg or None,
                                     base_url=base_url, concurrency=concurrency).items() if v is not None}
    instruction = metagen.PAPER_INSTRUCTION if instruction is None else instruction
    with reported():  # everything checked before minutes go into an engine
        metagen.check_options(out, count, max_attempts, instruction, overwrite, captions)
        sampling = defaults.Sampling(temperature=temperature, top_p=top_p)
        if engines.resolve_name(engine) == "openai":
            options["api"] = api
        name = engines.check(engine, model, options)
        with engines.opened(name, model, **options) as eng:
            m = metagen.generate(captions, out, eng, count=count, seed=seed, instruction=instruction, sampling=sampling,
                                 max_attempts=max_attempts, overwrite=overwrite,
                                 progress=lambda done, total: typer.echo(f"{done}/{total} pairs", err=True))
    st = meta_lib.stats(m)
    typer.echo(f"{m.name}: {st['entries']} pairs -> {m.path}; source {st['mean_source_words']} words, target "
               f"{st['mean_target_words']} words, word overlap {st['mean_word_overlap']}")


@slurm_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def slurm_submit(
    ctx: typer.Context,
    work: Path = typer.Option(..., "--work"),
    source: str = typer.Option(..., help="Meta set: chatgpt, bard, coco (mscoco), human or a .jsonl file."),
    shards: str = typer.Option("all", help="Shards to run (only the unfinished ones are sent)."),
    parallel: int = typer.Option(16, help="Array tasks running at once (the %N throttle)."),
    tasks: Optional[int] = typer.Option(None, help="Array tasks (default: one per shard, at most the cluster's MaxArraySize); each takes its share of the shards."),
    partition: Optional[str] = typer.Option(None),
    time_limit: Optional[str] = typer.Option(None, "--time", help="Time limit per task, e.g. 4:00:00."),
    gpus: Optional[int] = typer.Option(None, help="GPUs per task."),
    cpus: Optional[int] = typer.Option(None, help="CPUs per task."),
    mem: Optional[str] = typer.Option(None, help="Memory per task, e.g. 64G."),
    account: Optional[str] = typer.Option(None),
    sbatch: Optional[List[str]] = typer.Option(None, help="Extra #SBATCH line, e.g. --sbatch=--qos=high (repeatable)."),
    export_to: Optional[str] = typer.Option(None, "--then-export", help="Each task then exports its shards of this source to this folder; the last to finish publishes it."),
    export_format: str = typer.Option(exports.DEFAULT, help="Format of --then-export (see `rewrite export --format`)."),
    dry_run: bool = typer.Option(False, help="Print the script; submit nothing."),
):
    """Submit `rewrite run` over SHARDS as a Slurm array. Options after `--` go to `rewrite run`
    (e.g. -- --engine vllm --model /models/llama-7b). Run it again to resubmit only unfinished shards."""
    with reported():
        manifest = load_manifest(work)
        shard_ids = parse_shard_spec(shards, manifest.num_shards)
        record = slurm_lib.submit(work, source, shard_ids, parallel=parallel, tasks=tasks, run_args=ctx.args,
                                  resources=slurm_lib.Resources(partition, time_limit, gpus, cpus, mem, account, sbatch or []),
                                  export_to=export_to, export_format=export_format, dry_run=dry_run)
    if not record["shards"]:
        typer.echo(f"{record['source']}: shards {shards} are done already: nothing to submit")
    elif dry_run:
        typer.echo(record["script_text"])
    else:
        typer.echo(f"submitted array job {record['job_id']}: {record['tasks']} tasks over shards {record['shards']} "
                   f"(script {record['script']}, logs in {Path(work) / 'slurm' / 'logs'})")
        if export_to:
            typer.echo(f"each task then exports its shards to {export_to}; the last to finish publishes it")


@slurm_app.command("failed")
def slurm_failed(
    work: Path = typer.Option(..., "--work"),
    source: str = typer.Option(...),
    lines: int = typer.Option(20, help="Log lines to show per shard."),
):
    """Shards whose array task ended without finishing them, with the tail of the task's log."""
    with reported():
        found = slurm_lib.failed_shards(work, meta_lib.source_name(source), lines)
    if not found:
        typer.echo("no failed shards")
        return
    for f in found:
        typer.echo(f"shard {f['shard']:05d} (task {f['job']}, {f['log']}):")
        typer.echo("\n".join(f"    {line}" for line in f["tail"]) or "    (no log)")
    typer.echo(f"\n{len(found)} failed shards; resubmit them with the same `rewrite slurm submit` command")
    raise typer.Exit(1)


# The command-line layer's usage error (typer vendors click in newer releases, so it is found by name).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """The `rewrite` command. A usage error (an unknown option, a value of the wrong type) is one line and
    exit 2, like every other bad option, not click's usage box."""
    try:
        code = typer.main.get_command(app).main(prog_name="rewrite", standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except _ClickException as e:
        message = " ".join(e.format_message().split())
        if message:  # (no arguments at all: the help was shown)
            typer.echo(f"error: {message}", err=True)
        code = e.exit_code
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
