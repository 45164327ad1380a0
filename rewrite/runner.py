"""The shard runner: read a shard in chunks, rewrite them, commit each, then mark the shard done.

Identical captions are rewritten once (dedup), every (caption, rewrite index) becomes a request whose
examples and seed are derived from what identifies it (rows.py), completions are parsed and checked,
rejected ones are tried again, and each chunk is committed as a parquet part: by the streaming
scheduler (scheduler.py, the default: one engine stream over all of a task's shards and sets) or a
chunk at a time with retry rounds (`rewrite_chunk`). When all parts exist they are joined into
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
import json
import os
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, atomic, clip_tokens, done, faults, layout, meta, plan, prompt, rows, scheduler, settings, stop
from . import validate
from . import model as model_lib
from .lock import ShardLock, SourceLock
from .engines import base as engine_base
from .engines.base import Engine, Request
from .settings import Sampling, Schedule

STATS_KEY = done.STATS_KEY
ROW_GROUP_ROWS = 8192
LEFTOVER_AGE = 600  # seconds after which a temporary settings file is taken for a killed writer's
START_OVER_WAIT = 10.0  # seconds an overwrite waits for the source to itself before it refuses


class RunError(RuntimeError):
    pass


class EngineUnavailable(Exception):
    """The engine could not serve some requests (its server down, overloaded or refusing the run). Their
    rows are committed as failed (engine_unavailable) and their shards are not done; the same run again
    requests exactly those rows. `waiting`: (source, shard) -> its rows waiting; `gave_up`: the engine gave
    up on its server (too many failures in a row) and the run stopped; `finished`: the stats of the
    shards this run finished."""

    def __init__(self, engine: Engine, waiting: dict[tuple[str, int], int], finished: list[dict], gave_up: bool):
        self.waiting, self.finished, self.gave_up = waiting, finished, gave_up
        url = engine.describe().get("base_url")
        where = f"the engine at {url}" if url else f"the {engine.name} engine"
        outage = getattr(engine, "outage", None)
        error = (outage.last_error if outage else None) or "no error message"
        by_source: dict[str, dict[int, int]] = {}
        for (source, shard), count in waiting.items():
            by_source.setdefault(source, {})[shard] = count
        rows_waiting = "; ".join(f"{source} shard{'s' if len(counts) > 1 else ''} {plan.format_shard_spec(sorted(counts))} "
                                 f"({sum(counts.values())} rows)" for source, counts in by_source.items())
        if gave_up:
            what = (f"{where} is unavailable ({error}): the run stopped after {outage.bound} requests in a row "
                    "it could not serve and kept every committed chunk")
        else:
            what = f"{where} was unavailable for some requests ({error})"
        super().__init__(f"{what}; rows waiting for it, in shards that are not done: {rows_waiting or 'none'}; "
                         "run the same command again to retry")


@dataclass(frozen=True)
class RunConfig:
    """What defines the output of a run (with the engine's model).

    `source` may be given as a shipped set's name or a custom set's .jsonl path; it is kept as the
    set's name (which names its folder, column and seeds), and the path goes to `meta_file`. A set
    named like a shipped one may be read from elsewhere (`meta_file`: e.g. the paper's own sets, as
    `rewrite meta import-laclip` writes them)."""

    source: str
    seed: int = settings.SEED
    num_rewrites: int = settings.NUM_REWRITES
    num_examples: int = settings.NUM_EXAMPLES
    max_attempts: int = settings.MAX_ATTEMPTS
    chunk_rows: int = settings.CHUNK_ROWS
    dedup: bool = True
    example_sets: int = settings.EXAMPLE_SETS
    max_caption_tokens: int = settings.MAX_CAPTION_TOKENS
    template: str = settings.TEMPLATE
    sampling: Sampling = field(default_factory=Sampling)
    meta_file: str | None = None
    min_faithfulness: float | None = None  # a rewrite scoring below it is rejected (validate.UNFAITHFUL)

    def __post_init__(self) -> None:
        if self.meta_file is None and meta.is_file_source(self.source):
            object.__setattr__(self, "meta_file", str(Path(self.source).resolve()))
        object.__setattr__(self, "source", meta.source_name(self.source))
        for name in ("num_rewrites", "num_examples", "max_attempts", "chunk_rows", "max_caption_tokens"):
            if getattr(self, name) < 1:
                raise RunError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.example_sets < 0:
            raise RunError(f"--example-sets must be >= 0, got {self.example_sets}")
        if self.min_faithfulness is not None and not 0 <= self.min_faithfulness <= 1:
            raise RunError(f"--min-faithfulness must be between 0 and 1, got {self.min_faithfulness}")

    def fingerprint(self, meta_set: meta.MetaSet, template: prompt.Template, engine_name: str, model: str) -> dict:
        """Everything a resumed or appended run must share with the first one."""
        d = asdict(self)
        d.pop("chunk_rows")  # chunk size changes commits, not rewrites
        d.pop("meta_file")  # where the set (or template) lies does not matter; its digest does
        if d["min_faithfulness"] is None:
            d.pop("min_faithfulness")  # work dirs made before the gate existed resume
        d["template"] = template.name
        return {**d, "meta_digest": meta_set.digest(), "template_digest": template.digest,
                "engine": engine_name, "model": model, "model_digest": model_lib.digest(model),
                "version": __version__}


def set_configs(sources: Sequence[str], meta_dir: str | Path | None = None, **settings_) -> list[RunConfig]:
    """One RunConfig per meta set of --source (see settings.source_list); with `meta_dir`, the sets named
    like the shipped ones are read from META_DIR/<name>.jsonl instead. Two sets going by one name (e.g.
    chatgpt and DIR/chatgpt.jsonl) would share a folder and a column: refused."""
    configs = []
    for source in sources:
        meta_file = None
        if meta_dir is not None and not meta.is_file_source(source):
            meta_file = str((Path(meta_dir) / f"{meta.source_name(source)}.jsonl").resolve())
        configs.append(RunConfig(source=source, meta_file=meta_file, **settings_))
    names = [c.source for c in configs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RunError(f"--source names the set {twice[0]} twice ({', '.join(sources)}): each set is one folder and "
                       "one column, so give each name once")
    return configs


@dataclass(frozen=True)
class Job:
    """A run's inputs checked before any model loads: the plan, the meta set, the template, the shards."""

    w: layout.Work
    manifest: plan.Manifest
    config: RunConfig
    meta_set: meta.MetaSet
    template: prompt.Template
    shards: tuple[int, ...]  # the shards this process runs
    named: tuple[int, ...]  # the shards the user named (an array task runs a share of them)

    def fingerprint(self, engine_name: str, model: str) -> dict:
        return {**self.config.fingerprint(self.meta_set, self.template, engine_name, model),
                "plan_id": self.manifest.plan_id()}


def prepare(work: str | Path, config: RunConfig, shards: Sequence[int], named: Sequence[int] | None = None) -> Job:
    """Check everything about a run that needs no model: a bad meta set, template, shard or column
    is refused before minutes go into loading one."""
    w = layout.Work(work)
    manifest = plan.load_manifest(w)
    meta_set = meta.load_usable(config.meta_file or config.source, config.num_examples)
    template = prompt.load_template(config.template)
    for shard in shards:
        if not 0 <= shard < manifest.num_shards:
            raise RunError(f"shard {shard} is not in the plan (shards 0-{manifest.num_shards - 1})")
    columns = [layout.export_column(config.source, i, config.num_rewrites) for i in range(config.num_rewrites)]
    taken = [c for c in columns if c in manifest.columns]
    if taken:
        raise RunError(f"the inputs already have a column {taken[0]!r}, the name {config.source}'s rewrites take in an "
                       f"export: plan the inputs without it, or run the set under another name (a copy of it as "
                       f"OTHER.jsonl gives `caption_OTHER`)")
    clip_tokens.check_available()
    return Job(w, manifest, config, meta_set, template, tuple(shards), tuple(named if named is not None else shards))


def recorded_settings(w: layout.Work, source: str) -> dict | None:
    """The source's recorded fingerprint (None before its first run); a damaged file is an error naming it."""
    path = w.settings_file(source)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
        return recorded
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is damaged ({e}): run with --overwrite (and every shard with output named in "
                       "--shards) to start this source over") from None


def _differences(recorded: dict, fingerprint: dict) -> str:
    keys = sorted(k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k))
    return "; ".join(f"{k}: {recorded.get(k)!r} then, {fingerprint.get(k)!r} now" for k in keys)


