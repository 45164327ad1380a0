"""Export: the input rows joined with each source's rewrites, as a Hugging Face dataset.

Writes OUT/data/train-00000-of-000NN.parquet (one file per shard, every original column passed
through as stored, image bytes included) plus `caption_<source>` columns, and OUT/README.md, a dataset
card whose YAML `configs:` lets `datasets.load_dataset(OUT)` find the files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import atomic, layout, plan, status

READ_ROWS = 8192
HF_METADATA_KEY = b"huggingface"


class ExportError(RuntimeError):
    pass


def export(
    work: str | Path,
    out: str | Path,
    sources: Sequence[str] | None = None,
    *,
    allow_missing: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write the dataset; returns a summary (files, rows, columns, missing shards)."""
    w, out = layout.Work(work), Path(out)
    manifest, statuses = status.collect(w, list(sources) if sources else None)
    if not statuses:
        raise ExportError(f"{w.root} has no rewrites yet: run `rewrite run` first")
    missing = {st.source: [s for s, state in st.shards.items() if state != status.DONE] for st in statuses}
    missing = {k: v for k, v in missing.items() if v}
    if missing and not allow_missing:
        detail = "; ".join(f"{src}: shards {plan.format_shard_spec(v)}" for src, v in missing.items())
        raise ExportError(f"not every shard is rewritten ({detail}). Finish them, or pass --allow-missing "
                          "to export with nulls there")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
        shutil.rmtree(out / "data", ignore_errors=True)
    settings = {st.source: json.loads(w.settings_file(st.source).read_text(encoding="utf-8"))
                for st in statuses}
    files, columns = [], None
    for shard in range(manifest.num_shards):
        name = layout.export_data_file(shard, manifest.num_shards)
        cols = _write_shard(w, manifest, shard, settings, out / name)
        columns = columns or cols
        files.append(name)
    summary = {
        "out": str(out),
        "files": files,
        "rows": manifest.total_rows,
        "columns": columns,
        "sources": list(settings),
        "missing": {k: plan.format_shard_spec(v) for k, v in missing.items()},
    }
    atomic.write_text(out / "README.md", dataset_card(summary, settings, statuses))
    return summary


def _aligned(w: layout.Work, source: str, shard: int, rows: int) -> Iterator[pa.Table | None]:
    """The source's sidecar rows in READ_ROWS chunks (None chunks when the shard is not done)."""
    path = w.rewrite_file(source, shard)
    if not w.stats_file(source, shard).exists():
        for _ in range(plan.chunk_count(rows, READ_ROWS)):
            yield None
        return
    batches = (pa.Table.from_batches([b]) for b in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS))
    yield from plan.rechunk(batches, READ_ROWS)


def _write_shard(w: layout.Work, manifest: plan.Manifest, shard: int, settings: dict, path: Path) -> list[str]:
    rows = manifest.shard_rows(shard)
    sidecars = {src: _aligned(w, src, shard, rows) for src in settings}
    writer = None
    with atomic.atomic_path(path) as tmp:
        try:
            for base in plan.iter_shard(manifest, shard, READ_ROWS, columns=None):
                table = base
                for src, chunks in sidecars.items():
                    table = _join(table, next(chunks), src, settings[src]["num_rewrites"], path)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, _with_hf_features(table.schema))
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()
    return writer.schema.names if writer else []


def _join(table: pa.Table, side: pa.Table | None, source: str, n: int, path: Path) -> pa.Table:
    names = [layout.export_column(source, i, n) for i in range(n)]
    if side is None:
        for name in names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        return table
    if side.num_rows != table.num_rows or not side.column(layout.KEY).equals(table.column(layout.KEY).cast(pa.string())):
        raise ExportError(f"{source} rewrites do not line up with the input rows for {path.name}: "
                          "the work dir's plan changed after the run (rerun with --overwrite)")
    for i, name in enumerate(names):
        table = table.append_column(name, side.column(layout.rewrite_column(i, n)))
    return table


def _with_hf_features(schema: pa.Schema) -> pa.Schema:
    """Keep the inputs' Hugging Face feature metadata (e.g. Image columns) and declare the new columns."""
    meta = schema.metadata or {}
    if HF_METADATA_KEY not in meta:
        return schema
    info = json.loads(meta[HF_METADATA_KEY])
    features = info.setdefault("info", {}).setdefault("features", {})
    for name in schema.names:
        features.setdefault(name, {"dtype": "string", "_type": "Value"})
    return schema.with_metadata({**meta, HF_METADATA_KEY: json.dumps(info).encode()})


def dataset_card(summary: dict, settings: dict, statuses: list) -> str:
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*",
        "---",
        "",
        "# Captions rewritten with `rewrite`",
        "",
        f"{summary['rows']} rows in {len(summary['files'])} parquet files under `data/`. Each row keeps every "
        "column of its input row and adds one column per meta set of in-context examples (LaCLIP-style "
        "language rewrites). A null rewrite means the row's caption was empty or every attempt was rejected.",
        "",
        "| column | what |",
        "|---|---|",
    ]
    for name in summary["columns"]:
        what = "rewritten caption" if name.startswith("caption_") and name.split("_")[1] in settings else "input column"
        lines.append(f"| `{name}` | {what} |")
    lines += ["", "| source | ok | failed | skipped | settings |", "|---|---|---|---|---|"]
    for st in statuses:
        s = settings[st.source]
        desc = (f"model `{s['model']}`, engine {s['engine']}, seed {s['seed']}, k={s['num_examples']}, "
                f"temperature {s['sampling']['temperature']}, top-p {s['sampling']['top_p']}, "
                f"max new tokens {s['sampling']['max_new_tokens']}, rewrites/caption {s['num_rewrites']}")
        lines.append(f"| {st.source} | {st.ok} | {st.failed} | {st.skipped} | {desc} |")
    if summary["missing"]:
        lines += ["", "Shards exported without rewrites (null): " +
                  "; ".join(f"{k}: {v}" for k, v in summary["missing"].items())]
    lines += ["", "Load it with `datasets.load_dataset(\"<this folder>\")`.", ""]
    return "\n".join(lines)
