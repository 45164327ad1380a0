"""The shard runner: read a shard in chunks, rewrite each chunk, commit it, then mark the shard done.

Per chunk: identical captions are rewritten once (dedup), every (caption, rewrite index) becomes a
request whose examples and seed are derived from what identifies it, completions are parsed and
checked, rejected ones are tried again, and the chunk is committed as a parquet part. When all parts
exist they are joined into WORK/rewrites/<source>/<shard>.parquet, and the stats json is written last.
A rerun skips done shards and resumes a partial one from its committed parts.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, atomic, clip_tokens, faults, layout, meta, plan, prompt, seeds, settings, stop, validate
from . import model as model_lib
from .lock import ShardLock
from .engines.base import Engine, Request
from .settings import Sampling, Schedule

STATS_KEY = b"rewrite.stats"
ROW_GROUP_ROWS = 8192
LEFTOVER_AGE = 600  # seconds after which a temporary settings file is taken for a killed writer's


class RunError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunConfig:
    """What defines the output of a run (with the engine's model)."""

    source: str
    seed: int = settings.SEED
    num_rewrites: int = settings.NUM_REWRITES
    num_examples: int = settings.NUM_EXAMPLES
    max_attempts: int = settings.MAX_ATTEMPTS
    chunk_rows: int = settings.CHUNK_ROWS
    dedup: bool = True
    example_sets: int = settings.EXAMPLE_SETS
    template: str = settings.TEMPLATE
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", meta.canonical_source(self.source))
        for name in ("num_rewrites", "num_examples", "max_attempts", "chunk_rows"):
            if getattr(self, name) < 1:
                raise RunError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.example_sets < 0:
            raise RunError(f"--example-sets must be >= 0, got {self.example_sets}")

    def fingerprint(self, meta_set: meta.MetaSet, template: prompt.Template, engine: Engine) -> dict:
        """Everything a resumed or appended run must share with the first one."""
        d = asdict(self)
        d.pop("chunk_rows")  # chunk size changes commits, not rewrites
        return {**d, "meta_digest": meta_set.digest(), "template_digest": template.digest,
                "engine": engine.describe()["engine"], "model": engine.model,
                "model_digest": model_lib.digest(engine.model)}


def schema(num_rewrites: int) -> pa.Schema:
    fields = [pa.field(layout.KEY, pa.string())]
    for i in range(num_rewrites):
        fields += [
            pa.field(layout.rewrite_column(i, num_rewrites), pa.string()),
            pa.field(layout.suffixed(layout.STATUS, i, num_rewrites), pa.string()),
            pa.field(layout.suffixed(layout.REASON, i, num_rewrites), pa.string()),
        ]
    return pa.schema(fields)


def pending_shards(work: str | Path, source: str, shards: Sequence[int], overwrite: bool = False) -> list[int]:
    """The shards of `shards` that a run still has to do (all of them with overwrite)."""
    w = layout.Work(work)
    source = meta.canonical_source(source)
    if overwrite:
        return list(shards)
    todo = []
    for s in shards:
        if w.stats_file(source, s).exists():
            shutil.rmtree(w.parts(source, s), ignore_errors=True)  # left by a writer killed right after its stats
        else:
            todo.append(s)
    return todo


def run(
    work: str | Path,
    config: RunConfig,
    shards: Sequence[int],
    engine: Engine,
    *,
    overwrite: bool = False,
    progress: bool = True,
    schedule: Schedule = Schedule(),
    stop_within: float = stop.STOP_WITHIN,
) -> list[dict]:
    """Rewrite `shards` of the plan in `work`; returns the stats of the shards it finished.

    A shard another live process is writing is skipped (see lock.py). On SIGTERM/SIGUSR1 the chunk in
    flight is committed and StopRequested is raised (see stop.py)."""
    w = layout.Work(work)
    manifest = plan.load_manifest(w)
    meta_set = meta.load(config.source)
    template = prompt.load_template(config.template)
    if config.num_examples > len(meta_set):
        raise RunError(f"--num-examples {config.num_examples} is more than the {len(meta_set)} entries of {meta_set.name}")
    for shard in shards:
        if not 0 <= shard < manifest.num_shards:
            raise RunError(f"shard {shard} is not in the plan (shards 0-{manifest.num_shards - 1})")
    clip_tokens.check_available()
    _check_fingerprint(w, config, config.fingerprint(meta_set, template, engine), manifest, overwrite)
    done = []
    with stop.handling(stop_within):
        for shard in shards:
            stop.check()
            lock = ShardLock(w.lock_file(config.source, shard))
            if not lock.acquire():
                print(f"{config.source} shard {layout.shard_id(shard)}: being rewritten by {lock.holder()}, skipped",
                      file=sys.stderr)
                continue
            with lock:
                if overwrite:
                    _clear(w, config.source, shard)
                elif not pending_shards(w, config.source, [shard]):
                    print(f"{config.source} shard {layout.shard_id(shard)}: done already, skipped", file=sys.stderr)
                    continue
                done.append(run_shard(w, manifest, shard, config, meta_set, template, engine, progress=progress,
                                      schedule=schedule))
    return done


def _check_fingerprint(w: layout.Work, config: RunConfig, fingerprint: dict, manifest: plan.Manifest, overwrite: bool) -> None:
    path = w.settings_file(config.source)
    fingerprint = {**fingerprint, "plan_id": manifest.plan_id(), "version": __version__}
    if path.exists() and not overwrite:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k))
        if differ:
            detail = "; ".join(f"{k}: {recorded.get(k)!r} then, {fingerprint.get(k)!r} now" for k in differ)
            raise RunError(
                f"{w.rewrites(config.source)} was written with other settings ({detail}). "
                "Use the same settings, another --work, or --overwrite to start this source over"
            )
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        # A commit cut short by a kill; a young one may be another task's commit in progress.
        if time.time() - leftover.stat().st_mtime > LEFTOVER_AGE:
            leftover.unlink(missing_ok=True)
    if overwrite and path.exists():
        if json.loads(path.read_text(encoding="utf-8")) != fingerprint:
            shutil.rmtree(w.rewrites(config.source))
    atomic.write_json(path, fingerprint)


