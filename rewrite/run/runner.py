"""The runner: a task's shards, each set in turn, through one engine: each (shard, set) claimed
(checkpoint.py) and written (shardwork.py), a shard's captions read once for all its sets.

Identical captions are rewritten once (dedup), every (caption, rewrite index) becomes a request whose
examples and seed are derived from what identifies it (rows.py), completions are parsed and checked,
rejected ones are tried again, and each chunk is committed as a parquet part: by the streaming
scheduler (scheduler.py, the default: one engine stream over all of a task's shards and sets) or a
chunk at a time with retry rounds (shardwork.rewrite_chunk). When all parts exist they are joined into
WORK/rewrites/<source>/<shard>.parquet, and the stats json is written last. A rerun skips done shards
and resumes a partial one from its committed parts.

Rows whose request the engine could not serve (its server down or overloaded) are committed as failed
with reason engine_unavailable; their shard is not done, a rerun takes their chunks up again and
requests exactly those rows (rows.reopen), and EngineUnavailable tells the caller. `retry_failed` (`rewrite
run --retry-failed`) gives the failed rows of the shards a retry round: their chunks are taken up again
the same way.
"""
from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Iterable, Iterator, Sequence

import pyarrow as pa

from .. import stop
from ..defaults import Schedule
from ..engines import base as engine_base
from ..engines.base import Engine
from ..inputs import plan
from ..workdir import done, layout
from ..workdir.lock import ShardLock
from ..workdir.manifest import Manifest, load_manifest
from . import builders as builders_lib, checkpoint, rows, scheduler
from .builders import Builders, BuildersUnavailable
from .config import EngineUnavailable, PreparedSet, RunConfig, RunError, prepare
from .shardwork import ShardWork, run_chunked, unchecked


def run(work: str | Path, config: RunConfig, shards: Sequence[int], engine: Engine, **options) -> list[dict]:
    """Rewrite `shards` of the plan in `work` with one meta set; returns the stats of the shards it
    finished. `options` as `run_sets` takes them."""
    return run_sets(work, [config], shards, engine, **options)


def run_sets(
    work: str | Path,
    configs: Sequence[RunConfig],
    shards: Sequence[int],
    engine: Engine,
    *,
    overwrite: bool = False,
    progress: bool = True,
    schedule: Schedule = Schedule(),
    stop_within: float = stop.STOP_WITHIN,
    named: Sequence[int] | None = None,
    retry_failed: bool = False,
) -> list[dict]:
    """Rewrite `shards` of the plan in `work` with several meta sets (one config each) on one engine:
    shard by shard, every set in turn, a shard's captions read from the inputs once for all its sets
    (_ReadOnce); each set keeps its own column, settings and resume state. Returns the stats of the
    shards finished.

    `named`: the shards the user asked for when this process runs a share of them (Slurm arrays); an
    overwrite that starts the source over must name every shard with output. A shard another live
    process is writing is skipped (see lock.py). On SIGTERM/SIGUSR1/SIGINT the chunk in flight is
    committed and StopRequested is raised (see stop.py). When the engine gives up on its server, no new
    chunk is taken; then, or when a shard this run worked on has rows waiting for the engine,
    EngineUnavailable is raised (with the stats of the shards finished). `retry_failed`: the failed rows
    of the shards (done ones included) get a retry round (see `_reopen_done`)."""
    manifest = load_manifest(work)
    jobs = [prepare(work, config, shards, named, manifest) for config in configs]
    return run_prepared(jobs, shards, engine, overwrite=overwrite, progress=progress, schedule=schedule,
                    stop_within=stop_within, retry_failed=retry_failed)


