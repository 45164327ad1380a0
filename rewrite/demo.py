"""The demo job: rewrite the caption file shipped with the project, end to end, on the embedded model."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from . import engines, export, layout, plan, report, resources, runner
from .settings import ENGINE


def demo_captions() -> Path:
    return resources.resource("demo_data", "captions.txt")


def run_demo(out: str | Path = "rewrite-demo", source: str = "chatgpt", num_shards: int = 2,
             engine_name: str = ENGINE, model: str | None = None, show: int = 8) -> dict:
    """Shard the demo captions into OUT/work, rewrite every shard, export the dataset to OUT/dataset and
    the quality report to OUT/report; returns the export summary (with the report's). Run again, it
    reuses what is done."""
    work = layout.Work(Path(out) / "work")
    if work.manifest.is_file():
        manifest = plan.load_manifest(work)
    else:
        manifest = plan.plan([str(demo_captions())], work.root, num_shards=num_shards)
    config = runner.RunConfig(source=source, chunk_rows=32)
    shards = list(range(manifest.num_shards))
    if runner.pending_shards(work.root, config.source, shards):
        runner.prepare(work.root, config, shards)  # a bad --source is refused before the model loads
        engine = engines.load(engine_name, model)
        try:
            runner.run(work.root, config, shards, engine)
        finally:
            engine.close()
    summary = export.export(work.root, Path(out) / "dataset", [config.source], overwrite=True)
    table = pq.read_table(Path(summary["out"]) / summary["files"][0], columns=["caption", f"caption_{config.source}"])
    summary["examples"] = table.slice(0, show).to_pylist()
    summary["report"] = report.report(work.root, Path(out) / "report", [config.source], progress=False)
    return summary