def check_settings(job: Job, fingerprint: dict, overwrite: bool) -> bool:
    """Whether the run matches what the source was written with (True), or must start it over (False,
    only with overwrite); anything else is an error that says what differs. Reads, never writes."""
    w, source = job.w, job.config.source
    try:
        recorded = recorded_settings(w, source)
    except RunError:
        if not overwrite:
            raise
        recorded = {}
    if recorded is None or recorded == fingerprint:
        return True
    if not overwrite:
        raise RunError(f"{w.rewrites(source)} was written with other settings ({_differences(recorded, fingerprint)}). "
                       "Use the same settings, another --work, or --overwrite to start this source over")
    others = [s for s in range(job.manifest.num_shards) if s not in job.named
              and done.check(w, source, s).state != done.MISSING]
    if others:
        raise RunError(f"--overwrite with other settings starts {source} over, which removes the output of shards "
                       f"{plan.format_shard_spec(others)} that --shards does not name: name them too (e.g. --shards all) "
                       "to remove them, or keep the recorded settings")
    return False


def preflight(job: Job, fingerprint: dict, overwrite: bool) -> None:
    """Before a model loads: the settings match the source's, or an overwrite may start it over now
    (no other run is writing it). Holds nothing after; `run` checks again under the lock."""
    if check_settings(job, fingerprint, overwrite):
        return
    probe = SourceLock(job.w.source_lock_file(job.config.source))
    try:
        if not probe.exclusive():
            raise _busy(job)
    finally:
        probe.release()


