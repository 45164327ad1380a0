"""The `rewrite` command: a thin shell over the library (parse options, call one function, print)."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import export as export_lib
from . import meta as meta_lib
from . import plan, runner, settings, status as status_lib
from . import slurm as slurm_lib
from .clip_tokens import ClipTokenizerError
from .engines import EngineError
from .model import ModelError
from .prompt import TemplateError
from .stop import STOP_WITHIN, StopRequested, EXIT_CODE as STOPPED

app = typer.Typer(help="Rewrite image captions with an LLM, LaCLIP-style, for CLIP training.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
meta_app = typer.Typer(help="Inspect and check meta sets of in-context examples.", no_args_is_help=True)
app.add_typer(meta_app, name="meta")
slurm_app = typer.Typer(help="Run shards as Slurm array jobs.", no_args_is_help=True)
app.add_typer(slurm_app, name="slurm")

USER_ERRORS = (plan.PlanError, meta_lib.MetaSetError, runner.RunError, export_lib.ExportError,
               EngineError, ModelError, TemplateError, ClipTokenizerError, slurm_lib.SlurmError, ValueError)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def shard(
    inputs: List[str] = typer.Argument(..., help="Parquet/CSV/TSV/text files, folders or globs."),
    out: Path = typer.Option(..., "--out", help="Work dir to hold the plan and all outputs."),
    num_shards: Optional[int] = typer.Option(None, help="Number of shards."),
    rows_per_shard: Optional[int] = typer.Option(None, help=f"Rows per shard (default {plan.DEFAULT_ROWS_PER_SHARD})."),
    caption_column: str = typer.Option("caption", help="Caption column of parquet/CSV/TSV inputs."),
    key_column: Optional[str] = typer.Option(None, help="Key column (default: `key` when present, else derived from file and row)."),
):
    """Plan shards over the inputs and save the plan in the work dir."""
    try:
        m = plan.plan(inputs, out, num_shards=num_shards, rows_per_shard=rows_per_shard,
                      caption_column=caption_column, key_column=key_column)
    except USER_ERRORS as e:
        fail(str(e))
    typer.echo(f"planned {m.num_shards} shards over {m.total_rows} rows from {len(m.files)} files in {out}")


@app.command()
def run(
    work: Path = typer.Option(..., "--work", help="Work dir made by `rewrite shard`."),
    source: str = typer.Option(..., help="Meta set: chatgpt, bard, coco (mscoco), human, or a .jsonl file."),
    shards: str = typer.Option("all", help="Shards to run: 0-127, 7, 0,3,9-12 or all."),
    engine: str = typer.Option(settings.ENGINE, help="transformers, vllm, openai, or auto (vllm on a GPU when installed)."),
    model: Optional[str] = typer.Option(None, help="Local model dir (or hub id on your cluster; the served name with openai); default: the embedded SmolLM2-135M."),
    seed: int = typer.Option(settings.SEED, help="Global seed: every random choice derives from it."),
    num_rewrites: int = typer.Option(settings.NUM_REWRITES, help="Rewrites per caption."),
    num_examples: int = typer.Option(settings.NUM_EXAMPLES, help="In-context examples per prompt (k)."),
    batch_size: Optional[int] = typer.Option(None, help=f"transformers: prompts per forward batch (default {settings.BATCH_SIZE})."),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16, float16 (default: float32 on a CPU; on a GPU bfloat16 with transformers, the model's own with vllm)."),
    max_model_len: Optional[int] = typer.Option(None, help="Cap on prompt + completion tokens."),
    tensor_parallel_size: Optional[int] = typer.Option(None, help="vllm: GPUs per model."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="vllm: share of GPU memory to use."),
    enforce_eager: Optional[bool] = typer.Option(None, "--enforce-eager/--no-enforce-eager", help="vllm: skip CUDA graphs (default: on CPU only)."),
    engine_arg: Optional[List[str]] = typer.Option(None, help="vllm: extra LLM(...) argument as key=value (repeatable)."),
    base_url: Optional[str] = typer.Option(None, help="openai: server URL, e.g. http://127.0.0.1:8000/v1 (key from $OPENAI_API_KEY)."),
    api: Optional[str] = typer.Option(None, help="openai: completions (base models, default) or chat."),
    concurrency: Optional[int] = typer.Option(None, help="openai: requests in flight (default 16)."),
    timeout: Optional[float] = typer.Option(None, help="openai: seconds per request (default 60)."),
    chunk_rows: int = typer.Option(settings.CHUNK_ROWS, help="Rows committed together."),
    max_attempts: int = typer.Option(settings.MAX_ATTEMPTS, help="Tries per rewrite before it is stored as failed."),
    temperature: float = typer.Option(settings.Sampling.temperature),
    top_p: float = typer.Option(settings.Sampling.top_p),
    max_new_tokens: int = typer.Option(settings.Sampling.max_new_tokens),
    template: str = typer.Option(settings.TEMPLATE, help="Prompt template name or .toml path."),
    dedup: bool = typer.Option(True, help="Rewrite identical captions once."),
    example_sets: int = typer.Option(settings.EXAMPLE_SETS, help="0: fresh examples per caption (LaCLIP); K: draw from K shared example sets, so prompts share a prefix an engine computes once (faster)."),
    overwrite: bool = typer.Option(False, help="Redo shards that are done."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    requeue_on_warning: bool = typer.Option(False, help="In a Slurm job: after stopping on SIGUSR1 (the time-limit warning), requeue the job so it resumes (set by `rewrite slurm submit`)."),
    stop_within: float = typer.Option(STOP_WITHIN, help="After SIGTERM/SIGUSR1: seconds the chunk in flight gets to finish and commit before the run stops without it."),
):
    """Rewrite the captions of some shards with one meta set.

    Exit codes: 0 done (shards held by another live worker are skipped), 2 bad input or options,
    75 stopped by SIGTERM/SIGUSR1 with every committed chunk kept (run again to resume)."""
    from . import engines

    try:
        manifest = plan.load_manifest(work)
        shard_ids = plan.parse_shard_spec(shards, manifest.num_shards)
        task = slurm_lib.array_task(os.environ)
        if task is not None and len(shard_ids) > 1:  # an array task: its share of the spec
            shard_ids = slurm_lib.task_share(shard_ids, *task)
            typer.echo(f"array task {task[0]} of {task[1]}: shards {plan.format_shard_spec(shard_ids) or 'none'}",
                       err=True)
        config = runner.RunConfig(
            source=source, seed=seed, num_rewrites=num_rewrites, num_examples=num_examples,
            max_attempts=max_attempts, chunk_rows=chunk_rows, dedup=dedup, template=template,
            example_sets=example_sets,
            sampling=settings.Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens),
        )
        todo = runner.pending_shards(work, config.source, shard_ids, overwrite)
        if not todo:
            typer.echo(f"{config.source}: shards {plan.format_shard_spec(shard_ids) or 'none'} are done already "
                       "(--overwrite to redo them)")
            return
        options = {k: v for k, v in dict(
            batch_size=batch_size, dtype=dtype, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, engine_args=engine_arg or None,
            base_url=base_url, api=api, concurrency=concurrency, timeout=timeout,
        ).items() if v is not None}
        eng = engines.load(engine, model, **options)
        try:
            done = runner.run(work, config, todo, eng, overwrite=overwrite, progress=progress, stop_within=stop_within)
        finally:
            eng.close()
    except USER_ERRORS as e:
        fail(str(e))
    except StopRequested as e:
        typer.echo(f"{e}: committed chunks are kept; run the same command again to resume", err=True)
        if requeue_on_warning and e.signum == signal.SIGUSR1:
            # Slurm answers the requeue with SIGTERM to this job: ignore it, report and exit 75.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                job = slurm_lib.requeue_self(os.environ)
                typer.echo(f"requeued Slurm job {job}: it resumes from the committed chunks", err=True)
            except slurm_lib.SlurmError as err:
                typer.echo(f"error: {err}", err=True)
        raise typer.Exit(STOPPED)
    for s in done:
        typer.echo(f"{s['source']} shard {s['shard']:05d}: {s['rows']} rows, ok {s['ok']}, failed {s['failed']}, "
                   f"skipped {s['skipped']}, {s['captions_per_s']} captions/s")


@app.command()
def status(
    work: Path = typer.Option(..., "--work"),
    source: Optional[List[str]] = typer.Option(None, help="Only these sources."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Shards x sources: done, partial or missing, with totals."""
    try:
        manifest, statuses = status_lib.collect(work, [meta_lib.canonical_source(s) for s in source] if source else None)
    except USER_ERRORS as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps([{**vars(s), "slurm": slurm_lib.jobs(work, s.source)} for s in statuses], indent=2, default=str))
    else:
        lines = status_lib.render(manifest, statuses).splitlines()
        for st in statuses:  # Slurm's view beside each source's shard states
            at = next(i for i, line in enumerate(lines) if line.startswith(f"{st.source:8s} done"))
            lines[at + 1:at + 1] = slurm_lib.describe(work, st.source)
        typer.echo("\n".join(lines))


