"""`rewrite run` as one task: its share of the named shards (inside a Slurm array task), preflight of
everything that needs no model, the engine's lifetime, and the run."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence


from .. import engines, stop
from ..defaults import Schedule
from ..run import checkpoint, runner
from ..run.config import RunConfig, prepare
from ..workdir import done, layout
from ..workdir.manifest import Manifest, format_shard_spec, load_manifest
from . import slurm


def _say(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class TaskResult:
    shards: list[int]  # the shards this process was to run (an array task's share)
    finished: list[dict]  # the stats of those it finished now (not those done already)
    done_already: bool = False  # every one of them was done before this run


def run_task(work: str | Path, configs: Sequence[RunConfig], named: Sequence[int], engine_name: str, model: str | None = None,
             engine_options: dict | None = None, *, overwrite: bool = False, progress: bool = True,
             schedule: Schedule = Schedule(), stop_within: float = stop.STOP_WITHIN,
             environ: Mapping[str, str] = os.environ, say: Callable[[str], None] = _say,
             retry_failed: bool = False, manifest: Manifest | None = None) -> TaskResult:
    """`rewrite run` as a library call: this process's share of the `named` shards (inside a Slurm array
    task, its share; see slurm.this_task_shards), those done already skipped, everything that needs no
    model checked before the engine loads, then the run, the engine closed after it however it ends.
    Several configs (one per meta set) share one engine: see `run_sets` (and its EngineUnavailable).
    The plan (`manifest`, read here unless the caller has) is read once, each set prepared once and each
    shard's state checked once, and all of them passed down."""
    shards, task = slurm.this_task_shards(named, environ)
    if task is not None:
        say(f"array task {task[0]} of {task[1]}: shards {format_shard_spec(shards) or 'none'}")
    # Everything is checked first, also when every shard is done (a bad option, or other settings than a
    # set was written with, is refused, not answered "done already"): the user's sets and prompts, then
    # the engine's options and model.
    w = layout.Work(work)
    manifest = manifest or load_manifest(w)
    jobs = [prepare(w, config, shards, named, manifest) for config in configs]
    name = engines.check(engine_name, model, engine_options or {})
    model_id = engines.model_name(name, model)
    for job in jobs:
        checkpoint.preflight(job, job.fingerprint(name, model_id), overwrite)
    todo_by_set, states = {}, {}
    for job in jobs:
        found = done.checks(w, job.config.source, shards)
        done.tidy_done(w, job.config.source, found)
        todo_by_set[job.config.source] = done.pending(found, overwrite, retry_failed)
        states.update({(job.config.source, shard): state for shard, state in found.items()})
    todo = sorted({s for pending in todo_by_set.values() for s in pending})
    if not todo:
        return TaskResult(shards, [], done_already=True)
    jobs = [job for job in jobs if todo_by_set[job.config.source]]
    runner.warm_up()
    say(f"loading the {name} engine on {model or 'the embedded model'}")
    with engines.opened(name, model, **(engine_options or {})) as engine:
        finished = runner.run_prepared(jobs, todo, engine, overwrite=overwrite, progress=progress, stop_within=stop_within,
                                   schedule=schedule, retry_failed=retry_failed, states=states)
    return TaskResult(shards, finished)