def run_prepared(jobs: Sequence[PreparedSet], shards: Sequence[int], engine: Engine, *, overwrite: bool = False,
             progress: bool = True, schedule: Schedule = Schedule(), stop_within: float = stop.STOP_WITHIN,
             retry_failed: bool = False, states: Mapping[tuple[str, int], done.ShardCheck] | None = None
             ) -> list[dict]:
    """`run_sets` over jobs already prepared. `states`: (set, shard) -> its state as the caller checked it
    (launch/task.py checks each once), so that a claim does not check it again."""
    states = states or {}
    names = [job.config.source for job in jobs]
    if len(set(names)) < len(names):
        raise RunError(f"--source names a set twice: {', '.join(names)}")
    touched: list[tuple[str, int]] = []  # the (source, shard)s this run worked on
    if getattr(engine, "outage", None) is not None:
        engine.outage.restart()  # a run tries the server again, whatever an earlier one saw
    with stop.handling(stop_within), contextlib.ExitStack() as held:
        for job in jobs:
            held.callback(checkpoint.open_source(job, job.fingerprint(engine.describe()["engine"], engine.model), overwrite).release)
        if schedule.streaming if schedule.streaming is not None else getattr(engine, "streams_by_default", False):
            finished = _run_streaming(jobs, shards, engine, overwrite=overwrite, progress=progress, schedule=schedule,
                                      retry_failed=retry_failed, touched=touched, states=states)
        else:
            finished = []
            read, read_shard = plan.iter_shard, None
            for shard, job in ((shard, job) for shard in shards for job in jobs):
                if engine_base.gave_up(engine):
                    break
                if shard != read_shard:
                    read, read_shard = _ReadOnce() if len(jobs) > 1 else plan.iter_shard, shard
                stop.check()
                lock = checkpoint.claim(job, shard, overwrite, retry_failed, states.get((job.config.source, shard)))
                if lock is not None:
                    touched.append((job.config.source, shard))
                    with lock:
                        stats = run_chunked(job, shard, engine, progress=progress, schedule=schedule, read=read,
                                             retry_failed=retry_failed)
                    finished += [stats] if stats is not None else []
        _check_waiting(jobs[0].w if jobs else None, engine, touched, finished)
        return finished


def _check_waiting(w: layout.Work, engine: Engine, touched: Sequence[tuple[str, int]], finished: list[dict]) -> None:
    """Raise EngineUnavailable when the engine gave up, or a shard this run worked on (`touched`) and did
    not finish has rows waiting for it."""
    gave_up = engine_base.gave_up(engine)
    waiting = {}
    done_now = {(stats["source"], stats["shard"]) for stats in finished}
    for source, shard in touched:
        if (source, shard) not in done_now:
            count = sum(part.waiting_rows for part in done.parts(w, source, shard))
            if count:
                waiting[source, shard] = count
    if gave_up or waiting:
        raise EngineUnavailable(engine, waiting, finished, gave_up)


def _run_streaming(jobs: Sequence[PreparedSet], shards: Sequence[int], engine: Engine, *, overwrite: bool, progress: bool,
                   schedule: Schedule, retry_failed: bool, touched: list, states: Mapping) -> list[dict]:
    """Every (shard, set) of the task through one engine stream, with no drain between shards: the next
    shard's requests join the batch while the last rows of the one before decode, and a shard is joined
    off the engine's path (scheduler.py). A stream takes one sampling setting, so sets that differ in it
    (the CLI gives all sets the same) get a stream each, over all the shards. On a stop request the open
    chunks are committed and StopRequested is raised; a shard with chunks left is finished by the next
    run. So are they when the engine gives up on its server, and no other chunk or stream is started.
    Returns the stats of the shards finished."""
    finished: dict[int, dict] = {}  # by the (shard, set)'s place in the task, as the writer finishes them
    pairs = list(enumerate((shard, job) for shard in shards for job in jobs))
    with _builders(engine, schedule) as builders:
        for sampling in dict.fromkeys(job.config.sampling for job in jobs):
            sets = sum(job.config.sampling == sampling for job in jobs)
            alike = [(place, (shard, job)) for place, (shard, job) in pairs if job.config.sampling == sampling]
            with contextlib.ExitStack() as locks:  # the shard locks of units not finished (a stop, an error)
                stream = scheduler.Stream(engine, sampling, schedule, builders)
                with stop.deferred():  # a stop request lets the open chunks finish and commit (none start after it)
                    stream.run(_units(alike, sets, engine, overwrite=overwrite, progress=progress, locks=locks,
                                      finished=finished, retry_failed=retry_failed, touched=touched, states=states))
            stop.check()  # asked to stop: the chunks not started stay for a rerun
            if engine_base.gave_up(engine):
                break
    return [finished[place] for place in sorted(finished)]