def _clear(w: layout.Work, source: str, shard: int) -> None:
    w.stats_file(source, shard).unlink(missing_ok=True)
    w.rewrite_file(source, shard).unlink(missing_ok=True)
    shutil.rmtree(w.parts(source, shard), ignore_errors=True)


def run_shard(
    w: layout.Work,
    manifest: plan.Manifest,
    shard: int,
    config: RunConfig,
    meta_set: meta.MetaSet,
    template: prompt.Template,
    engine: Engine,
    *,
    progress: bool = True,
    schedule: Schedule = Schedule(),
) -> dict:
    from tqdm import tqdm

    parts = w.parts(config.source, shard)
    parts.mkdir(parents=True, exist_ok=True)
    # Temporary files of a writer killed half-way through a commit (never read: commits are renames).
    for leftover in [*parts.glob(".*.tmp"), *w.rewrites(config.source).glob(f".{layout.shard_id(shard)}.*.tmp")]:
        leftover.unlink(missing_ok=True)
    rows = manifest.shard_rows(shard)
    keys_seen: set[int] = set()
    duplicate_keys = 0
    bar = tqdm(total=rows, unit="caption", desc=f"{config.source} {layout.shard_id(shard)}",
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    chunk_stats: list[dict] = []
    out_schema = schema(config.num_rewrites)
    for index, table in enumerate(plan.iter_shard(manifest, shard, config.chunk_rows)):
        for key in table.column(layout.KEY).to_pylist():
            if hash(key) in keys_seen:
                if not duplicate_keys:
                    print(f"{config.source} shard {layout.shard_id(shard)}: key {key!r} appears more than once; rows "
                          "are matched by position, so each keeps its own rewrite", file=sys.stderr)
                duplicate_keys += 1
            keys_seen.add(hash(key))
        part = parts / f"{index:05d}.parquet"
        if part.exists():  # committed by an earlier run
            chunk_stats.append(json.loads(pq.read_schema(part).metadata[STATS_KEY]))
            bar.update(table.num_rows)
            continue
        stop.check()  # asked to stop: take no new chunk
        started = time.perf_counter()
        result, stats = rewrite_chunk(table, config, meta_set, template, engine, schedule)
        stats["seconds"] = time.perf_counter() - started
        faults.point("generated")
        with atomic.atomic_path(part) as tmp:
            pq.write_table(result.replace_schema_metadata({STATS_KEY: json.dumps(stats)}), tmp)
        chunk_stats.append(stats)
        bar.update(table.num_rows)
        secs = sum(s["seconds"] for s in chunk_stats)
        bar.set_postfix(ok=sum(s["ok"] for s in chunk_stats), failed=sum(s["failed"] for s in chunk_stats),
                        captions_s=f"{sum(s['rows'] for s in chunk_stats) / secs:.2f}" if secs else "-")
    bar.close()

    final = w.rewrite_file(config.source, shard)
    with atomic.atomic_path(final) as tmp, pq.ParquetWriter(tmp, out_schema) as writer:
        # Row groups of a fixed size, so the file's bytes do not depend on the chunk size either.
        tables = (pq.read_table(parts / f"{i:05d}.parquet").replace_schema_metadata(None) for i in range(len(chunk_stats)))
        for table in plan.rechunk(tables, ROW_GROUP_ROWS):
            writer.write_table(table)
    stats = merge_stats(chunk_stats)
    stats.update(shard=shard, source=config.source, engine=engine.describe(), duplicate_keys=duplicate_keys,
                 settings={**asdict(config), "sampling": config.sampling.to_dict()})
    atomic.write_json(w.stats_file(config.source, shard), stats)  # written last: the shard is done
    shutil.rmtree(parts, ignore_errors=True)
    return stats


def merge_stats(chunks: Iterable[dict]) -> dict:
    """Sum per-chunk stats (counts add up; captions/s is recomputed)."""
    total: dict = {"rows": 0, "unique_captions": 0, "requests": 0, "ok": 0, "failed": 0, "skipped": 0,
                   "prompt_tokens": 0, "cached_prompt_tokens": 0, "generated_tokens": 0, "prompts_cut": 0,
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


def schedule_order(prompts: Sequence[str], examples: Sequence[Sequence[meta.Example]], schedule: Schedule) -> list[int]:
    """The order to submit requests in: grouped by their examples (a group's prompts share a prefix),
    then by length (less padding in a batch)."""
    def key(i: int) -> tuple:
        return ((tuple(examples[i]) if schedule.group_by_examples else ()),
                (len(prompts[i]) if schedule.sort_by_length else 0))

    return sorted(range(len(prompts)), key=key)


def rewrite_chunk(
    table: pa.Table, config: RunConfig, meta_set: meta.MetaSet, template: prompt.Template, engine: Engine,
    schedule: Schedule = Schedule(),
) -> tuple[pa.Table, dict]:
    """Rewrite one chunk of (key, caption) rows; returns the sidecar rows and the chunk's stats."""
    keys = table.column(layout.KEY).to_pylist()
    captions = table.column(layout.CAPTION).to_pylist()
    n = config.num_rewrites
    # A row's identity seeds its examples and sampling. With dedup, identical captions share it (and
    # so share their rewrite, whichever shard or chunk they fall in); without, the key does.
    identity = [
        (prompt.normalise_caption(c) if config.dedup else k) if c is not None and c.strip() else None
        for k, c in zip(keys, captions)
    ]
    unique: dict[str, str] = {}
    for ident, cap in zip(identity, captions):
        if ident is not None and ident not in unique:
            unique[ident] = cap
    results: dict[tuple[str, int], tuple[str | None, str, str | None]] = {}
    stats = {"rows": len(keys), "unique_captions": len(unique), "requests": 0, "prompt_tokens": 0,
             "cached_prompt_tokens": 0, "generated_tokens": 0, "prompts_cut": 0}
    rejected: Counter = Counter()
    failed_reasons: Counter = Counter()
    budget = engine.context_length - config.sampling.max_new_tokens
    pending = [(ident, cap, i) for ident, cap in unique.items() for i in range(n)]
    for attempt in range(config.max_attempts):
        if not pending:
            break
        requests, drawn = [], []
        for ident, cap, i in pending:
            rng = seeds.example_rng(config.seed, config.source, ident, i, attempt, config.example_sets)
            examples = meta.sample_examples(meta_set, rng, config.num_examples)
            text, cut = prompt.fit_prompt(template, examples, cap, engine.encode, engine.decode, budget)
            stats["prompts_cut"] += cut
            requests.append(Request(text, seeds.generation_seed(config.seed, config.source, ident, i, attempt),
                                    group=template.head(examples)))
            drawn.append(examples)
        order = schedule_order([r.prompt for r in requests], drawn, schedule)
        completions: list = [None] * len(requests)
        for j, comp in zip(order, engine.generate([requests[j] for j in order], config.sampling)):
            completions[j] = comp
        targets = [[t for _, t in examples] for examples in drawn]
        stats["requests"] += len(requests)
        retry = []
        for (ident, cap, i), tgts, comp in zip(pending, targets, completions):
            stats["prompt_tokens"] += comp.prompt_tokens
            stats["cached_prompt_tokens"] += comp.cached_tokens
            stats["generated_tokens"] += comp.generated_tokens
            text = prompt.parse_completion(comp.text)
            reason = validate.check(text, cap, comp, tgts, clip_tokens.count)
            if reason is None:
                results[ident, i] = (text, layout.STATUS_OK, None)
                continue
            rejected[reason] += 1
            if attempt + 1 < config.max_attempts:
                retry.append((ident, cap, i))
            else:
                results[ident, i] = (None, layout.STATUS_FAILED, reason)
                failed_reasons[reason] += 1
        pending = retry

    columns: dict[str, list] = {layout.KEY: keys}
    ok = failed = 0
    for i in range(n):
        values, statuses, reasons = [], [], []
        for ident in identity:
            if ident is None:
                value, status, reason = None, layout.STATUS_SKIPPED, validate.EMPTY_CAPTION
            else:
                value, status, reason = results[ident, i]
            ok += status == layout.STATUS_OK
            failed += status == layout.STATUS_FAILED
            values.append(value)
            statuses.append(status)
            reasons.append(reason)
        columns[layout.rewrite_column(i, n)] = values
        columns[layout.suffixed(layout.STATUS, i, n)] = statuses
        columns[layout.suffixed(layout.REASON, i, n)] = reasons
    stats.update(ok=ok, failed=failed, skipped=sum(ident is None for ident in identity),
                 rejected=dict(rejected), failed_reasons=dict(failed_reasons))
    return pa.table(columns, schema=schema(n)), stats