@app.command()
def export(
    work: Path = typer.Option(..., "--work"),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write."),
    source: Optional[List[str]] = typer.Option(None, help="Sources to include (default: all that were run)."),
    allow_missing: bool = typer.Option(False, help="Export even when shards are unfinished (their rewrites are null)."),
    overwrite: bool = typer.Option(False, help="Replace an existing export."),
):
    """Join the inputs with their rewrites as a Hugging Face dataset (parquet + dataset card)."""
    try:
        sources = [meta_lib.canonical_source(s) for s in source] if source else None
        summary = export_lib.export(work, out, sources, allow_missing=allow_missing, overwrite=overwrite)
    except USER_ERRORS as e:
        fail(str(e))
    typer.echo(f"wrote {summary['rows']} rows in {len(summary['files'])} files to {out} "
               f"(columns: {', '.join(summary['columns'])})")
    for src, spec in summary["missing"].items():
        typer.echo(f"warning: {src} has no rewrites for shards {spec} (null in the export)", err=True)


@app.command()
def demo(
    work: Path = typer.Option(Path("rewrite-demo"), "--work", help="Where the demo writes."),
    source: str = typer.Option("chatgpt"),
    engine: str = typer.Option(settings.ENGINE),
    model: Optional[str] = typer.Option(None),
):
    """Rewrite the shipped demo captions end to end and show a few."""
    from .demo import run_demo

    try:
        summary = run_demo(work, source=source, engine_name=engine, model=model)
    except USER_ERRORS as e:
        fail(str(e))
    col = f"caption_{meta_lib.canonical_source(source)}"
    for row in summary["examples"]:
        typer.echo(f"  {row['caption']}\n    -> {row[col]}")
    typer.echo(f"\ndataset: {Path(summary['out']).resolve()}  ({summary['rows']} rows; "
               f"with `datasets` installed, load it with datasets.load_dataset({str(Path(summary['out']).resolve())!r}))")