# Set: the stream waits for its builders to start rather than work without them meanwhile (tests that
# must see the workers do the work, and the benchmark's steady state).
WAIT_FOR_BUILDERS = "REWRITE_WAIT_FOR_BUILDERS"


@contextlib.contextmanager
def _builders(engine: Engine, schedule: Schedule) -> Iterator[Builders | None]:
    """The stream's worker processes (`schedule.builders`; None: a quarter of the task's cores), ended
    with it; none where there are to be none, or where the engine's tokenizer cannot go to a worker (said once)."""
    count = builders_lib.default_count() if schedule.builders is None else schedule.builders
    if not count:
        yield None
        return
    try:
        builders = Builders(count, engine)
    except BuildersUnavailable as e:
        print(f"--builders {count}: {e}; requests are built in the engine's process", file=sys.stderr)
        yield None
        return
    if os.environ.get(WAIT_FOR_BUILDERS):
        builders.wait_ready()
    try:
        yield builders
    finally:
        builders.close()


def _units(pairs: Iterable[tuple[int, tuple[int, PreparedSet]]], sets: int, engine: Engine, *, overwrite: bool, progress: bool,
           locks: contextlib.ExitStack, finished: dict[int, dict], retry_failed: bool,
           touched: list, states: Mapping) -> Iterator[scheduler.Unit]:
    """The stream's units, each started when the builder reaches it (its shard lock taken, done shards
    skipped); a unit's `finish` joins its shard, puts its stats in `finished` (unless rows of it wait
    for the engine: it is not done then) and releases its lock."""
    read, read_shard = plan.iter_shard, None
    # By set: how its requests are made (checked, and before the check), the same for each of its shards.
    asking: dict[str, tuple[Future, rows.Unchecked]] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="rewrite-prompting") as beside:  # see scheduler.Unit.ask
        for place, (shard, job) in pairs:
            if shard != read_shard:
                read, read_shard = _ReadOnce() if sets > 1 else plan.iter_shard, shard
            config = job.config
            if config.source not in asking:  # checked from the set's first unit on, its claim and read beside it
                ask = unchecked(config, job.meta_set, job.template, engine)
                asking[config.source] = beside.submit(ask.checked), rows.Unchecked.of(ask)
            lock = checkpoint.claim(job, shard, overwrite, retry_failed, states.get((config.source, shard)))
            if lock is None:
                continue
            locks.callback(lock.release)
            touched.append((config.source, shard))
            work = ShardWork(job, shard, engine, progress, read, retry_failed)

            def finish(work: ShardWork = work, lock: ShardLock = lock, place: int = place) -> None:
                stats = work.finish()
                if stats is not None:
                    finished[place] = stats
                lock.release()

            yield scheduler.Unit(*asking[config.source], work.todo, work.commit, finish,
                                 num_rewrites=config.num_rewrites, attempts=work.attempts, dedup=config.dedup,
                                 schema=work.schema, reopened=work.todo.reopened)


def warm_up() -> None:
    """Done before the engine loads (`rewrite run` does; the benchmark does as it does): what the run's
    first chunk read would otherwise do on the engine's path, once per process. pyarrow's first
    conversion of a Python list imports pandas where it is installed (to ask whether the list is one
    of pandas' arrays): 0.3 s of CPU here, before the engine's first request. Not in a thread beside
    the load: vLLM forks its engine core then, and a fork in the middle of an import leaves the
    child that import's lock, held for good."""
    pa.array([], pa.string())


class _ReadOnce:
    """`plan.iter_shard` for the sets of one shard: the first set that reads the shard's (key, caption)
    chunks reads them from the inputs, the others get the same tables (held while the shard's sets run:
    two small columns)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] | None = None
        self.read_as: tuple | None = None

    def __call__(self, manifest: Manifest, shard: int, chunk_rows: int) -> Iterator[pa.Table]:
        if self.tables is None or self.read_as != (shard, chunk_rows):
            self.tables, self.read_as = list(plan.iter_shard(manifest, shard, chunk_rows)), (shard, chunk_rows)
        return iter(self.tables)


