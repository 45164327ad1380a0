"""One shard of one set being written: its chunks still to do (resumed from the parts a run committed),
each rewritten a chunk at a time with retry rounds (the chunked scheduler: `rewrite_chunk`) or handed to
the stream (scheduler.py), committed as a part, and the join of the parts that marks the shard done
(its stats json written last)."""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from typing import Callable, Iterable, Iterator, Sequence

import pyarrow as pa

from .. import faults, meta, stop, storage
from ..workdir import atomic, done, layout
from ..rewriting import prompt
from ..inputs import plan
from . import checkpoint, rows
from .config import PreparedSet, RunConfig
from ..rewriting import validate
from ..engines import base as engine_base
from ..engines.base import Engine
from ..defaults import Schedule


STATS_KEY = done.STATS_KEY


ROW_GROUP_ROWS = 8192


def schema(num_rewrites: int) -> pa.Schema:
    fields = [pa.field(layout.KEY, pa.string())]
    for i in range(num_rewrites):
        fields += [
            pa.field(layout.rewrite_column(i, num_rewrites), pa.string()),
            pa.field(layout.suffixed(layout.STATUS, i, num_rewrites), pa.string()),
            pa.field(layout.suffixed(layout.REASON, i, num_rewrites), pa.string()),
        ]
    return pa.schema(fields)


class ShardWork:
    """One shard of one set being written: its chunks still to do, their commits and progress bar, and
    the join that marks it done."""

    def __init__(self, job: PreparedSet, shard: int, engine: Engine, progress: bool, read: Callable = plan.iter_shard,
                 retry_failed: bool = False):
        from tqdm import tqdm

        self.w, self.config, self.shard, self.engine = job.w, job.config, shard, engine
        self.parts = self.w.parts(self.config.source, shard)
        storage.make_dirs(self.parts)
        # The retry round the shard is on its way to (rows.py): its parts' target, or the next with --retry-failed.
        self.round = max([part.target for part in done.parts(self.w, self.config.source, shard)] + [int(retry_failed)])
        self.attempts = (self.round + 1) * self.config.max_attempts  # what a rewrite may use, all rounds together
        self.waiting: dict[int, int] = {}  # chunk -> its rows waiting for the engine, as this run committed it
        # Temporary files of a writer killed half-way through a commit (never read: commits are renames).
        for leftover in [*storage.glob(self.parts, ".*.tmp"),
                         *storage.glob(self.w.rewrites(self.config.source), f".{layout.shard_id(shard)}.*.tmp")]:
            storage.remove(leftover)
        self.bar = tqdm(total=job.manifest.shard_rows(shard), unit="caption",
                        desc=f"{self.config.source} {layout.shard_id(shard)}", disable=not progress,
                        dynamic_ncols=True, file=sys.stderr)
        self.chunk_stats: dict[int, dict] = {}
        self.committed: dict[int, pa.Table] = {}  # the chunks this run commits, kept for the shard's file
        self.schema = schema(self.config.num_rewrites)
        self.bar_lock = threading.Lock()
        self.todo = ChunksToDo(job.manifest, shard, self.config, self.parts, self.committed_before, read, self.round)

    def committed_before(self, index: int, stats: dict, rows: int) -> None:
        """A chunk an earlier run committed (the builder finds it while the writer may be committing)."""
        with self.bar_lock:
            self.chunk_stats[index] = stats
            _show(self.bar, self.chunk_stats, rows)

    def commit(self, index: int, result: pa.Table, stats: dict, pending: Sequence[Sequence[int]] = ()) -> None:
        """Commit a chunk's rows with its stats and its rewrites waiting for the engine (rows.columns)."""
        faults.point("generated")
        part = done.Part(stats, self.round, self.round, tuple(map(tuple, pending)))
        checkpoint.write_part(self.parts / f"{index:05d}.parquet", result, part)
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


def run_chunked(job: PreparedSet, shard: int, engine: Engine, *, progress: bool, schedule: Schedule,
                 read: Callable = plan.iter_shard, retry_failed: bool = False) -> dict | None:
    """Rewrite a shard's chunks not committed yet (and those taken up again) a chunk at a time
    (`rewrite_chunk`), then join its parts. `read(manifest, shard, chunk_rows)` gives the shard's (key,
    caption) chunks. Returns the shard's stats; None when rows of it wait for the engine, or the engine
    gave up on its server (no chunk is taken after the one it gave up in)."""
    work = ShardWork(job, shard, engine, progress, read, retry_failed)
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


class ChunksToDo:
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
            found = checkpoint.committed_part(self.parts / f"{index:05d}.parquet", table)
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
        with atomic.atomic_path(final) as tmp, storage.open_file(tmp, "wb") as raw:
            written = atomic.Digest(raw)  # the done marker records its sha256: taken as it is written
            with storage.parquet_writer(written, schema(config.num_rewrites)) as writer:
                # Row groups of a fixed size, so the file's bytes do not depend on the chunk size either.
                tables = (committed[i] if i in committed
                          else storage.read_parquet(parts / f"{i:05d}.parquet").replace_schema_metadata(None)
                          for i in range(len(chunk_stats)))
                rows = 0
                for table in plan.rechunk(tables, ROW_GROUP_ROWS):
                    writer.write_table(table)
                    rows += table.num_rows
        stats = merge_stats(chunk_stats)
        stats.update(shard=shard, source=config.source, engine=engine.describe(), duplicate_keys=duplicate_keys,
                     settings={**asdict(config), "sampling": config.sampling.to_dict()})
        if round_:
            stats[done.ROUND_KEY] = round_
        facts = {"name": final.name, "bytes": written.size, "rows": rows, "sha256": written.hexdigest()}
        stats = done.mark_done(w, config.source, shard, stats, facts)  # written last: the shard is done
        done.drop_parts(w, config.source, shard)
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
    return unchecked(config, meta_set, template, engine).checked()


def unchecked(config: RunConfig, meta_set: meta.MetaSet, template: prompt.Template, engine: Engine) -> rows.Prompting:
    """The set's Prompting before the pieces check (`Prompting.checked`): each prompt tokenized whole."""
    encode_many = getattr(engine, "encode_many", None)  # a test's wrapper may lack it
    return rows.Prompting(config.source, config.seed, config.example_sets, config.num_examples,
                          config.max_caption_tokens, meta_set, template, engine.encode, engine.decode,
                          engine.context_length - config.sampling.max_new_tokens,
                          engine.chat_prompt if template.chat else None, config.min_faithfulness, encode_many)


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
    needed = list(dict.fromkeys(ident for ident, _ in pending))
    fitted = dict(zip(needed, ask.captions([unique[ident] for ident in needed])))
    cut_items = {(ident, i) for (ident, i), attempt in pending.items()
                 if fitted[ident][2] or ask.cut_before(ident, fitted[ident], i, attempt)}
    results: dict[tuple[str, int], rows.Result] = {}
    waiting: dict[tuple[str, int], int] = {}  # -> the attempt a rewrite the engine could not serve resumes at
    stats = rows.chunk_stats(len(keys), len(unique))
    rejected: Counter = Counter()
    failed_reasons: Counter = Counter()
    engine_errors: Counter = Counter()
    while pending:
        cells = list(pending.items())
        requests, targets = [], []
        made = ask.requests([(ident, fitted[ident], i, attempt) for (ident, i), attempt in cells])
        for ((ident, i), _), (request, tgts, cut) in zip(cells, made):
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