def _busy(job: Job) -> RunError:
    source = job.config.source
    return RunError(f"--overwrite would start {source} over, but other runs are writing it now "
                    f"({_writers(job.w, source, job.manifest.num_shards)}): stop them first")


def _open_source(job: Job, fingerprint: dict, overwrite: bool) -> SourceLock:
    """Hold the source (shared) with its settings recorded as `fingerprint`, starting it over first
    when overwrite asks for other settings."""
    w, source = job.w, job.config.source
    lock = SourceLock(w.source_lock_file(source))
    lock.shared()
    try:
        _clean_settings_leftovers(w, source)
        if check_settings(job, fingerprint, overwrite):
            if recorded_settings(w, source) is None and not atomic.create_json(w.settings_file(source), fingerprint):
                check_settings(job, fingerprint, overwrite=False)  # another run recorded its settings first
        else:
            _start_over(job, fingerprint, lock)
        return lock
    except BaseException:
        lock.release()
        raise


def _matches(w: layout.Work, source: str, fingerprint: dict) -> bool:
    try:
        return recorded_settings(w, source) == fingerprint
    except RunError:
        return False


def _start_over(job: Job, fingerprint: dict, lock: SourceLock) -> None:
    """Remove the source's output and record the new settings. That needs the source to itself
    (exclusive): never while another run writes it. Other tasks of the same overwriting run wait for
    the one that starts it over, and then join it."""
    w, source = job.w, job.config.source
    lock.release()
    deadline = time.monotonic() + START_OVER_WAIT
    joined = False
    while not lock.exclusive():
        if _matches(w, source, fingerprint):
            joined = True  # another task of this run started it over
            break
        if time.monotonic() > deadline:
            raise _busy(job)
        time.sleep(0.2)
    if not joined and not _matches(w, source, fingerprint):
        with stop.deferred():
            print(f"{source}: other settings, starting it over (removing the output of its shards)", file=sys.stderr)
            for shard in range(job.manifest.num_shards):
                done.clear(w, source, shard)
            atomic.write_json(w.settings_file(source), fingerprint)
    lock.shared()
    if not _matches(w, source, fingerprint):
        raise RunError(f"another run started {source} over with other settings while this one did")


def _writers(w: layout.Work, source: str, num_shards: int) -> str:
    held = []
    for shard in range(num_shards):
        lock = ShardLock(w.lock_file(source, shard))
        if w.lock_file(source, shard).exists() and not lock.acquire():
            held.append(f"shard {layout.shard_id(shard)} by {lock.holder()}")
        lock.release()
    return "; ".join(held[:5]) or "a run is starting"


def _clean_settings_leftovers(w: layout.Work, source: str) -> None:
    path = w.settings_file(source)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        # A commit cut short by a kill; a young one may be another task's commit in progress.
        if time.time() - leftover.stat().st_mtime > LEFTOVER_AGE:
            leftover.unlink(missing_ok=True)


def schema(num_rewrites: int) -> pa.Schema:
    fields = [pa.field(layout.KEY, pa.string())]
    for i in range(num_rewrites):
        fields += [
            pa.field(layout.rewrite_column(i, num_rewrites), pa.string()),
            pa.field(layout.suffixed(layout.STATUS, i, num_rewrites), pa.string()),
            pa.field(layout.suffixed(layout.REASON, i, num_rewrites), pa.string()),
        ]
    return pa.schema(fields)


def tidy_done(work: str | Path, source: str, shards: Sequence[int]) -> None:
    """Remove the chunk parts a writer killed right after marking its shard done left, under the
    shard's lock (a shard another process holds is left alone)."""
    w = layout.Work(work)
    for shard in shards:
        parts = w.parts(source, shard)
        if not parts.is_dir() or done.check(w, source, shard).state != done.DONE:
            continue
        lock = ShardLock(w.lock_file(source, shard))
        if lock.acquire():
            with lock:
                if done.check(w, source, shard).state == done.DONE:
                    shutil.rmtree(parts, ignore_errors=True)


