"""The report's figures over a work dir (`collect`): it reads the done shards one at a time (the inputs'
key and caption columns, the sidecar's rewrite, status and reason columns) and keeps running sums and
bounded samples only (the tallies), so its memory is that of one shard however large the work dir.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

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


def _sidecar(path: Path, num_rewrites: int, keys: list[str]) -> list[tuple[list, list, list]]:
    """(rewrites, statuses, reasons) per rewrite index of a done shard's file, checked to be the shard's rows."""
    groups = [[layout.rewrite_column(i, num_rewrites), layout.suffixed(layout.STATUS, i, num_rewrites),
               layout.suffixed(layout.REASON, i, num_rewrites)] for i in range(num_rewrites)]
    table = storage.read_parquet(path, columns=[layout.KEY] + [c for group in groups for c in group])
    if table.column(layout.KEY).to_pylist() != keys:
        raise ReportError(f"{path} does not hold the rows of its shard in the plan (keys differ)")
    return [tuple(table.column(c).to_pylist() for c in group) for group in groups]


def _add_shard(w: layout.Work, manifest: Manifest, shard: int, tallies: dict[str, SetTally],
               agreement: Agreement) -> None:
    """Feed one shard to every set that has it done; its captions are read once for all of them."""
    stats = {}
    for name, tally in tallies.items():
        found = done.check(w, name, shard)
        tally.shards[found.state] += 1
        if found.state == done.DONE:
            stats[name] = found.stats
        else:
            tally.left_out[shard] = found.problem or found.state
    if not stats:
        return
    keys, captions = _captions(manifest, shard)
    for name, shard_stats in stats.items():
        tallies[name].add_stats(shard_stats)
    _add_rows(tallies, agreement, shard, keys, captions,
              {name: _sidecar(w.rewrite_file(name, shard), tallies[name].n, keys) for name in stats})


def _add_rows(tallies: dict[str, SetTally], agreement: Agreement, shard: int | None, keys: list,
              captions: list[str | None], sidecars: dict[str, list[tuple]]) -> None:
    """Rows read together (a shard, a part of an export), to each set of `sidecars` and to the agreement."""
    agreement.add({name: tallies[name].add_rows(shard, keys, captions, sidecar) for name, sidecar in sidecars.items()})


def _summary(path: Path, rows: dict, sets: dict, agreement: Agreement, read_from: str, fmt: str | None,
             note: str | None) -> dict:
    """The summary's frame, the same for a work dir and an export (so that `write` renders either)."""
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "work": str(path.resolve()),  # the folder read: a work dir, or an export (see "source")
        "source": read_from,  # "work" or "export" (a key of summary.json, kept as it was)
        "format": fmt,  # an export's format
        "note": note,  # what the figures leave out
        "version": __version__,
        "plan": rows,
        "sets": sets,
        "across_sets": agreement.summary(list(sets)),
    }


def collect(work: str | Path, sources: Sequence[str] | None = None, progress: bool = True, embedder=None) -> dict:
    """The report's figures for each set run in `work` (or those of `sources`), over its done shards; with
    an `embedder` (embedding.Embedder), the embedding similarity of each rewrite to its caption too."""
    w = layout.Work(work)
    manifest = _manifest(w)
    names = set_names(w, sources)
    recorded = {name: _settings(w, name) for name in names}
    tallies = {name: SetTally(name, recorded[name]["num_rewrites"], embedder) for name in names}
    agreement = Agreement()
    for shard in tqdm(range(manifest.num_shards), desc="report", unit="shard", disable=not progress,
                      file=sys.stderr, dynamic_ncols=True):
        _add_shard(w, manifest, shard, tallies, agreement)
    if not any(t.shards[done.DONE] for t in tallies.values()):
        raise ReportError(f"{w.root}: no shard of {', '.join(names)} is done yet (see `rewrite status`)")
    sets = {name: t.summary(*example_targets(name, t.meta_file, recorded[name]["meta_digest"]))
            for name, t in tallies.items()}
    return _summary(w.root, {"shards": manifest.num_shards, "rows": manifest.total_rows}, sets, agreement,
                    "work", None, None)