@meta_app.command("show")
def meta_show(source: str = typer.Argument(..., help="chatgpt, bard, coco (mscoco), human or a .jsonl file.")):
    """Print a meta set."""
    try:
        m = meta_lib.load(source)
    except USER_ERRORS as e:
        fail(str(e))
    typer.echo(f"# {m.name}: {len(m)} {m.kind} ({m.path})")
    if m.pairs:
        for s, t in m.pairs:
            typer.echo(f"{s} => {t}")
    for g in m.groups:
        typer.echo("\n".join(g) + "\n")


@meta_app.command("validate")
def meta_validate(files: Optional[List[str]] = typer.Argument(None, help="Meta sets to check (default: the four shipped).")):
    """Check meta sets (counts, no `=>` or line break inside, no duplicates) and print length statistics."""
    bad = False
    for name in files or list(settings.SOURCES):
        try:
            m = meta_lib.load(name)
        except USER_ERRORS as e:
            typer.echo(f"{name}: INVALID: {e}")
            bad = True
            continue
        problems = meta_lib.problems(m)
        st = meta_lib.stats(m)
        typer.echo(f"{m.name}: {'ok' if not problems else 'INVALID'}: {st['entries']} {st['kind']}, "
                   f"source {st['mean_source_words']} words, target {st['mean_target_words']} words "
                   f"(max {st['max_target_words']}), word overlap {st['mean_word_overlap']}")
        for p in problems:
            typer.echo(f"  - {p}")
        bad |= bool(problems)
    if bad:
        raise typer.Exit(1)


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
    export_to: Optional[str] = typer.Option(None, "--then-export", help="Also submit an export to this folder, run once every task succeeded."),
    dry_run: bool = typer.Option(False, help="Print the script; submit nothing."),
):
    """Submit `rewrite run` over SHARDS as a Slurm array. Options after `--` go to `rewrite run`
    (e.g. -- --engine vllm --model /models/llama-7b). Run it again to resubmit only unfinished shards."""
    try:
        manifest = plan.load_manifest(work)
        source = meta_lib.canonical_source(source)
        shard_ids = plan.parse_shard_spec(shards, manifest.num_shards)
        record = slurm_lib.submit(work, source, shard_ids, parallel=parallel, tasks=tasks, run_args=ctx.args,
                                  resources=slurm_lib.Resources(partition, time_limit, gpus, cpus, mem, account, sbatch or []),
                                  export_to=export_to, dry_run=dry_run)
    except USER_ERRORS as e:
        fail(str(e))
    if not record["shards"]:
        typer.echo(f"{source}: shards {shards} are done already: nothing to submit")
    elif dry_run:
        typer.echo(record["script_text"])
    else:
        typer.echo(f"submitted array job {record['job_id']}: {record['tasks']} tasks over shards {record['shards']} "
                   f"(script {record['script']}, logs in {Path(work) / 'slurm' / 'logs'})")
        if record.get("export_job"):
            typer.echo(f"submitted export job {record['export_job']} (runs after the array succeeds)")


@slurm_app.command("failed")
def slurm_failed(
    work: Path = typer.Option(..., "--work"),
    source: str = typer.Option(...),
    lines: int = typer.Option(20, help="Log lines to show per shard."),
):
    """Shards whose array task ended without finishing them, with the tail of the task's log."""
    try:
        found = slurm_lib.failed_shards(work, meta_lib.canonical_source(source), lines)
    except USER_ERRORS as e:
        fail(str(e))
    if not found:
        typer.echo("no failed shards")
        return
    for f in found:
        typer.echo(f"shard {f['shard']:05d} (task {f['job']}, {f['log']}):")
        typer.echo("\n".join(f"    {line}" for line in f["tail"]) or "    (no log)")
    typer.echo(f"\n{len(found)} failed shards; resubmit them with the same `rewrite slurm submit` command")
    raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app(prog_name="rewrite")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