def pending_shards(work: str | Path, source: str, shards: Sequence[int], overwrite: bool = False,
                   retry_failed: bool = False) -> list[int]:
    """The shards of `shards` that source `source` (its name, as RunConfig.source) still has to do (all of
    them with overwrite; with retry_failed, done ones with failed rows too). Reads only."""
    if overwrite:
        return list(shards)
    w = layout.Work(work)
    checks = {s: done.check(w, source, s) for s in shards}
    return [s for s, found in checks.items() if found.state != done.DONE or (retry_failed and found.stats["failed"])]


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
    jobs = [prepare(work, config, shards, named) for config in configs]
    names = [job.config.source for job in jobs]
    if len(set(names)) < len(names):
        raise RunError(f"--source names a set twice: {', '.join(names)}")
    touched: list[tuple[str, int]] = []  # the (source, shard)s this run worked on
    if getattr(engine, "outage", None) is not None:
        engine.outage.restart()  # a run tries the server again, whatever an earlier one saw
    with stop.handling(stop_within), contextlib.ExitStack() as held:
        for job in jobs:
            held.callback(_open_source(job, job.fingerprint(engine.describe()["engine"], engine.model), overwrite).release)
        if schedule.streaming if schedule.streaming is not None else getattr(engine, "streams_by_default", False):
            finished = _run_streaming(jobs, shards, engine, overwrite=overwrite, progress=progress, schedule=schedule,
                                      retry_failed=retry_failed, touched=touched)
        else:
            finished = []
            read, read_shard = plan.iter_shard, None
            for shard, job in ((shard, job) for shard in shards for job in jobs):
                if engine_base.gave_up(engine):
                    break
                if shard != read_shard:
                    read, read_shard = _ReadOnce() if len(jobs) > 1 else plan.iter_shard, shard
                stop.check()
                lock = _claim(job, shard, overwrite, retry_failed)
                if lock is not None:
                    touched.append((job.config.source, shard))
                    with lock:
                        stats = _run_chunked(job, shard, engine, progress=progress, schedule=schedule, read=read,
                                             retry_failed=retry_failed)
                    finished += [stats] if stats is not None else []
        _check_waiting(layout.Work(work), engine, touched, finished)
        return finished


def _check_waiting(w: layout.Work, engine: Engine, touched: Sequence[tuple[str, int]], finished: list[dict]) -> None:
    """Raise EngineUnavailable when the engine gave up, or a shard this run worked on has rows waiting for it."""
    gave_up = engine_base.gave_up(engine)
    waiting = {}
    for source, shard in touched:
        if done.check(w, source, shard).state != done.DONE:
            count = sum(part.waiting_rows for part in done.parts(w, source, shard))
            if count:
                waiting[source, shard] = count
    if gave_up or waiting:
        raise EngineUnavailable(engine, waiting, finished, gave_up)


def _run_streaming(jobs: Sequence[Job], shards: Sequence[int], engine: Engine, *, overwrite: bool, progress: bool,
                   schedule: Schedule, retry_failed: bool, touched: list) -> list[dict]:
    """Every (shard, set) of the task through one engine stream, with no drain between shards: the next
    shard's requests join the batch while the last rows of the one before decode, and a shard is joined
    off the engine's path (scheduler.py). A stream takes one sampling setting, so sets that differ in it
    (the CLI gives all sets the same) get a stream each, over all the shards. On a stop request the open
    chunks are committed and StopRequested is raised; a shard with chunks left is finished by the next
    run. So are they when the engine gives up on its server, and no other chunk or stream is started.
    Returns the stats of the shards finished."""
    finished: dict[int, dict] = {}  # by the (shard, set)'s place in the task, as the writer finishes them
    pairs = list(enumerate((shard, job) for shard in shards for job in jobs))
    for sampling in dict.fromkeys(job.config.sampling for job in jobs):
        sets = sum(job.config.sampling == sampling for job in jobs)
        alike = [(place, (shard, job)) for place, (shard, job) in pairs if job.config.sampling == sampling]
        with contextlib.ExitStack() as locks:  # the shard locks of units not finished (a stop, an error)
            stream = scheduler.Stream(engine, sampling, schedule)
            with stop.deferred():  # a stop request lets the open chunks finish and commit (none start after it)
                stream.run(_units(alike, sets, engine, overwrite=overwrite, progress=progress, locks=locks,
                                  finished=finished, retry_failed=retry_failed, touched=touched))
        stop.check()  # asked to stop: the chunks not started stay for a rerun
        if engine_base.gave_up(engine):
            break
    return [finished[place] for place in sorted(finished)]


def _units(pairs: Iterable[tuple[int, tuple[int, Job]]], sets: int, engine: Engine, *, overwrite: bool, progress: bool,
           locks: contextlib.ExitStack, finished: dict[int, dict], retry_failed: bool,
           touched: list) -> Iterator[scheduler.Unit]:
    """The stream's units, each started when the builder reaches it (its shard lock taken, done shards
    skipped); a unit's `finish` joins its shard, puts its stats in `finished` (unless rows of it wait
    for the engine: it is not done then) and releases its lock."""
    read, read_shard = plan.iter_shard, None
    for place, (shard, job) in pairs:
        if shard != read_shard:
            read, read_shard = _ReadOnce() if sets > 1 else plan.iter_shard, shard
        lock = _claim(job, shard, overwrite, retry_failed)
        if lock is None:
            continue
        locks.callback(lock.release)
        touched.append((job.config.source, shard))
        work = _ShardWork(job, shard, engine, progress, read, retry_failed)

        def finish(work: _ShardWork = work, lock: ShardLock = lock, place: int = place) -> None:
            stats = work.finish()
            if stats is not None:
                finished[place] = stats
            lock.release()

        config = job.config
        yield scheduler.Unit(prompting(config, job.meta_set, job.template, engine), work.todo, work.commit, finish,
                             num_rewrites=config.num_rewrites, attempts=work.attempts, dedup=config.dedup,
                             schema=work.schema, reopened=work.todo.reopened)


