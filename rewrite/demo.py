"""The demo job: rewrite the caption file shipped with the project, end to end, on the embedded model."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from . import engines, export, plan, resources, runner
from .settings import ENGINE


def demo_captions() -> Path:
    return resources.resource("demo_data", "captions.txt")


def run_demo(work: str | Path = "rewrite-demo", source: str = "chatgpt", num_shards: int = 2,
             engine_name: str = ENGINE, model: str | None = None, show: int = 8) -> dict:
    """Shard the demo captions, rewrite every shard, export a dataset; returns the export summary."""
    work = Path(work)
    manifest = plan.plan([str(demo_captions())], work, num_shards=num_shards)
    config = runner.RunConfig(source=source, chunk_rows=32)
    shards = list(range(manifest.num_shards))
    if runner.pending_shards(work, source, shards):
        engine = engines.load(engine_name, model)
        try:
            runner.run(work, config, shards, engine)
        finally:
            engine.close()
    summary = export.export(work, work / "dataset", [config.source], overwrite=True)
    table = pq.read_table(Path(summary["out"]) / summary["files"][0], columns=["caption", f"caption_{config.source}"])
    summary["examples"] = table.slice(0, show).to_pylist()
    return summary
