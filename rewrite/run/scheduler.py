"""The streaming scheduler: keeps an engine fed from a task's shards without barriers.

One stream runs a task's units (a unit is one shard of one meta set) one after the other with no drain
between them: the next shard's requests join the engine's batch while the last rows of the one before
are still decoding, and a shard is joined and marked done off the engine's path. Four threads share
the work, so that the engine never waits for Python work of ours:
- a builder starts units and reads their chunks, turning each (caption, rewrite index) into a request,
  running ahead of the engine by at most `open_chunks` chunks (memory, and the work a kill can lose,
  stay bounded);
- an engine thread runs the engine's stream (engines.base.stream), pulling requests when it has room;
- the caller's thread judges each completion as it comes (so signals reach it), and a rejected one
  goes straight back into the stream as its next attempt, ahead of new work;
- a writer commits a chunk (rows.columns, then its unit's `commit`) as soon as its last row is final,
  in whatever order chunks finish, and finishes a unit once its chunks are all committed, so the
  engine never waits for a commit or a shard's assembly.

Dedup spans the unit: a caption already requested by an open chunk is not requested again, and one
already rewritten is answered from the unit's results. A row's rewrite depends only on (seed, set,
identity, index, attempt), as with a chunk at a time, so the output does not depend on this schedule.

A request the engine could not serve is final for this run (its rows wait for the next: rows.reopen);
once the engine gives up on its server (engines.base.Outage), the builder opens no new chunk, the
requests queued are answered unsent by the engine, and the open chunks are committed.

One concern: the four threads' hand-offs around one engine stream (what each waits for, what it hands
on, how a stop or an error ends them all); what a request, a verdict or a chunk's columns are is
rows.py's, and where they are made (here or in builders' processes) builders.py's.
"""
from __future__ import annotations

import contextlib
import gc
import queue
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from ..workdir import layout
from . import rows
from .. import stop
from ..rewriting import prompt, validate
from .builders import Builders
from ..engines import base as engines
from ..defaults import Sampling, Schedule

_END = object()
SLICE = 256  # requests built, ordered and queued together: the engine gets a big chunk's first ones early
FIRST_SLICE = 16  # the slice built while the engine has nothing at all (the run's start): it starts sooner,
# and the slices after it double up to SLICE, so that the engine fills as fast as requests are built
# Seconds a thread holds the GIL while another waits for it (Python's default is 5 ms): the engine's
# thread, back from a step, would wait up to that long for the builder or the judge (a GPU step is 2-20 ms).
SWITCH_INTERVAL = 0.0001
JUDGE_BATCH = 256  # completions judged together (their CLIP tokens counted in one call)
ABORT_WAIT = 10.0  # seconds a stopped run waits for its threads (the engine's current step, a commit)


@dataclass(eq=False)
class Unit:
    """One shard of one meta set in a stream: its chunks to do, how its requests are built and judged,
    and what becomes of its results (`commit` each chunk's columns, stats and rewrites waiting for the
    engine; `finish` once every chunk is committed, in the writer thread). Its results and dedup are its
    own. A chunk an earlier run committed and this one takes up again has its `rows.Reopened` in
    `reopened` by the time `chunks` yields it."""

    asking: Future  # its set's rows.Prompting (shared by the set's units), made beside the builder's work (see `ask`)
    unchecked: rows.Unchecked  # its set's before the pieces check: first requests made while `asking` runs
    chunks: Iterable[tuple[int, pa.Table]]
    commit: Callable[[int, pa.Table, dict, list], None]
    finish: Callable[[], None]
    num_rewrites: int
    attempts: int  # what a rewrite may use (max_attempts per retry round of the shard: rows.final)
    dedup: bool
    schema: pa.Schema
    reopened: dict = field(default_factory=dict)  # chunk index -> rows.Reopened
    items: dict = field(default_factory=dict)  # (identity, index) -> _Item in progress
    results: dict = field(default_factory=dict)  # (identity, index) -> rows.Result, final
    waiting: dict = field(default_factory=dict)  # (identity, index) -> attempt to resume at, of a result waiting for the engine
    cut_idents: set = field(default_factory=set)  # identities with a rewrite whose caption was cut
    uncommitted: int = 0  # chunks opened and not committed yet
    all_opened: bool = False  # the builder has opened its last chunk

    @cached_property
    def ask(self) -> rows.Prompting:
        """How the unit's requests are made, once made. Making it checks prompt ids from pieces against
        whole prompts (prompt.assemble: ~0.02-0.03 s for a set, the tokenizer's Rust work without the
        GIL), so it runs beside the first chunk's read; the first requests do not wait for it where they
        are the same whichever way it goes (`Stream._first_requests`)."""
        return self.asking.result()