class _ReadOnce:
    """`plan.iter_shard` for the sets of one shard: the first set that reads the shard's (key, caption)
    chunks reads them from the inputs, the others get the same tables (held while the shard's sets run:
    two small columns)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] | None = None
        self.read_as: tuple | None = None

    def __call__(self, manifest: plan.Manifest, shard: int, chunk_rows: int) -> Iterator[pa.Table]:
        if self.tables is None or self.read_as != (shard, chunk_rows):
            self.tables, self.read_as = list(plan.iter_shard(manifest, shard, chunk_rows)), (shard, chunk_rows)
        return iter(self.tables)


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
    from . import engines, slurm

    shards, task = slurm.this_task_shards(named, environ)
    if task is not None:
        say(f"array task {task[0]} of {task[1]}: shards {plan.format_shard_spec(shards) or 'none'}")
    # Everything is checked first, also when every shard is done (a bad option, or other settings than a
    # set was written with, is refused, not answered "done already"): the user's sets and prompts, then
    # the engine's options and model.
    jobs = [prepare(work, config, shards, named) for config in configs]
    name = engines.check(engine_name, model, engine_options or {})
    model_id = engines.model_name(name, model)
    for job in jobs:
        preflight(job, job.fingerprint(name, model_id), overwrite)
    todo_by_set = {}
    for config in configs:
        tidy_done(work, config.source, shards)
        todo_by_set[config.source] = pending_shards(work, config.source, shards, overwrite, retry_failed)
    todo = sorted({s for pending in todo_by_set.values() for s in pending})
    if not todo:
        return TaskResult(shards, [], done_already=True)
    configs = [c for c in configs if todo_by_set[c.source]]
    say(f"loading the {name} engine on {model or 'the embedded model'}")
    with engines.opened(name, model, **(engine_options or {})) as engine:
        finished = run_sets(work, configs, todo, engine, overwrite=overwrite, progress=progress,
                            stop_within=stop_within, named=named, schedule=schedule, retry_failed=retry_failed)
    return TaskResult(shards, finished)


def _claim(job: Job, shard: int, overwrite: bool, retry_failed: bool = False) -> ShardLock | None:
    """The shard's lock, held, when this process is to write the shard; None when another process holds
    it or the shard is done (and verified), unless retry_failed finds failed rows in it (it is reopened
    then). A damaged shard, or any with overwrite, is cleared first."""
    w, source = job.w, job.config.source
    lock = ShardLock(w.lock_file(source, shard))
    if not lock.acquire():
        print(f"{source} shard {layout.shard_id(shard)}: being rewritten by {lock.holder()}, skipped", file=sys.stderr)
        return None
    try:
        found = done.check(w, source, shard)
        if overwrite or found.state == done.DAMAGED:
            if found.state == done.DAMAGED:
                print(f"{source} shard {layout.shard_id(shard)}: damaged ({found.problem}): rewriting it", file=sys.stderr)
            done.clear(w, source, shard)
        elif found.state == done.DONE:
            shutil.rmtree(w.parts(source, shard), ignore_errors=True)  # left by a writer killed right after its stats
            if retry_failed and found.stats["failed"]:
                print(f"{source} shard {layout.shard_id(shard)}: retrying its {found.stats['failed']} failed rows",
                      file=sys.stderr)
                _reopen_done(job, shard, found.stats)
                return lock
            print(f"{source} shard {layout.shard_id(shard)}: done already, skipped", file=sys.stderr)
            lock.release()
            return None
    except BaseException:
        lock.release()
        raise
    return lock


# What a done shard's stats carry of its chunks' work, beside the counts of its rows.
CARRIED = ("unique_captions", "requests", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "captions_cut",
           "seconds", "rejected", "engine_errors")


def _reopen_done(job: Job, shard: int, stats: dict) -> None:
    """--retry-failed on a done shard: its rows go back into chunk parts bound for the next retry round
    (done.Part.target; the shard's counters carried by the first part), then the shard stops being done,
    and the run takes up the chunks with failed rows (rows.reopen). Killed before that last step, the
    shard is still done; after it, a rerun goes on with the round from the parts. Caller holds its lock."""
    w, config = job.w, job.config
    parts = w.parts(config.source, shard)
    parts.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(w.rewrite_file(config.source, shard)).replace_schema_metadata(None)
    round_ = stats.get(done.ROUND_KEY, 0)
    for index, start in enumerate(range(0, table.num_rows, config.chunk_rows)):
        chunk = table.slice(start, config.chunk_rows)
        counts = rows.tally(chunk, config.num_rewrites)
        chunk_stats = {**rows.chunk_stats(chunk.num_rows, 0), "captions_cut": 0, "seconds": 0.0, "rejected": {},
                       **counts, **({k: stats[k] for k in CARRIED if k in stats} if index == 0 else {})}
        _write_part(parts / f"{index:05d}.parquet", chunk, done.Part(chunk_stats, round_, round_ + 1))
    w.stats_file(config.source, shard).unlink()


def _write_part(path: Path, table: pa.Table, part: done.Part) -> None:
    """Commit a chunk's rows with its record (done.Part)."""
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(part.metadata()), tmp)


