"""The demo job: rewrite the caption file shipped with the project, end to end, on the embedded model."""
from __future__ import annotations

from pathlib import Path

from .. import engines, report, resources, storage
from ..exports import export
from ..workdir import layout
from ..workdir.manifest import load_manifest
from ..inputs import plan
from ..rewriting import prompt
from ..run import runner
from ..defaults import ENGINE
from ..run.config import RunConfig, prepare
from ..run.checkpoint import check_settings
from ..workdir.record import recorded_settings
from ..workdir.done import pending_shards

# What the demo rewrites with by default: the settings that gave the packaged model's most faithful
# rewrites on the demo captions at a valid rate near 100% (bench/faithfulness.py; README "Quality").
TEMPLATE = "chat"
MIN_FAITHFULNESS = 0.3


def demo_captions() -> Path:
    return resources.resource("demo_data", "captions.txt")


def run_demo(out: str | Path = "rewrite-demo", source: str = "chatgpt", num_shards: int = 2,
             engine_name: str = ENGINE, model: str | None = None, show: int = 8, template: str = TEMPLATE,
             min_faithfulness: float | None = MIN_FAITHFULNESS) -> dict:
    """Shard the demo captions into OUT/work, rewrite every shard, export the dataset to OUT/dataset and
    the quality report to OUT/report; returns the export summary, with the report's, the first `show`
    rows and the settings the rewrites were made with (`used`, as recorded in the work dir). A
    `min_faithfulness` of 0 or None: no gate. Run again,
    it reuses what is done with the same settings and redoes it with others (OUT is the demo's own)."""
    # Bad options are refused before anything is written or loaded.
    config = RunConfig(source=source, chunk_rows=32, template=template, min_faithfulness=min_faithfulness or None)
    prompt.load_template(template)
    name = engines.check(engine_name, model, {})
    if storage.exists(Path(out)) and not storage.is_dir(Path(out)):
        raise plan.PlanError(f"--out {out} is a file, not a folder")
    work = layout.Work(Path(out) / "work")
    if storage.is_file(work.manifest):
        manifest = load_manifest(work)
    else:
        manifest = plan.plan([str(demo_captions())], work.root, num_shards=num_shards)
    shards = list(range(manifest.num_shards))
    job = prepare(work.root, config, shards)
    same = check_settings(job, job.fingerprint(name, engines.model_name(name, model)), overwrite=True)
    if pending_shards(work.root, config.source, shards, overwrite=not same):
        with engines.opened(name, model) as engine:
            runner.run(work.root, config, shards, engine, overwrite=not same)
    summary = export.export(work.root, Path(out) / "dataset", [config.source], overwrite=True)
    table = storage.read_parquet(Path(summary["out"]) / summary["files"][0],
                                 columns=["caption", f"caption_{config.source}"])
    summary["examples"] = table.slice(0, show).to_pylist()
    summary["used"] = recorded_settings(work, config.source)
    summary["report"] = report.report(work.root, Path(out) / "report", [config.source], progress=False, overwrite=True)
    return summary
