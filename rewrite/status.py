"""Where a work dir stands: each shard of each source done, partial or missing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import layout, plan

DONE, PARTIAL, MISSING = "done", "partial", "missing"


@dataclass
class SourceStatus:
    source: str
    shards: dict[int, str]  # shard -> done | partial | missing
    rows_done: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(s == state for s in self.shards.values())

    def spec(self, state: str) -> str:
        return plan.format_shard_spec([k for k, v in self.shards.items() if v == state])


def shard_state(w: layout.Work, source: str, shard: int) -> str:
    if w.stats_file(source, shard).exists():
        return DONE
    parts = w.parts(source, shard)
    if w.rewrite_file(source, shard).exists() or (parts.is_dir() and any(parts.glob("*.parquet"))):
        return PARTIAL
    return MISSING


def collect(work: str | Path, sources: list[str] | None = None) -> tuple[plan.Manifest, list[SourceStatus]]:
    w = layout.Work(work)
    manifest = plan.load_manifest(w)
    out = []
    for source in sources or w.sources_present():
        st = SourceStatus(source, {s: shard_state(w, source, s) for s in range(manifest.num_shards)})
        for shard, state in st.shards.items():
            if state == DONE:
                stats = json.loads(w.stats_file(source, shard).read_text(encoding="utf-8"))
                st.rows_done += stats["rows"]
                st.ok += stats["ok"]
                st.failed += stats["failed"]
                st.skipped += stats["skipped"]
                st.seconds += stats["seconds"]
                for reason, n in stats.get("failed_reasons", {}).items():
                    st.reasons[reason] = st.reasons.get(reason, 0) + n
        out.append(st)
    return manifest, out


def render(manifest: plan.Manifest, statuses: list[SourceStatus]) -> str:
    lines = [f"plan: {manifest.num_shards} shards, {manifest.total_rows} rows, {len(manifest.files)} input files"]
    if not statuses:
        lines.append("no source has been run yet (rewrite run --work WORK --source SOURCE --shards all)")
    for st in statuses:
        n = manifest.num_shards
        line = (f"{st.source:8s} done {st.count(DONE)}/{n}  partial {st.count(PARTIAL)}  missing {st.count(MISSING)}"
                f"  | rows {st.rows_done}/{manifest.total_rows}  ok {st.ok}  failed {st.failed}  skipped {st.skipped}")
        if st.seconds:
            line += f"  {st.rows_done / st.seconds:.2f} captions/s"
        lines.append(line)
        for state in (PARTIAL, MISSING):
            if st.count(state):
                lines.append(f"         {state} shards: {st.spec(state)}")
        if st.reasons:
            lines.append("         failed rewrites by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(st.reasons.items())))
    return "\n".join(lines)