def _committed_part(part: Path, chunk: pa.Table) -> tuple[done.Part, pa.Table] | None:
    """The record and rows of a chunk an earlier run committed, or None when there is none; a damaged
    part, or one that does not hold these rows, is removed (and redone by the caller)."""
    if not part.exists():
        return None
    try:
        committed = pq.read_table(part)
        record = done.Part.of(committed.schema.metadata)
        problem = None if committed.num_rows == chunk.num_rows and committed.column(layout.KEY).equals(
            chunk.column(layout.KEY)) else "it does not hold this chunk's rows"
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as e:
        problem = f"unreadable: {e}"
    if problem is None:
        return record, committed.replace_schema_metadata(None)
    print(f"damaged chunk {part} ({problem}): rewriting it", file=sys.stderr)
    part.unlink()
    return None


class _ShardWork:
    """One shard of one set being written: its chunks still to do, their commits and progress bar, and
    the join that marks it done."""

    def __init__(self, job: Job, shard: int, engine: Engine, progress: bool, read: Callable = plan.iter_shard,
                 retry_failed: bool = False):
        from tqdm import tqdm

        self.w, self.config, self.shard, self.engine = job.w, job.config, shard, engine
        self.parts = self.w.parts(self.config.source, shard)
        self.parts.mkdir(parents=True, exist_ok=True)
        # The retry round the shard is on its way to (rows.py): its parts' target, or the next with --retry-failed.
        self.round = max([part.target for part in done.parts(self.w, self.config.source, shard)] + [int(retry_failed)])
        self.attempts = (self.round + 1) * self.config.max_attempts  # what a rewrite may use, all rounds together
        self.waiting: dict[int, int] = {}  # chunk -> its rows waiting for the engine, as this run committed it
        # Temporary files of a writer killed half-way through a commit (never read: commits are renames).
        for leftover in [*self.parts.glob(".*.tmp"),
                         *self.w.rewrites(self.config.source).glob(f".{layout.shard_id(shard)}.*.tmp")]:
            leftover.unlink(missing_ok=True)
        self.bar = tqdm(total=job.manifest.shard_rows(shard), unit="caption",
                        desc=f"{self.config.source} {layout.shard_id(shard)}", disable=not progress,
                        dynamic_ncols=True, file=sys.stderr)
        self.chunk_stats: dict[int, dict] = {}
        self.committed: dict[int, pa.Table] = {}  # the chunks this run commits, kept for the shard's file
        self.schema = schema(self.config.num_rewrites)
        self.bar_lock = threading.Lock()
        self.todo = _ChunksToDo(job.manifest, shard, self.config, self.parts, self.committed_before, read, self.round)

    def committed_before(self, index: int, stats: dict, rows: int) -> None:
        """A chunk an earlier run committed (the builder finds it while the writer may be committing)."""
        with self.bar_lock:
            self.chunk_stats[index] = stats
            _show(self.bar, self.chunk_stats, rows)

    def commit(self, index: int, result: pa.Table, stats: dict, pending: Sequence[Sequence[int]] = ()) -> None:
        """Commit a chunk's rows with its stats and its rewrites waiting for the engine (rows.columns)."""
        faults.point("generated")
        part = done.Part(stats, self.round, self.round, tuple(map(tuple, pending)))
        _write_part(self.parts / f"{index:05d}.parquet", result, part)
        with self.bar_lock:
            self.committed[index] = result
            self.chunk_stats[index] = stats
            self.waiting[index] = part.waiting_rows
            _show(self.bar, self.chunk_stats, stats["rows"])

    def finish(self) -> dict | None:
        """Join the shard and mark it done: its stats. None while rows of it wait for the engine: it stays
        committed chunks, for a rerun to take up."""
        self.bar.close()
        if any(self.waiting.values()):
            return None
        return _finish_shard(self.w, self.config, self.shard, self.engine,
                             [self.chunk_stats[i] for i in range(len(self.chunk_stats))], self.committed,
                             self.todo.duplicate_keys, self.round)


def _run_chunked(job: Job, shard: int, engine: Engine, *, progress: bool, schedule: Schedule,
                 read: Callable = plan.iter_shard, retry_failed: bool = False) -> dict | None:
    """Rewrite a shard's chunks not committed yet (and those taken up again) a chunk at a time
    (`rewrite_chunk`), then join its parts. `read(manifest, shard, chunk_rows)` gives the shard's (key,
    caption) chunks. Returns the shard's stats; None when rows of it wait for the engine, or the engine
    gave up on its server (no chunk is taken after the one it gave up in)."""
    work = _ShardWork(job, shard, engine, progress, read, retry_failed)
    for index, table in work.todo:
        stop.check()  # asked to stop: take no new chunk
        with stop.deferred():  # a stop request waits for this chunk's commit
            started = time.perf_counter()
            reopened = work.todo.reopened.pop(index, None)
            result, stats, pending = rewrite_chunk(table, job.config, job.meta_set, job.template, engine, schedule,
                                                   reopened, work.attempts)
            stats["seconds"] = time.perf_counter() - started
            work.commit(index, result, rows.reopened_stats(reopened, stats) if reopened else stats, pending)
        if engine_base.gave_up(engine):
            work.bar.close()
            return None
    return work.finish()


