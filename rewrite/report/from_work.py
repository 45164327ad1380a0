"""The report's figures over a work dir (`collect`), in two passes. The counts come from every shard's
state and, for a done shard, its stats (no row read). The per-row figures come from whole done shards read
one at a time (the inputs' key and caption columns, the sidecar's rewrite and status columns): every one,
or, with `sample_rows`, a seeded random sample of them (`sample`), since those figures cost Python per row
(0.2-0.6 ms) and a sample of a few hundred thousand rows tells them within a small margin of error. The
tallies keep running sums and bounded samples only, so the memory is that of one shard however large the
work dir.
"""
from __future__ import annotations

import random
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .. import __version__, meta, defaults, storage
from ..workdir import done, layout
from ..workdir.manifest import Manifest, load_manifest
from ..inputs import plan
from ..workdir.manifest import PlanError
from ..run.config import RunError
from ..workdir.record import recorded_settings
from .errors import ReportError
from .tallies import Agreement, SetTally

# Rows read for the per-row figures by default: at 0.2-0.6 ms a row, one or two minutes of one core; at
# 10,000 rows a shard, 20 shards, enough to estimate their margins of error (bench/report_scale.py). Counts
# are exact at any sample size.
SAMPLE_ROWS = 200_000


def _manifest(w: layout.Work) -> Manifest:
    try:
        return load_manifest(w)
    except PlanError as e:
        raise ReportError(str(e)) from None


def set_names(w: layout.Work, sources: Sequence[str] | None) -> list[str]:
    """The sets asked for (a name, an alias or a custom set's file) as the work dir names them; None: all."""
    present = w.sources_present()
    if not present:
        raise ReportError(f"{w.root} has no rewrites yet: run `rewrite run` first")
    return _chosen(w.root, present, sources, "run")


def _chosen(where: Path, present: list[str], sources: Sequence[str] | None, verb: str) -> list[str]:
    try:
        return meta.chosen(where, present, sources, verb)
    except meta.MetaSetError as e:
        raise ReportError(str(e)) from None


def _settings(w: layout.Work, name: str) -> dict:
    try:
        return recorded_settings(w, name)
    except RunError as e:
        raise ReportError(str(e)) from None


def example_targets(name: str, meta_file: str | None, digest: str) -> tuple[list[str] | None, dict]:
    """The example targets of the set the run used, found by its recorded digest: the file the run read
    (a custom set, --meta-dir), else the shipped set of that name; None, and why, when neither is it
    any more (moved, deleted or edited since the run)."""
    for candidate in [c for c in (meta_file, name if name in defaults.SOURCES else None) if c]:
        try:
            found = meta.load(candidate)
        except (meta.MetaSetError, OSError):
            continue
        if found.digest() == digest:
            targets = [t for _, t in found.pairs] or [c for g in found.groups for c in g]
            return targets, {"digest": digest, "file": str(found.path), "note": None}
    places = [f"its file {meta_file}"] if meta_file else []
    places += [f"the shipped set {name}"] if name in defaults.SOURCES else []
    where = f"not found as {' or '.join(places)} (missing, or changed since the run)" if places else "no file recorded"
    return None, {"digest": digest, "file": None, "note": f"the set the run used (sha256 {digest[:12]}): {where}"}


def _captions(manifest: Manifest, shard: int) -> tuple[list[str], list[str | None]]:
    """A shard's keys and captions (only those columns are read; never an image)."""
    keys: list[str] = []
    captions: list[str | None] = []
    for table in plan.iter_shard(manifest, shard, max(1, manifest.shard_rows(shard))):  # none: a shard of no rows
        keys += table.column(layout.KEY).to_pylist()
        captions += table.column(layout.CAPTION).to_pylist()
    return keys, captions


def _sidecar(path: Path, num_rewrites: int, keys: list[str]) -> list[tuple[list, list]]:
    """(rewrites, statuses) per rewrite index of a done shard's file, checked to be the shard's rows."""
    groups = [[layout.rewrite_column(i, num_rewrites), layout.suffixed(layout.STATUS, i, num_rewrites)]
              for i in range(num_rewrites)]
    table = storage.read_parquet(path, columns=[layout.KEY] + [c for group in groups for c in group])
    if table.column(layout.KEY).to_pylist() != keys:
        raise ReportError(f"{path} does not hold the rows of its shard in the plan (keys differ)")
    return [tuple(table.column(c).to_pylist() for c in group) for group in groups]


def checked_sample_rows(sample_rows: int) -> int:
    """--sample-rows as given, refused unless it is 0 (every row) or a number of rows."""
    if not isinstance(sample_rows, int) or sample_rows < 0:
        raise ReportError(f"--sample-rows {sample_rows}: give a number of rows to read for the per-row figures, "
                          "or 0 to read every row")
    return sample_rows


