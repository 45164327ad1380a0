"""`rewrite run` as one task: its share of the named shards (inside a Slurm array task), preflight of
everything that needs no model, the engine's lifetime, and the run."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence


from .. import stop
from ..workdir import done
from ..workdir.manifest import format_shard_spec
from ..defaults import Schedule
from .. import engines
from ..run import checkpoint, runner
from ..run.config import RunConfig, prepare
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
             retry_failed: bool = False) -> TaskResult:
    """`rewrite run` as a library call: this process's share of the `named` shards (inside a Slurm array
    task, its share; see slurm.this_task_shards), those done already skipped, everything that needs no
    model checked before the engine loads, then the run, the engine closed after it however it ends.
    Several configs (one per meta set) share one engine: see `run_sets` (and its EngineUnavailable)."""
    shards, task = slurm.this_task_shards(named, environ)
    if task is not None:
        say(f"array task {task[0]} of {task[1]}: shards {format_shard_spec(shards) or 'none'}")
    # Everything is checked first, also when every shard is done (a bad option, or other settings than a
    # set was written with, is refused, not answered "done already"): the user's sets and prompts, then
    # the engine's options and model.
    jobs = [prepare(work, config, shards, named) for config in configs]
    name = engines.check(engine_name, model, engine_options or {})
    model_id = engines.model_name(name, model)
    for job in jobs:
        checkpoint.preflight(job, job.fingerprint(name, model_id), overwrite)
    todo_by_set = {}
    for config in configs:
        done.tidy_done(work, config.source, shards)
        todo_by_set[config.source] = done.pending_shards(work, config.source, shards, overwrite, retry_failed)
    todo = sorted({s for pending in todo_by_set.values() for s in pending})
    if not todo:
        return TaskResult(shards, [], done_already=True)
    configs = [c for c in configs if todo_by_set[c.source]]
    say(f"loading the {name} engine on {model or 'the embedded model'}")
    with engines.opened(name, model, **(engine_options or {})) as engine:
        finished = runner.run_sets(work, configs, todo, engine, overwrite=overwrite, progress=progress,
                            stop_within=stop_within, named=named, schedule=schedule, retry_failed=retry_failed)
    return TaskResult(shards, finished)