class _ChunksToDo:
    """The shard's chunks in order, reading each once: a chunk an earlier run committed is handed to
    `committed_before(index, stats, rows)`, unless this run takes it up again (rows.reopen: rewrites
    waiting for the engine, or failed ones of a round before `round_`): its `rows.Reopened` then goes to
    `reopened[index]`, and it is yielded with the chunks to do, as (index, table). Counts the keys seen
    more than once (`duplicate_keys`)."""

    def __init__(self, manifest, shard, config, parts, committed_before, read=plan.iter_shard, round_=0):
        self.manifest, self.shard, self.config, self.parts = manifest, shard, config, parts
        self.committed_before, self.read, self.round = committed_before, read, round_
        self.duplicate_keys = 0
        self.reopened: dict[int, rows.Reopened] = {}

    def __iter__(self) -> Iterator[tuple[int, pa.Table]]:
        keys_seen: set[int] = set()
        config = self.config
        for index, table in enumerate(self.read(self.manifest, self.shard, config.chunk_rows)):
            keys = table.column(layout.KEY).to_pylist()
            for key in keys:
                if hash(key) in keys_seen:
                    if not self.duplicate_keys:
                        print(f"{config.source} shard {layout.shard_id(self.shard)}: key {key!r} appears more than "
                              "once; rows are matched by position, so each keeps its own rewrite", file=sys.stderr)
                    self.duplicate_keys += 1
                keys_seen.add(hash(key))
            found = _committed_part(self.parts / f"{index:05d}.parquet", table)
            if found is not None:  # committed by an earlier run
                part, committed = found
                identity = rows.identities(keys, table.column(layout.CAPTION).to_pylist(), config.dedup)
                reopened = rows.reopen(committed, part.stats, part.pending, part.round, self.round, identity,
                                       config.num_rewrites, config.max_attempts)
                if reopened is None:
                    self.committed_before(index, part.stats, table.num_rows)
                    continue
                self.reopened[index] = reopened
            yield index, table


def _show(bar, chunk_stats: dict, rows_done: int) -> None:
    bar.update(rows_done)
    secs = sum(s["seconds"] for s in chunk_stats.values())
    bar.set_postfix(ok=sum(s["ok"] for s in chunk_stats.values()), failed=sum(s["failed"] for s in chunk_stats.values()),
                    captions_s=f"{sum(s['rows'] for s in chunk_stats.values()) / secs:.2f}" if secs else "-")


def _finish_shard(w: layout.Work, config: RunConfig, shard: int, engine: Engine, chunk_stats: list[dict],
                  committed: dict[int, pa.Table], duplicate_keys: int, round_: int = 0) -> dict:
    """Join the shard's parts into its rewrite file and write its stats, last: the shard is done (with
    the retry round its failed rows reached, `round_`). The parts this process committed come from
    `committed` (reading them back cost as long as the rest of the join); those of an earlier run are
    read."""
    parts = w.parts(config.source, shard)
    with stop.deferred():
        final = w.rewrite_file(config.source, shard)
        with atomic.atomic_path(final) as tmp, pq.ParquetWriter(tmp, schema(config.num_rewrites)) as writer:
            # Row groups of a fixed size, so the file's bytes do not depend on the chunk size either.
            tables = (committed[i] if i in committed else pq.read_table(parts / f"{i:05d}.parquet").replace_schema_metadata(None)
                      for i in range(len(chunk_stats)))
            for table in plan.rechunk(tables, ROW_GROUP_ROWS):
                writer.write_table(table)
        stats = merge_stats(chunk_stats)
        stats.update(shard=shard, source=config.source, engine=engine.describe(), duplicate_keys=duplicate_keys,
                     settings={**asdict(config), "sampling": config.sampling.to_dict()})
        if round_:
            stats[done.ROUND_KEY] = round_
        stats = done.mark_done(w, config.source, shard, stats)  # written last: the shard is done
        shutil.rmtree(parts, ignore_errors=True)
    return stats


def merge_stats(chunks: Iterable[dict]) -> dict:
    """Sum per-chunk stats (counts add up; captions/s is recomputed)."""
    total: dict = {"rows": 0, "unique_captions": 0, "requests": 0, "ok": 0, "failed": 0, "skipped": 0,
                   "prompt_tokens": 0, "cached_prompt_tokens": 0, "generated_tokens": 0, "captions_cut": 0,
                   "seconds": 0.0,
                   "rejected": {}, "failed_reasons": {}}
    for c in chunks:
        for k, v in c.items():
            if isinstance(v, dict):
                total[k] = dict(Counter(total.get(k, {})) + Counter(v))
            else:
                total[k] = total.get(k, 0) + v
    total["captions_per_s"] = round(total["rows"] / total["seconds"], 3) if total["seconds"] else None
    total["seconds"] = round(total["seconds"], 3)
    return total


