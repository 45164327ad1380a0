"""Export: the input rows joined with each source's rewrites, as a Hugging Face dataset.

Writes OUT/data/train-00000-of-000NN.parquet (one file per shard, every original column passed
through as stored, image bytes included) plus `caption_<source>` columns, and OUT/README.md, a dataset
card whose YAML `configs:` lets `datasets.load_dataset(OUT)` find the files. The files are staged and
published all at once (see publish.py): a reader never sees part of an export, a killed export is
finished by a rerun, and only files an export wrote are ever replaced.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import atomic, layout, plan, publish, runner, status

READ_ROWS = 8192
HF_METADATA_KEY = b"huggingface"
CARD = "README.md"


class ExportError(RuntimeError):
    pass


def check_out_folder(out: Path, w: layout.Work, manifest: plan.Manifest) -> None:
    """Refuse an output folder that is, holds or lies inside the work dir or an input."""
    out = out.resolve()
    for what, path in [("the work dir", w.root.resolve())] + [("the input", Path(p)) for p in manifest.inputs]:
        if out == path or out.is_relative_to(path) or path.is_relative_to(out):
            relation = "is" if out == path else ("lies inside" if out.is_relative_to(path) else "holds")
            raise ExportError(f"--out {out} {relation} {what} {path}: an export goes to a folder of its own")


def export_id(manifest: plan.Manifest, settings: dict, statuses: list) -> str:
    """What defines an export's bytes: the plan, each source's settings and the committed files."""
    body = {"plan": manifest.plan_id(), "sources": {
        st.source: {"settings": settings[st.source], "files": [st.digests.get(s) for s in range(manifest.num_shards)]}
        for st in statuses}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def export(
    work: str | Path,
    out: str | Path,
    sources: Sequence[str] | None = None,
    *,
    allow_missing: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write the dataset; returns a summary (files, rows, columns, missing shards)."""
    from tqdm import tqdm

    w, out = layout.Work(work), Path(out)
    manifest, statuses = status.collect(w, list(sources) if sources else None, checksum=True)
    check_out_folder(out, w, manifest)
    if not statuses:
        raise ExportError(f"{w.root} has no rewrites yet: run `rewrite run` first")
    missing = {st.source: [s for s, state in st.shards.items() if state != status.DONE] for st in statuses}
    missing = {k: v for k, v in missing.items() if v}
    damage = [problem for st in statuses for problem in st.damage.values()]
    if missing and not allow_missing:
        detail = "; ".join(f"{src}: shards {plan.format_shard_spec(v)}" for src, v in missing.items())
        raise ExportError(f"not every shard is rewritten ({detail}). " + "".join(f"Damaged: {d}. " for d in damage[:3])
                          + "Finish them (`rewrite run`), or pass --allow-missing to export with nulls there")
    settings = {st.source: runner.recorded_settings(w, st.source) for st in statuses}
    names = [layout.export_data_file(s, manifest.num_shards) for s in range(manifest.num_shards)]
    by_source = {st.source: st for st in statuses}
    summary = {"out": str(out), "files": names, "rows": manifest.total_rows, "sources": list(settings),
               "missing": {k: plan.format_shard_spec(v) for k, v in missing.items()}, "damaged": damage}
    with publish.OutputFolder(out, export_id(manifest, settings, statuses), names + [CARD], overwrite=overwrite) as folder:
        if folder.up_to_date:
            return {**summary, "columns": _columns(out / names[0]), "up_to_date": True}
        folder.begin()
        for shard, name in enumerate(tqdm(names, unit="file", desc="export", disable=not progress, file=sys.stderr)):
            if not folder.written(name):
                _write_shard(w, manifest, shard, settings, by_source, folder.path(name))
        first = folder.path(names[0])
        summary["columns"] = _columns(first if first.exists() else out / names[0])
        if not folder.written(CARD):
            atomic.write_text(folder.path(CARD), dataset_card(summary, settings, statuses))
        folder.publish()
    return summary


def _columns(path: Path) -> list[str]:
    return pq.read_schema(path).names


def _aligned(w: layout.Work, source: str, shard: int, rows: int, done: bool) -> Iterator[pa.Table | None]:
    """The source's sidecar rows in READ_ROWS chunks (None chunks when the shard is not done)."""
    if not done:
        for _ in range(plan.chunk_count(rows, READ_ROWS)):
            yield None
        return
    path = w.rewrite_file(source, shard)
    try:
        batches = (pa.Table.from_batches([b]) for b in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS))
        yield from plan.rechunk(batches, READ_ROWS)
    except (pa.ArrowException, OSError) as e:
        raise ExportError(f"{path}: cannot read the rewrites ({e})") from None


def _write_shard(w: layout.Work, manifest: plan.Manifest, shard: int, settings: dict, statuses: dict,
                 path: Path) -> None:
    rows = manifest.shard_rows(shard)
    sidecars = {src: _aligned(w, src, shard, rows, statuses[src].shards[shard] == status.DONE) for src in settings}
    key_column = manifest.key_column or layout.KEY
    writer = None
    with atomic.atomic_path(path) as tmp:
        try:
            for base in plan.iter_shard(manifest, shard, READ_ROWS, columns=None):
                table, keys = base, base.column(key_column).cast(pa.string())
                for src, chunks in sidecars.items():
                    table = _join(table, keys, next(chunks), src, settings[src]["num_rewrites"], path)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, _with_hf_features(table.schema))
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()


def _join(table: pa.Table, keys: pa.ChunkedArray, side: pa.Table | None, source: str, n: int, path: Path) -> pa.Table:
    names = [layout.export_column(source, i, n) for i in range(n)]
    if side is None:
        for name in names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        return table
    if side.num_rows != table.num_rows or not side.column(layout.KEY).equals(keys):
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
    ours = {layout.export_column(src, i, s["num_rewrites"]) for src, s in settings.items() for i in range(s["num_rewrites"])}
    for name in summary["columns"]:
        what = "rewritten caption" if name in ours else "input column"
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
