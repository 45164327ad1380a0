"""The streaming shard scheduler: keeps an engine fed from a shard's chunks without barriers.

Four threads share the work of a shard, so that the engine never waits for Python work of ours:
- a builder reads chunks and turns each (caption, rewrite index) into a request, running ahead of the
  engine by at most `open_chunks` chunks (memory, and the work a kill can lose, stay bounded);
- an engine thread runs the engine's stream (engines.base.stream), pulling requests when it has room;
- the caller's thread judges each completion as it comes (so signals reach it), and a rejected one
  goes straight back into the stream as its next attempt, ahead of new work;
- a writer commits a chunk (rows.columns, then `commit`) as soon as its last row is final, in whatever
  order chunks finish, so the engine never waits for a commit.

Dedup spans the shard: a caption already requested by an open chunk is not requested again, and one
already rewritten is answered from the shard's results. A row's rewrite depends only on (seed, set,
identity, index, attempt), as with a chunk at a time, so the output does not depend on this schedule.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from . import layout, rows, stop
from .engines import base as engines
from .settings import Sampling, Schedule

_END = object()
SLICE = 256  # requests built, ordered and queued together: the engine gets a big chunk's first ones early
FIRST_SLICE = 16  # the slice built while the engine has nothing at all (the run's start): it starts sooner,
# and the slices after it double up to SLICE, so that the engine fills as fast as requests are built
ABORT_WAIT = 10.0  # seconds a stopped run waits for its threads (the engine's current step, a commit)
MAX_ERROR_SAMPLES = 10  # distinct engine error messages kept in a chunk's stats


@dataclass(eq=False)
class _Chunk:
    index: int
    keys: list
    identity: list
    stats: dict
    waiting: set = field(default_factory=set)  # (identity, index) pairs not final yet
    rejected: Counter = field(default_factory=Counter)
    failed_reasons: Counter = field(default_factory=Counter)
    engine_errors: Counter = field(default_factory=Counter)


@dataclass(eq=False)
class _Item:
    """One (identity, rewrite index) being rewritten: its caption as prompts take it, its attempt, the
    chunk that asked first (its stats count the requests) and every chunk waiting for it."""

    ident: str
    index: int
    owner: _Chunk
    caption: str = ""
    cut: bool = False  # the caption was cut (to its cap, or to fit a prompt)
    attempt: int = 0
    targets: list = field(default_factory=list)
    waiters: list = field(default_factory=list)


class StreamingShard:
    """One shard's streaming run; `run(chunks)` returns once every chunk is committed, or the builder
    stopped on a stop request (then the open chunks are committed first)."""

    def __init__(self, ask: rows.Prompting, engine, sampling: Sampling, schedule: Schedule, *, num_rewrites: int,
                 max_attempts: int, dedup: bool, schema: pa.Schema, commit: Callable[[int, pa.Table, dict], None]):
        self.ask, self.engine, self.sampling, self.schedule = ask, engine, sampling, schedule
        self.n, self.max_attempts, self.dedup, self.schema, self.commit = num_rewrites, max_attempts, dedup, schema, commit
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # notified when work for the engine comes, or is judged
        self.fresh: deque = deque()  # (item, request) of first attempts, in the builder's order
        self.fresh_ended = False  # the builder will add no more
        self.retries: deque = deque()  # (item, request) of later attempts: they go first
        self.unjudged = 0  # completions out of the engine, not judged yet (each may become a retry)
        self.completed: queue.Queue = queue.Queue()  # (item, completion) for the judge; _END when the stream ends
        self.writes: queue.Queue = queue.Queue()  # completed chunks; _END to end the writer
        self.slots = threading.BoundedSemaphore(schedule.open_chunks)
        self.items: dict[tuple[str, int], _Item] = {}  # in progress
        self.results: dict[tuple[str, int], rows.Result] = {}  # final, for the whole shard
        self.sent: dict[int, _Item] = {}  # in the engine, by stream position
        self.slice = FIRST_SLICE  # requests the builder queues next (see FIRST_SLICE)
        self.cut_idents: set[str] = set()  # identities with a rewrite whose caption was cut
        self.failure: BaseException | None = None
        self.aborted = threading.Event()
        self.last_done = time.perf_counter()

    def run(self, chunks: Iterable[tuple[int, pa.Table]]) -> None:
        threads = [threading.Thread(target=self._build, args=(iter(chunks),), name="rewrite-builder", daemon=True),
                   threading.Thread(target=self._drive, name="rewrite-engine", daemon=True),
                   threading.Thread(target=self._write, name="rewrite-writer", daemon=True)]
        for thread in threads:
            thread.start()
        try:
            while (got := self.completed.get()) is not _END:
                self._judge(*got)
        except BaseException:
            self._abort()
            raise
        finally:
            self.writes.put(_END)
            for thread in threads:  # after an abort, the engine ends its stream at its next completion
                thread.join(timeout=None if not self.aborted.is_set() else ABORT_WAIT)
        if self.failure is not None:
            raise self.failure

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

    def _build(self, chunks: Iterator[tuple[int, pa.Table]]) -> None:
        try:
            while True:
                while not self.slots.acquire(timeout=0.1):
                    if self.aborted.is_set():
                        return
                if self.aborted.is_set() or stop.requested():  # asked to stop: take no new chunk
                    self.slots.release()
                    return
                chunk = next(chunks, None)
                if chunk is None:
                    self.slots.release()
                    return
                self._open(*chunk)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._fail(e)
        finally:
            with self.ready:
                self.fresh_ended = True
                self.ready.notify_all()

    def _open(self, index: int, table: pa.Table) -> None:
        """Register a chunk's rows, then queue the first attempt of each (identity, index) new to the shard."""
        keys = table.column(layout.KEY).to_pylist()
        captions = table.column(layout.CAPTION).to_pylist()
        identity = rows.identities(keys, captions, self.dedup)
        unique = rows.unique_captions(identity, captions)
        chunk = _Chunk(index, keys, identity, rows.chunk_stats(len(keys), len(unique)))
        new: list[_Item] = []
        with self.lock:
            for ident in unique:
                for i in range(self.n):
                    if (ident, i) in self.results:
                        continue
                    item = self.items.get((ident, i))
                    if item is None:
                        item = self.items[ident, i] = _Item(ident, i, chunk)
                        new.append(item)
                    item.waiters.append(chunk)
                    chunk.waiting.add((ident, i))
        with self.lock:
            if not chunk.waiting:  # every row was answered by earlier chunks (or has no caption)
                self._complete(chunk)
        fitted: dict[str, tuple[str, bool]] = {}
        start = 0
        while start < len(new):  # outside the lock: tokenizing is the slow part
            if not (self.fresh or self.sent):
                self.slice = FIRST_SLICE
            size, self.slice = self.slice, min(SLICE, 2 * self.slice)
            built = []
            for item in new[start:start + size]:
                if item.ident not in fitted:
                    fitted[item.ident] = self.ask.caption(unique[item.ident])
                item.caption, item.cut = fitted[item.ident]
                built.append((item, self._request(item)))
            order = schedule_order(built, self.schedule)
            with self.ready:
                self.fresh.extend(built[j] for j in order)
                self.ready.notify_all()
            start += size

    def _request(self, item: _Item):
        request, item.targets, cut = self.ask.request(item.ident, item.caption, item.index, item.attempt)
        item.cut = item.cut or cut
        if item.cut:
            self.cut_idents.add(item.ident)
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

    def _judge(self, item: _Item, completion) -> None:
        rows.count(item.owner.stats, completion)
        if completion.error and (completion.error in item.owner.engine_errors
                                 or len(item.owner.engine_errors) < MAX_ERROR_SAMPLES):
            item.owner.engine_errors[completion.error] += 1
        text, reason = rows.judge(completion, item.caption, item.targets, self.ask.min_faithfulness)
        if reason is not None:
            item.owner.rejected[reason] += 1
        result = rows.final(text, reason, item.attempt, self.max_attempts, item.cut)
        if result is None:
            item.attempt += 1
            retry = (item, self._request(item))
            with self.ready:
                self.retries.append(retry)
                self.unjudged -= 1
                self.ready.notify_all()
            return
        if reason is not None:
            item.owner.failed_reasons[reason] += 1
        with self.ready:
            self.unjudged -= 1
            self.ready.notify_all()
            key = (item.ident, item.index)
            self.results[key] = result
            del self.items[key]
            for chunk in item.waiters:
                chunk.waiting.discard(key)
                if not chunk.waiting:
                    self._complete(chunk)

    def _complete(self, chunk: _Chunk) -> None:
        """Hand a chunk whose rows are all final to the writer (under the lock)."""
        now = time.perf_counter()
        chunk.stats["seconds"] = now - self.last_done  # the chunks' seconds add up to the wall time
        self.last_done = now
        self.writes.put(chunk)

    # -- writer thread -------------------------------------------------------------------------------

    def _write(self) -> None:
        while (chunk := self.writes.get()) is not _END:
            try:
                if not self.aborted.is_set():
                    self.commit(chunk.index, *self._columns(chunk))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._fail(e)
            finally:
                self.slots.release()

    def _columns(self, chunk: _Chunk) -> tuple[pa.Table, dict]:
        table, ok, failed = rows.columns(chunk.keys, chunk.identity, self.results, self.n, self.schema)
        stats = {**chunk.stats, "ok": ok, "failed": failed, "skipped": sum(i is None for i in chunk.identity),
                 "captions_cut": sum(ident in self.cut_idents for ident in chunk.identity),
                 "rejected": dict(chunk.rejected), "failed_reasons": dict(chunk.failed_reasons)}
        if chunk.engine_errors:
            stats["engine_errors"] = dict(chunk.engine_errors)
        return table, stats


def schedule_order(built: list, schedule: Schedule) -> list[int]:
    """The order a chunk's first attempts go to the engine: `rows.schedule_order`, with requests whose
    caption was cut last (they never sit in the middle of a batch of ordinary ones)."""
    requests = [request for _, request in built]
    ranked = rows.schedule_order([r.prompt for r in requests], [r.group for r in requests], schedule)
    return sorted(ranked, key=lambda j: built[j][0].cut)
