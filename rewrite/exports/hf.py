"""Hugging Face datasets: data/train-00000-of-000NN.parquet, one file per shard (every input column as
stored, image bytes included, then the `caption_<source>` columns), and a README.md dataset card whose
YAML `configs:` lets `datasets.load_dataset(OUT)` find the files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from .. import storage
from ..workdir import atomic, layout
from .base import ExportError, ExportFormat, ExportJob, Rows, rewrite_columns


HF_METADATA_KEY = b"huggingface"
CARD = "README.md"


class HFExport(ExportFormat):
    name = "hf"
    options = ("captions_only",)

    def reader(self, folder, files):
        return HfReader(folder, files)

    def shard_files(self, job, shard):
        return [layout.export_data_file(shard, job.manifest.num_shards)]

    def write_shard(self, job, shard, staged):
        columns = [job.key_column, job.manifest.caption_column] if job.options.captions_only else None
        with atomic.atomic_path(staged(self.shard_files(job, shard)[0])) as tmp, \
                storage.parquet_writer(tmp, _with_hf_features(job.row_schema(columns))) as writer:
            for table in job.rows(shard, columns):  # none for a shard of no rows: the file has the schema alone
                writer.write_table(table.cast(writer.schema))

    def final_files(self, job):
        return [CARD]

    def finish(self, job, staged, summary):
        summary["columns"] = storage.read_parquet_schema(staged(self.shard_files(job, 0)[0])).names
        if any(f.format == "wds" for f in job.manifest.files):
            summary["note"] = ("the hf export of webdataset input holds each sample's key, caption and KEY.json "
                               "(column json); its images and other members (.jpg, .cls, .npy, ...) stay in the "
                               "tars: --format wds keeps them")
        atomic.write_text(staged(CARD), dataset_card(job, summary))


def _with_hf_features(schema: pa.Schema) -> pa.Schema:
    """Keep the inputs' Hugging Face feature metadata (e.g. Image columns) and declare the new columns."""
    meta = schema.metadata or {}
    if HF_METADATA_KEY not in meta:
        return schema
    info = json.loads(meta[HF_METADATA_KEY])
    features = info.setdefault("info", {}).setdefault("features", {})
    for name in list(features):
        if name not in schema.names:
            del features[name]  # a column left out (--captions-only)
    for name in schema.names:
        features.setdefault(name, {"dtype": "string", "_type": "Value"})
    return schema.with_metadata({**meta, HF_METADATA_KEY: json.dumps(info).encode()})


def dataset_card(job: ExportJob, summary: dict) -> str:
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
        f"{summary['rows']} rows in {job.manifest.num_shards} parquet files under `data/`. Each row keeps "
        + ("its key and caption" if job.options.captions_only else "every column of its input row")
        + " and adds one column per meta set of in-context examples (LaCLIP-style language rewrites). A null "
        "rewrite means the row's caption was empty or every attempt was rejected.",
        "",
        "| column | what |",
        "|---|---|",
    ]
    ours = set(job.rewrite_columns())
    for name in summary["columns"]:
        lines.append(f"| `{name}` | {'rewritten caption' if name in ours else 'input column'} |")
    lines += ["", *source_table(job, summary)]
    lines += ["", "Load it with `datasets.load_dataset(\"<this folder>\")`.", ""]
    return "\n".join(lines)


def source_table(job: ExportJob, summary: dict) -> list[str]:
    """A markdown table of each source's counts and settings, and the shards exported without rewrites."""
    lines = ["| source | ok | failed | skipped | settings |", "|---|---|---|---|---|"]
    for src, s in job.settings.items():
        counts = summary["counts"][src]
        desc = (f"model `{s['model']}`, engine {s['engine']}, seed {s['seed']}, k={s['num_examples']}, "
                f"temperature {s['sampling']['temperature']}, top-p {s['sampling']['top_p']}, "
                f"max new tokens {s['sampling']['max_new_tokens']}, rewrites/caption {s['num_rewrites']}")
        lines.append(f"| {src} | {counts['ok']} | {counts['failed']} | {counts['skipped']} | {desc} |")
    if summary["missing"]:
        lines += ["", "Shards exported without rewrites (null): " +
                  "; ".join(f"{k}: {v}" for k, v in summary["missing"].items())]
    return lines


class HfReader:
    """data/train-*.parquet, one file a shard: `key`, `caption` (the input's, kept as stored) and the rewrite
    columns, nulls where there is no rewrite."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.paths = [folder / f for f in sorted(files) if f.startswith("data/") and f.endswith(".parquet")]
        self.total = len(self.paths)
        names = storage.read_parquet_schema(self.paths[0]).names
        if layout.CAPTION not in names:
            raise ExportError(f"{self.paths[0]} has no {layout.CAPTION!r} column: the export does not record which "
                              "column holds the captions (planned with --caption-column?)")
        self.key = layout.KEY if layout.KEY in names else None
        self.columns = rewrite_columns(names, self.paths[0])

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for shard, path in enumerate(self.paths):
            try:
                table = storage.read_parquet(path, columns=[c for c in (self.key, layout.CAPTION) if c] + wanted)
            except (pa.ArrowException, OSError) as e:
                raise ExportError(f"{path}: cannot read its caption columns ({e})") from None
            keys = table.column(self.key).to_pylist() if self.key else [None] * table.num_rows
            yield Rows(shard, keys, table.column(layout.CAPTION).to_pylist(),
                       {c: table.column(c).to_pylist() for c in wanted})
