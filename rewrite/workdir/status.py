"""Where a work dir stands: each shard of each source done, partial, missing or damaged; the rows of done
shards and of the committed chunks of partial ones, and the rows waiting for the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Container, Sequence

from . import done, layout
from .manifest import Manifest, format_shard_spec, load_manifest
from .done import DAMAGED, DONE, MISSING, PARTIAL

STATES = (DONE, PARTIAL, MISSING, DAMAGED)
WAITING_SHOWN = 10  # shards with rows waiting for the engine named on the status line


@dataclass
class SourceStatus:
    source: str
    shards: dict[int, str]  # shard -> done | partial | missing | damaged
    damage: dict[int, str] = field(default_factory=dict)  # shard -> what is damaged, naming the file
    digests: dict[int, str] = field(default_factory=dict)  # done shard -> sha256 of its committed file
    waiting: dict[int, int] = field(default_factory=dict)  # partial shard -> its rows waiting for the engine
    rows_done: int = 0  # of done shards, and of the committed chunks of partial ones
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(s == state for s in self.shards.values())

    def spec(self, state: str) -> str:
        return format_shard_spec([k for k, v in self.shards.items() if v == state])

    def add(self, stats: dict) -> None:
        self.rows_done += stats["rows"]
        self.ok += stats["ok"]
        self.failed += stats["failed"]
        self.skipped += stats["skipped"]
        self.seconds += stats["seconds"]
        for reason, n in stats.get("failed_reasons", {}).items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n


def collect(work: str | Path, names: Sequence[str] | None = None, *, checksum: bool | Container[int] = False,
            manifest: Manifest | None = None) -> tuple[Manifest, list[SourceStatus]]:
    """The shard states of the sets `names` (as the work dir names them; None: every set run there).
    `checksum`: True, or the shards whose files are also checked against their recorded sha256 (an export
    checks the shards it writes, not all of them in every array task). `manifest`: the plan, when read."""
    w = layout.Work(work)
    manifest = manifest or load_manifest(w)
    out = []
    for source in (names if names is not None else w.sources_present()):
        st = SourceStatus(source, {})
        for shard in range(manifest.num_shards):
            found = done.check(w, source, shard, checksum=checksum is True or (checksum and shard in checksum))
            st.shards[shard] = found.state
            if found.state == DONE:
                st.add(found.stats)
                st.digests[shard] = found.stats[done.FILE_KEY]["sha256"]
            elif found.state == DAMAGED:
                st.damage[shard] = found.problem
            elif found.state == PARTIAL:
                for part in done.parts(w, source, shard):
                    st.add(part.stats)
                    if part.waiting_rows:
                        st.waiting[shard] = st.waiting.get(shard, 0) + part.waiting_rows
        out.append(st)
    return manifest, out


def render(manifest: Manifest, statuses: list[SourceStatus], strays: list[Path] = (),
           notes: dict[str, list[str]] | None = None) -> str:
    """The status text; `notes[source]`: lines shown right under a source's line (Slurm's view)."""
    lines = [f"plan: {manifest.num_shards} shards, {manifest.total_rows} rows, {len(manifest.files)} input files"]
    if not statuses:
        lines.append("no source has been run yet (rewrite run --work WORK --source SOURCE --shards all)")
    for st in statuses:
        n = manifest.num_shards
        line = (f"{st.source:8s} done {st.count(DONE)}/{n}  partial {st.count(PARTIAL)}  missing {st.count(MISSING)}"
                + (f"  damaged {st.count(DAMAGED)}" if st.count(DAMAGED) else "")
                + f"  | rows {st.rows_done}/{manifest.total_rows}  ok {st.ok}  failed {st.failed}  skipped {st.skipped}")
        if st.seconds:
            line += f"  {st.rows_done / st.seconds:.2f} captions/s"
        lines.append(line)
        lines += (notes or {}).get(st.source, [])
        for state in (PARTIAL, MISSING, DAMAGED):
            if st.count(state):
                lines.append(f"         {state} shards: {st.spec(state)}")
        if st.waiting:
            shown = ", ".join(f"{layout.shard_id(shard)} ({n})" for shard, n in list(st.waiting.items())[:WAITING_SHOWN])
            more = f" and {len(st.waiting) - WAITING_SHOWN} more" if len(st.waiting) > WAITING_SHOWN else ""
            lines.append(f"         waiting for the engine: {sum(st.waiting.values())} rows it could not serve, in shards "
                         f"{shown}{more} (not done: `rewrite run` requests them again)")
        for shard, problem in st.damage.items():
            lines.append(f"         damaged {layout.shard_id(shard)}: {problem} (`rewrite run` redoes it)")
        if st.reasons:
            lines.append("         failed rewrites by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(st.reasons.items())))
    for path in strays:
        lines.append(f"ignored {path}: not a source folder (no settings.json)")
    return "\n".join(lines)