def _count(w: layout.Work, manifest: Manifest, tallies: dict[str, SetTally], progress: bool) -> dict[int, list[str]]:
    """Every shard's state in every set, and each done shard's stats into its set's counts (no row read).
    Returns the done shards, each with the sets that have it done."""
    done_by: dict[int, list[str]] = {}
    for shard in tqdm(range(manifest.num_shards), desc="report: counts", unit="shard", disable=not progress,
                      file=sys.stderr, dynamic_ncols=True):
        for name, tally in tallies.items():
            found = done.check(w, name, shard)
            tally.shards[found.state] += 1
            if found.state == done.DONE:
                tally.add_stats(found.stats)
                done_by.setdefault(shard, []).append(name)
            else:
                tally.left_out[shard] = found.problem or found.state
    return done_by


def sample(done_by: dict[int, list[str]], rows: Callable[[int], int], sample_rows: int, seed: int) -> dict[int, list[str]]:
    """The shards to read for the per-row figures, each with the sets read there: each set's done shards,
    in an order drawn with `seed` (the same for every set), until it has at least `sample_rows` rows (0:
    all of them). A shard is read whole, so each set's sample is a simple random sample of its done
    shards (cluster sampling); a set with no more rows than that has all of them read."""
    order = random.Random(seed).sample(sorted(done_by), len(done_by))
    taken: dict[str, int] = {}
    chosen: dict[int, list[str]] = {}
    for shard in order:
        names = [name for name in done_by[shard] if not sample_rows or taken.get(name, 0) < sample_rows]
        if names:
            chosen[shard] = names
            taken.update({name: taken.get(name, 0) + rows(shard) for name in names})
    return chosen


def _read(w: layout.Work, manifest: Manifest, shard: int, names: list[str], tallies: dict[str, SetTally]
          ) -> dict[str, list[set[str]]]:
    """One shard's rows to the per-row figures of the sets `names`; its captions are read once for all
    of them. Returns each set's ok rewrites of each row."""
    keys, captions = _captions(manifest, shard)
    return _add_rows(tallies, shard, keys, captions,
                     {name: _sidecar(w.rewrite_file(name, shard), tallies[name].n, keys) for name in names})


def _add_rows(tallies: dict[str, SetTally], shard: int | None, keys: list, captions: list[str | None],
              sidecars: dict[str, list[tuple]]) -> dict[str, list[set[str]]]:
    """Rows read together (a shard, a part of an export), to each set of `sidecars`; returns each set's
    ok rewrites of each row (for the agreement)."""
    return {name: tallies[name].add_rows(shard, keys, captions, sidecar) for name, sidecar in sidecars.items()}


def _summary(path: Path, rows: dict, sets: dict, across_sets: dict, read_from: str, fmt: str | None,
             note: str | None, sampling: dict) -> dict:
    """The summary's frame, the same for a work dir and an export (so that `write` renders either)."""
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "work": str(path.resolve()),  # the folder read: a work dir, or an export (see "source")
        "source": read_from,  # "work" or "export" (a key of summary.json, kept as it was)
        "format": fmt,  # an export's format
        "note": note,  # what the figures leave out
        "version": __version__,
        "plan": rows,
        "sampling": sampling,  # sample_rows (0: every row) and seed of the per-row figures
        "sets": sets,
        "across_sets": across_sets,
    }


def collect(work: str | Path, sources: Sequence[str] | None = None, progress: bool = True, embedder=None,
            sample_rows: int = SAMPLE_ROWS, seed: int = defaults.SEED) -> dict:
    """The report's figures for each set run in `work` (or those of `sources`), over its done shards: the
    counts from every one's stats, the per-row figures from whole shards drawn with `seed` until at least
    `sample_rows` rows (0: every shard), with their margins of error; with an `embedder`
    (embedding.Embedder), the embedding similarity of each rewrite to its caption too."""
    checked_sample_rows(sample_rows)
    w = layout.Work(work)
    manifest = _manifest(w)
    names = set_names(w, sources)
    recorded = {name: _settings(w, name) for name in names}
    tallies = {name: SetTally(name, recorded[name]["num_rewrites"], embedder) for name in names}
    done_by = _count(w, manifest, tallies, progress)
    if not done_by:
        raise ReportError(f"{w.root}: no shard of {', '.join(names)} is done yet (see `rewrite status`)")
    chosen = sample(done_by, manifest.shard_rows, sample_rows, seed)
    agreement = Agreement()
    for shard in tqdm(sorted(chosen), desc="report: rows", unit="shard", disable=not progress, file=sys.stderr,
                      dynamic_ncols=True):
        ok_texts = _read(w, manifest, shard, chosen[shard], tallies)
        if len(chosen[shard]) == len(done_by[shard]):  # the agreement compares every set that has the shard
            agreement.add(ok_texts)
    sets = {name: t.summary(*example_targets(name, t.meta_file, recorded[name]["meta_digest"]), t.shards[done.DONE])
            for name, t in tallies.items()}
    across_sets = agreement.summary(list(sets), sum(len(found) > 1 for found in done_by.values()))
    return _summary(w.root, {"shards": manifest.num_shards, "rows": manifest.total_rows}, sets, across_sets,
                    "work", None, None, {"sample_rows": sample_rows, "seed": seed})
