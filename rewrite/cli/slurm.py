"""`rewrite slurm ...`: submit `rewrite run` as Slurm array jobs, and find the shards whose tasks failed."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import meta as meta_lib
from .. import exports
from ..workdir.manifest import load_manifest, parse_shard_spec
from ..launch import slurm as slurm_lib
from .shared import app, reported


slurm_app = typer.Typer(help="Run shards as Slurm array jobs.", no_args_is_help=True)
app.add_typer(slurm_app, name="slurm")


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