@dataclass(eq=False)
class _Chunk:
    unit: Unit
    index: int
    keys: list
    identity: list
    stats: dict
    reopened: rows.Reopened | None = None  # committed by an earlier run: only its `redo` rewrites are requested
    waiting: set = field(default_factory=set)  # (identity, index) pairs not final yet
    rejected: Counter = field(default_factory=Counter)
    failed_reasons: Counter = field(default_factory=Counter)
    engine_errors: Counter = field(default_factory=Counter)


@dataclass(eq=False)
class _Item:
    """One (identity, rewrite index) of a unit being rewritten: its caption as prompts take it, its
    attempt, the chunk that asked first (its stats count the requests; its unit is the item's) and
    every chunk waiting for it."""

    ident: str
    index: int
    owner: _Chunk
    caption: prompt.Fitted = ("", [], False)
    cut: bool = False  # the caption was cut (to its cap, or to fit a prompt)
    attempt: int = 0
    targets: list = field(default_factory=list)
    waiters: list = field(default_factory=list)


class Stream:
    """One engine stream over a sequence of units; `run(units)` returns once every unit's chunks are
    committed and the complete units finished, or the builder stopped on a stop request: then the open
    chunks are committed first, and a unit is finished only if the builder had seen its chunks end
    (else the next run joins it from its committed chunks)."""

    def __init__(self, engine, sampling: Sampling, schedule: Schedule, builders: Builders | None = None):
        self.engine, self.sampling, self.schedule = engine, sampling, schedule
        self.builders = builders  # worker processes that build requests and judge (builders.py); None: in here
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # notified when work for the engine comes, or is judged
        self.fresh: deque = deque()  # (item, request) of first attempts, in the builder's order
        self.fresh_ended = False  # the builder will add no more
        self.retries: deque = deque()  # (item, request) of later attempts: they go first
        self.unjudged = 0  # completions out of the engine, not judged yet (each may become a retry)
        self.completed: queue.SimpleQueue = queue.SimpleQueue()  # (item, completion) for the judge; _END at the end
        self.writes: queue.Queue = queue.Queue()  # completed chunks and complete units; _END to end the writer
        self.slots = threading.BoundedSemaphore(schedule.open_chunks)
        self.sent: dict[int, _Item] = {}  # in the engine, by stream position
        self.slice = FIRST_SLICE  # requests the builder queues next (see FIRST_SLICE)
        self.failure: BaseException | None = None
        self.aborted = threading.Event()
        self.last_done = time.perf_counter()

    def run(self, units: Iterable[Unit]) -> None:
        with _threads_kept_moving():
            self._run(units)

    def _run(self, units: Iterable[Unit]) -> None:
        threads = [threading.Thread(target=self._build, args=(iter(units),), name="rewrite-builder", daemon=True),
                   threading.Thread(target=self._drive, name="rewrite-engine", daemon=True),
                   threading.Thread(target=self._write, name="rewrite-writer", daemon=True)]
        for thread in threads:
            thread.start()
        try:
            while batch := self._completions():
                judged = [(completion, item.caption[0], item.targets, item.owner.unit.ask.min_faithfulness)
                          for item, completion in batch]
                verdicts = self.builders.judge(judged).result() if self._workers() else rows.judge_many(judged)
                again, final = [], []
                for (item, completion), (text, reason) in zip(batch, verdicts):
                    result = self._judge(item, completion, text, reason)
                    again.append(item) if result is None else final.append((item, result, reason))
                if final:
                    self._settle(final)
                if again:
                    self._retry(again)
        except BaseException:
            self._abort()
            raise
        finally:
            self.writes.put(_END)
            try:
                for thread in threads:  # after an abort, the engine ends its stream at its next completion
                    thread.join(timeout=None if not self.aborted.is_set() else ABORT_WAIT)
            except BaseException:  # a stop's deadline or second signal while waiting: the writer takes no more
                self._abort()
                raise
        if self.failure is not None:
            raise self.failure

    def _workers(self) -> bool:
        """Whether the builders' worker processes take the work now (they start while the stream runs)."""
        return self.builders is not None and self.builders.ready()

    def _abort(self) -> None:
        self.aborted.set()
        with self.ready:
            self.ready.notify_all()

    def _fail(self, error: BaseException) -> None:
        """An error in another thread: kept for the caller's thread, which raises it."""
        if self.failure is None:
            self.failure = error
        self._abort()

    # -- builder thread ------------------------------------------------------------------------------

    def _taking_no_more(self) -> bool:
        """Aborted, asked to stop, or the engine gave up: no new unit or chunk is started."""
        return self.aborted.is_set() or stop.requested() or engines.gave_up(self.engine)

    def _build(self, units: Iterator[Unit]) -> None:
        try:
            while not self._taking_no_more():
                unit = next(units, None)  # starting a unit (its lock, its chunks' first read) happens here
                if unit is None or not self._open_chunks(unit):
                    return
                with self.lock:
                    unit.all_opened = True
                    if not unit.uncommitted:  # nothing to do, or every chunk committed already
                        self.writes.put(unit)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._fail(e)
        finally:
            with self.ready:
                self.fresh_ended = True
                self.ready.notify_all()

    def _open_chunks(self, unit: Unit) -> bool:
        """Open each of the unit's chunks as a slot frees up (a chunk is read only then: memory holds at
        most `open_chunks`); False when asked to stop (or aborted)."""
        chunks = iter(unit.chunks)
        while True:
            while not self.slots.acquire(timeout=0.1):
                if self.aborted.is_set():
                    return False
            if self._taking_no_more():
                self.slots.release()
                return False
            chunk = next(chunks, None)
            if chunk is None:
                self.slots.release()
                return True
            self._open(unit, *chunk)

    def _open(self, unit: Unit, index: int, table: pa.Table) -> None:
        """Register a chunk's rows, then queue the first attempts it needs."""
        new, unique = self._register(unit, index, table)
        self._queue_first(unit, new, unique)

    def _register(self, unit: Unit, index: int, table: pa.Table) -> tuple[list[_Item], dict[str, str]]:
        """A chunk's rows in its unit: each (identity, index) new to the unit becomes an item (of a
        reopened chunk, those it redoes, each at the attempt it resumes at), and the chunk waits for
        each of its own. The new items, and the chunk's captions by identity."""
        keys = table.column(layout.KEY).to_pylist()
        captions = table.column(layout.CAPTION).to_pylist()
        identity = rows.identities(keys, captions, unit.dedup)
        unique = rows.unique_captions(identity, captions)
        reopened = unit.reopened.pop(index, None)
        chunk = _Chunk(unit, index, keys, identity, rows.chunk_stats(len(keys), len(unique)), reopened)
        new: list[_Item] = []
        with self.lock:
            unit.uncommitted += 1
            for ident in unique:
                for i in range(unit.num_rewrites):
                    if (ident, i) in unit.results or (reopened is not None and (ident, i) not in reopened.redo):
                        continue
                    item = unit.items.get((ident, i))
                    if item is None:
                        start = reopened.redo[ident, i] if reopened is not None else 0
                        item = unit.items[ident, i] = _Item(ident, i, chunk, attempt=start)
                        new.append(item)
                    item.waiters.append(chunk)
                    chunk.waiting.add((ident, i))
            if not chunk.waiting:  # every row was answered by earlier chunks (or has no caption)
                self._complete(chunk)
        return new, unique

    def _queue_first(self, unit: Unit, new: list[_Item], unique: dict[str, str]) -> None:
        """Build the first requests of `new` in slices (see FIRST_SLICE), outside the lock: tokenizing
        is the slow part; each slice is queued in schedule order as it is built."""
        start = 0
        while start < len(new):
            if not (self.fresh or self.sent):
                self.slice = FIRST_SLICE
            size = self.slice
            if unit.asking.done():  # (while the pieces check runs, requests are made slower: their slices stay small)
                self.slice = min(SLICE, 2 * self.slice)
            items = new[start:start + size]
            made = self._first_requests(unit, [(item.ident, unique[item.ident], item.index, item.attempt) for item in items])
            built = []
            for item, (caption, cut_before, request) in zip(items, made):
                item.caption, item.cut = caption, cut_before
                built.append((item, self._made(item, request)))
            order = schedule_order(built, self.schedule)
            with self.ready:
                self.fresh.extend(built[j] for j in order)
                self.ready.notify_all()
            start += size

    def _first_requests(self, unit: Unit, jobs: list[tuple[str, str, int, int]]) -> list[tuple[prompt.Fitted, bool, rows.Made]]:
        """rows.first_requests of `jobs`, by the builders' processes once they are up. While the unit's
        pieces check runs, the requests that are the same whichever way it goes are made without it
        (rows.first_requests_either_way: the run's first step comes ~0.01-0.02 s sooner); the others
        wait for it."""
        if self._workers():
            return self.builders.first_requests(unit.ask, jobs).result()
        if unit.asking.done():
            return rows.first_requests(unit.ask, jobs)
        early = rows.first_requests_either_way(unit.unchecked, jobs)
        waiting = [job for job, made in zip(jobs, early) if made is None]
        later = iter(rows.first_requests(unit.ask, waiting) if waiting else ())
        return [made if made is not None else next(later) for made in early]

    @staticmethod
    def _made(item: _Item, made: rows.Made):
        """The request of `made` (rows.Made) for `item`, its targets and cut noted on the item."""
        request, item.targets, cut = made
        item.cut = item.cut or cut
        if item.cut:
            item.owner.unit.cut_idents.add(item.ident)
        return request

    # -- engine thread: the stream, fed from the queues; completions go to the judge ---------------------

    def _drive(self) -> None:
        try:
            with contextlib.closing(engines.stream(self.engine, self._feed(), self.sampling)) as completions:
                self._take(completions)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._fail(e)
        finally:
            self.completed.put(_END)

    def _take(self, completions: Iterator) -> None:
        """Hand each completion to the judge; after an abort, close the stream at its next completion
        (the engine drops the rows it holds) rather than wait for its batch to end."""
        for position, completion in completions:
            if self.aborted.is_set():
                return
            with self.lock:
                item = self.sent.pop(position)
                self.unjudged += 1
            self.completed.put((item, completion))

    def _feed(self) -> Iterator:
        """Requests for the engine: retries first, then first attempts; None when nothing is ready while
        the engine holds work (it goes on decoding); a wait when it holds none. Ends once the builder
        has ended and every completion is judged with no retry left."""
        position = 0
        while True:
            with self.ready:
                while True:
                    if self.aborted.is_set():
                        return
                    if self.retries or self.fresh:
                        item, request = (self.retries or self.fresh).popleft()
                        self.sent[position] = item
                        break
                    if self.sent:
                        request = None
                        break
                    if self.fresh_ended and not self.unjudged:
                        return
                    self.ready.wait(1.0)
            if request is not None:
                position += 1
            yield request

    # -- the caller's thread: judging ------------------------------------------------------------------

    def _completions(self) -> list:
        """The completions waiting for the judge, at least one (waiting for it) and at most JUDGE_BATCH;
        empty once the stream has ended."""
        batch = []
        got = self.completed.get()
        while got is not _END:
            batch.append(got)
            if len(batch) == JUDGE_BATCH:
                return batch
            try:
                got = self.completed.get_nowait()
            except queue.Empty:
                return batch
        if batch:
            self.completed.put(_END)  # for the next call
        return batch

    def _judge(self, item: _Item, completion, text: str, reason: str | None) -> rows.Result | None:
        """A judged completion (`text` parsed from it, `reason` to reject it or None) in its chunk's
        stats: its final result, or None when it is to be tried again (its attempt counted on; it stays
        unjudged until `_retry` queues it)."""
        unit = item.owner.unit
        rows.count(item.owner.stats, completion)
        rows.note_error(item.owner.engine_errors, completion)
        if reason is not None and completion.sent:
            item.owner.rejected[reason] += 1
        result = rows.final(text, reason, item.attempt, unit.attempts, item.cut)
        if result is None:
            item.attempt += 1
        elif reason is not None:
            item.owner.failed_reasons[reason] += 1
        return result

    def _settle(self, final: list[tuple[_Item, rows.Result, str | None]]) -> None:
        """Final results into their units, and the chunks they complete to the writer: under one hold of
        the lock for a batch (a thread switched out while holding it would hold up the engine's)."""
        with self.ready:
            for item, result, reason in final:
                unit, key = item.owner.unit, (item.ident, item.index)
                unit.results[key] = result
                if reason == validate.ENGINE_UNAVAILABLE:
                    unit.waiting[key] = item.attempt
                del unit.items[key]
                for chunk in item.waiters:
                    chunk.waiting.discard(key)
                    if not chunk.waiting:
                        self._complete(chunk)
            self.unjudged -= len(final)
            self.ready.notify_all()

    def _retry(self, items: list[_Item]) -> None:
        """Queue the next attempt of each of `items` (rejected, not final), ahead of new work."""
        retries = []
        for unit in dict.fromkeys(item.owner.unit for item in items):
            mine = [item for item in items if item.owner.unit is unit]
            jobs = [(item.ident, item.caption, item.index, item.attempt) for item in mine]
            made = (self.builders.requests_again(unit.ask, jobs).result() if self._workers()
                    else rows.requests_again(unit.ask, jobs))
            retries += [(item, self._made(item, m)) for item, m in zip(mine, made)]
        with self.ready:
            self.retries.extend(retries)
            self.unjudged -= len(items)
            self.ready.notify_all()

    def _complete(self, chunk: _Chunk) -> None:
        """Hand a chunk whose rows are all final to the writer (under the lock)."""
        now = time.perf_counter()
        chunk.stats["seconds"] = now - self.last_done  # the chunks' seconds add up to the wall time
        self.last_done = now
        self.writes.put(chunk)

    # -- writer thread -------------------------------------------------------------------------------

    def _write(self) -> None:
        while (work := self.writes.get()) is not _END:  # a chunk, or a unit with no chunk left to commit
            try:
                if not self.aborted.is_set():
                    work.finish() if isinstance(work, Unit) else self._commit(work)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._fail(e)
            finally:
                if isinstance(work, _Chunk):
                    self.slots.release()

    def _commit(self, chunk: _Chunk) -> None:
        """Commit a chunk; its unit's last one finishes the unit (here, in the writer: off the engine's path)."""
        unit = chunk.unit
        unit.commit(chunk.index, *self._columns(chunk))
        with self.lock:
            unit.uncommitted -= 1
            complete = unit.all_opened and not unit.uncommitted
        if complete and not self.aborted.is_set():
            unit.finish()

    @staticmethod
    def _columns(chunk: _Chunk) -> tuple[pa.Table, dict, list]:
        """A chunk's rows, stats and rewrites waiting for the engine, for its unit's `commit`."""
        unit = chunk.unit
        table, counts, pending = rows.columns(chunk.keys, chunk.identity, unit.results, unit.num_rewrites, unit.schema,
                                              unit.waiting, chunk.reopened)
        stats = {**chunk.stats, **counts, "captions_cut": sum(ident in unit.cut_idents for ident in chunk.identity),
                 "rejected": dict(chunk.rejected), "failed_reasons": dict(chunk.failed_reasons)}
        if chunk.engine_errors:
            stats["engine_errors"] = dict(chunk.engine_errors)
        return table, rows.reopened_stats(chunk.reopened, stats) if chunk.reopened else stats, pending


@contextlib.contextmanager
def _threads_kept_moving() -> Iterator[None]:
    """While a stream runs: threads switch every SWITCH_INTERVAL, and the objects that exist when it
    starts (the engine's, the tokenizers', every module's: ~380,000 with the packaged model, millions
    with vLLM) are left out of Python's garbage collection (`gc.freeze`). A full collection scans them
    all holding the GIL, 0.2-0.3 s here, during which the engine gets no request; the stream's own
    objects are collected as before (vLLM's engine core does the same in its process). Both are as
    they were once it ends, unless something had frozen objects before: then what is frozen stays so."""
    switch, frozen_before = sys.getswitchinterval(), gc.get_freeze_count()
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()
        sys.setswitchinterval(switch)


def schedule_order(built: list, schedule: Schedule) -> list[int]:
    """The order a chunk's first attempts go to the engine: `rows.schedule_order`, with requests whose
    caption was cut last (they never sit in the middle of a batch of ordinary ones)."""
    requests = [request for _, request in built]
    ranked = rows.schedule_order([r.prompt for r in requests], [r.group for r in requests], schedule)
    return sorted(ranked, key=lambda j: built[j][0].cut)