def prompting(config: RunConfig, meta_set: meta.MetaSet, template: prompt.Template, engine: Engine) -> rows.Prompting:
    return rows.Prompting(config.source, config.seed, config.example_sets, config.num_examples,
                          config.max_caption_tokens, meta_set, template, engine.encode, engine.decode,
                          engine.context_length - config.sampling.max_new_tokens,
                          engine.chat_prompt if template.chat else None, config.min_faithfulness)


def rewrite_chunk(
    table: pa.Table, config: RunConfig, meta_set: meta.MetaSet, template: prompt.Template, engine: Engine,
    schedule: Schedule = Schedule(), reopened: rows.Reopened | None = None, attempts: int | None = None,
) -> tuple[pa.Table, dict, list[list[int]]]:
    """Rewrite one chunk of (key, caption) rows at once: one `generate` call per attempt, the rejected
    rows again in the next (the scheduler before streaming, kept to compare against). A reopened chunk
    requests only its rewrites to redo, each from its own attempt, and keeps its other rows. `attempts`:
    what a rewrite may use (max_attempts per retry round of the shard). Returns the sidecar rows, the
    stats of this run's work on the chunk and its rewrites waiting for the engine (rows.columns): once
    the engine gives up on its server, those it has not served wait, unsent."""
    keys = table.column(layout.KEY).to_pylist()
    captions = table.column(layout.CAPTION).to_pylist()
    n = config.num_rewrites
    attempts = attempts or config.max_attempts
    ask = prompting(config, meta_set, template, engine)
    identity = rows.identities(keys, captions, config.dedup)
    unique = rows.unique_captions(identity, captions)
    pending = dict(reopened.redo) if reopened else {(ident, i): 0 for ident in unique for i in range(n)}  # -> attempt
    fitted = {ident: ask.caption(unique[ident]) for ident, _ in pending}
    cut_items = {(ident, i) for (ident, i), attempt in pending.items()
                 if fitted[ident][1] or ask.cut_before(ident, fitted[ident][0], i, attempt)}
    results: dict[tuple[str, int], rows.Result] = {}
    waiting: dict[tuple[str, int], int] = {}  # -> the attempt a rewrite the engine could not serve resumes at
    stats = rows.chunk_stats(len(keys), len(unique))
    rejected: Counter = Counter()
    failed_reasons: Counter = Counter()
    engine_errors: Counter = Counter()
    while pending:
        cells = list(pending.items())
        requests, targets = [], []
        for (ident, i), attempt in cells:
            request, tgts, cut = ask.request(ident, fitted[ident][0], i, attempt)
            if cut:
                cut_items.add((ident, i))
            requests.append(request)
            targets.append(tgts)
        order = rows.schedule_order([r.prompt for r in requests], [r.group for r in requests], schedule)
        completions: list = [None] * len(requests)  # None: not sent, the engine gave up before its batch
        # Rows whose caption was cut go to the engine on their own: they never widen a batch for the others.
        for batch in ([j for j in order if cells[j][0] not in cut_items], [j for j in order if cells[j][0] in cut_items]):
            if batch and not engine_base.gave_up(engine):
                for j, comp in zip(batch, engine.generate([requests[j] for j in batch], config.sampling)):
                    completions[j] = comp
        pending = {}
        for ((ident, i), attempt), tgts, comp in zip(cells, targets, completions):
            comp = comp or engine.outage.unsent()
            rows.count(stats, comp)
            rows.note_error(engine_errors, comp)
            text, reason = rows.judge(comp, fitted[ident][0], tgts, ask.min_faithfulness)
            if reason is not None and comp.sent:
                rejected[reason] += 1
            result = rows.final(text, reason, attempt, attempts, (ident, i) in cut_items)
            if result is None and engine_base.gave_up(engine):  # its next attempt waits for a later run, unsent
                attempt, reason = attempt + 1, validate.ENGINE_UNAVAILABLE
                result = rows.final("", reason, attempt, attempts, False)
            if result is None:
                pending[ident, i] = attempt + 1
                continue
            results[ident, i] = result
            if reason is not None:
                failed_reasons[reason] += 1
            if reason == validate.ENGINE_UNAVAILABLE:
                waiting[ident, i] = attempt
    table, counts, pending_cells = rows.columns(keys, identity, results, n, schema(n), waiting, reopened)
    stats.update(counts, captions_cut=sum(ident in {ident for ident, _ in cut_items} for ident in identity),
                 rejected=dict(rejected), failed_reasons=dict(failed_reasons))
    if engine_errors:
        stats["engine_errors"] = dict(engine_errors)
    return table, stats, pending_cells
