"""Report benchmark: `rewrite report` over every row (--sample-rows 0) against its default sample, on a
synthetic work dir, and what the measured costs make of a 400M-row work dir.

    python bench/report_scale.py [--quick] [--shards 200] [--rows-per-shard 10000] [--sample-rows N]

The work dir is made the way a run makes one, without an engine. Captions are generated here (seeded:
5-20 words from a vocabulary of 200, one in 200 blank) into parquet input files of --rows-per-shard rows
each (as img2dataset writes a parquet beside each tar of 10,000), planned with the project's own
`plan.plan` into shards of --rows-per-shard rows. The set (chatgpt) is opened as a run opens it
(`checkpoint.open_source`: its settings.json); each shard is read a chunk at a time through
`plan.iter_shard`, each unique caption given a rewrite made here (its words, each kept with the shard's
probability, 0.45-0.95, plus 1-6 added words; 0-6% of a shard's captions failed with a reason), the
chunk's sidecar rows built by the run's `rows.columns`, and the shard joined and marked done by the
run's own `shardwork._finish_shard` (its file, its stats json written last). `done.check` accepts them.

Measured, each in a child process of its own (its peak RSS its own; the CLIP tokenizer loaded before the
clock starts): `report.report` with --sample-rows 0 (every row), then with the sample (the report's
default, SAMPLE_ROWS; --quick: 2,000 rows, since the default would read every row of a quick work dir),
both writing the whole report folder. Each one's CPU time (the machine may be shared: wall times are
shown too) is split, by wrapping them, into the counting pass (`from_work._count`: every shard's state
and stats, no row read), the shards read (`from_work._read`: captions, sidecar and per-row figures) and
the rest (plots, HTML). The shards differ on purpose (each its own share of words kept): a work dir whose
shards are alike (a shuffled dataset cut in order) has smaller margins of error than this one.

The extrapolation to --target-rows rows in --target-shards shards (400M in 40,000: LAION-400M in
img2dataset's shards of 10,000) is only that: the rest + shards x the cost per shard counted + the cost of
the rows read (the sample's rows at their measured cost, any further row at the marginal cost between the
two runs), measured here, on this machine, on a work dir in the page cache, one set. A real work dir of
40,000 shards on network storage costs more per stat and open; each further set costs its own counting
and sidecar reads. The sample's rows at the target: whole shards until --target-sample-rows (the
report's default), as the report draws them.

Results go to bench/results/<time>-report_scale.json and .md (or --out-json PATH and PATH with .md).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SOURCE = "chatgpt"
VOCABULARY = 200
ADDED = ("vibrant", "scenic", "detailed", "bright", "quiet", "busy", "golden", "soft", "light", "modern", "rustic",
         "colorful", "peaceful", "view", "scene", "background", "afternoon", "evening", "sunny", "cozy")
REASONS = ("echo", "over_77_clip_tokens", "empty")
QUICK = {"shards": 20, "rows_per_shard": 1_000, "sample_rows": 2_000}
FULL = {"shards": 200, "rows_per_shard": 10_000}


def words() -> list[str]:
    """The captions' vocabulary: common caption words, then made-up ones up to VOCABULARY."""
    common = ("a the of in on with and at by photo image red blue green white black small large old new dog cat "
              "man woman child people street city beach mountain river tree house car bicycle table kitchen food "
              "sunset sky cloud snow field flower garden window door wooden sitting standing walking near under "
              "over two three group playing holding looking vintage bright dark close up view").split()
    return common + [f"w{i}" for i in range(VOCABULARY - len(common))]


def captions(count: int, rng: random.Random, vocabulary: list[str]) -> list[str]:
    return ["" if rng.random() < 0.005 else " ".join(rng.choices(vocabulary, k=rng.randint(5, 20)))
            for _ in range(count)]


def write_inputs(folder: Path, shards: int, rows_per_shard: int, seed: int) -> list[str]:
    """One parquet input file (key, caption) per shard's worth of rows, as img2dataset writes one per tar."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng, vocabulary = random.Random(seed), words()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(shards):
        start = f * rows_per_shard
        table = pa.table({"key": [f"{start + i:09d}" for i in range(rows_per_shard)],
                          "caption": captions(rows_per_shard, rng, vocabulary)})
        path = folder / f"{f:05d}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths


class SyntheticEngine:
    """What `_finish_shard` asks of an engine (its description, recorded in the stats)."""

    model = "synthetic-engine"

    def describe(self) -> dict:
        return {"engine": "synthetic", "model": self.model}


def rewrite(caption: str, keep: float, rng: random.Random) -> str:
    """The caption's words, each kept with probability `keep`, and 1-6 added words."""
    kept = [w for w in caption.split() if rng.random() < keep]
    return " ".join(kept + rng.sample(ADDED, rng.randint(1, 6)))


def chunk_results(identity: list, captions_: list, keep: float, fail: float, rng: random.Random) -> tuple[dict, dict]:
    """Each unique caption's result (rewrite, status, reason) and the chunk's attempt counts, as judging
    leaves them: a failed rewrite was rejected three times, an ok one sometimes once first."""
    results, rejected, failed = {}, {}, {}
    for ident, caption in zip(identity, captions_):
        if ident is None or (ident, 0) in results:
            continue
        if rng.random() < fail:
            reason = rng.choice(REASONS)
            results[ident, 0] = (None, "failed", reason)
            rejected[reason] = rejected.get(reason, 0) + 3
            failed[reason] = failed.get(reason, 0) + 1
        else:
            results[ident, 0] = (rewrite(caption, keep, rng), "ok", None)
            if rng.random() < 0.05:
                rejected["echo"] = rejected.get("echo", 0) + 1
    return results, {"rejected": rejected, "failed_reasons": failed}


def build(work: Path, shards: int, rows_per_shard: int, seed: int) -> dict:
    """The synthetic work dir (see the module docstring): planned, the set opened, every shard done."""
    from rewrite.inputs import plan
    from rewrite.run import checkpoint, rows
    from rewrite.run.config import RunConfig, prepare
    from rewrite.run.shardwork import _finish_shard, schema
    from rewrite.workdir import layout

    started = time.perf_counter()
    inputs = write_inputs(work.parent / "input", shards, rows_per_shard, seed)
    manifest = plan.plan(inputs, work, rows_per_shard=rows_per_shard)
    config = RunConfig(source=SOURCE)
    job = prepare(work, config, range(manifest.num_shards), manifest=manifest)
    engine = SyntheticEngine()
    checkpoint.open_source(job, job.fingerprint("synthetic", engine.model), overwrite=False).release()
    rng = random.Random(seed + 1)
    for shard in range(manifest.num_shards):
        keep, fail = rng.uniform(0.45, 0.95), rng.uniform(0.0, 0.06)
        chunk_stats, committed = [], {}
        for index, table in enumerate(plan.iter_shard(manifest, shard, config.chunk_rows)):
            keys, texts = table.column(layout.KEY).to_pylist(), table.column(layout.CAPTION).to_pylist()
            identity = rows.identities(keys, texts, config.dedup)
            results, judged = chunk_results(identity, texts, keep, fail, rng)
            committed[index], counts, _ = rows.columns(keys, identity, results, 1, schema(1), {})
            unique = len(rows.unique_captions(identity, texts))
            requests = unique + sum(judged["rejected"].values()) - sum(judged["failed_reasons"].values())
            chunk_stats.append({**rows.chunk_stats(len(keys), unique), "requests": requests,
                                "prompt_tokens": 300 * requests, "cached_prompt_tokens": 250 * requests,
                                "generated_tokens": 30 * requests, **counts, "captions_cut": 0, "seconds": 1.0,
                                **judged})
        _finish_shard(job.w, config, shard, engine, chunk_stats, committed, duplicate_keys=0)
    return {"seconds": time.perf_counter() - started, "shards": manifest.num_shards, "rows": manifest.total_rows}


def peak_rss_mb() -> float:
    for text in Path("/proc/self/status").read_text().splitlines():
        if text.startswith("VmHWM:"):
            return int(text.split()[1]) / 1024
    return float("nan")


def timed(module, name: str, spent: dict) -> None:
    """Wrap module.<name> so that the CPU seconds spent in it add up in spent[name]."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        started = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] += time.process_time() - started

    setattr(module, name, wrapper)


def one(mode: str, work: Path, sample_rows: int, seed: int) -> dict:
    """One report, in this (child) process: "all" (every row) or "sample"; its time split into the counting
    pass (`from_work._count`), the shards read (`from_work._read`) and the rest."""
    from rewrite import report
    from rewrite.report import from_work
    from rewrite.rewriting import clip_tokens

    clip_tokens.count("the tokenizer loads before the clock starts")
    spent = {"_count": 0.0, "_read": 0.0}
    for name in spent:
        timed(from_work, name, spent)
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        made = report.report(work, Path(out) / "report", progress=False, sample_rows=0 if mode == "all" else sample_rows,
                             seed=seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    summary = made["summary"]
    figures = summary["sets"][SOURCE]
    return {"mode": mode, "seconds": wall, "cpu_seconds": cpu, "count_cpu": spent["_count"], "read_cpu": spent["_read"],
            "fixed_cpu": cpu - spent["_count"] - spent["_read"], "shards": summary["plan"]["shards"],
            "peak_rss_mb": peak_rss_mb(), "sample": figures["sample"], "faithfulness": figures["faithfulness"]["mean"],
            "words": figures["length"]["words"]["rewrite"]["mean"], "valid_rate": figures["valid_rate"],
            "rows": figures["rows"]}


def measure(mode: str, args) -> dict:
    """One report in a child process of its own."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, __file__, "--one", mode, "--work", str(args.work), "--sample-rows",
                        str(args.sample_rows), "--seed", str(args.seed), "--out-json", f.name], check=True)
        return json.loads(Path(f.name).read_text())


def extrapolate(every: dict, sample: dict, args) -> dict:
    """The report at the target size from the costs measured (CPU time; an extrapolation, not a
    measurement: see the module docstring). Reading n rows costs what the sample's first rows cost, then
    the marginal cost per row between the sample and every row (the figures' reservoirs fill up after
    their first 100,000 scores, and later rows cost more)."""
    read_every, read_sample = every["sample"]["rows"], sample["sample"]["rows"]
    per_shard = every["count_cpu"] / every["shards"]
    marginal = (every["read_cpu"] - sample["read_cpu"]) / (read_every - read_sample)
    fixed = sample["fixed_cpu"]

    def reading(rows: float) -> float:
        return sample["read_cpu"] * min(rows, read_sample) / read_sample + max(0.0, rows - read_sample) * marginal

    rows_per_shard = args.target_rows / args.target_shards
    target_sample = min(args.target_rows, math.ceil(args.target_sample_rows / rows_per_shard) * rows_per_shard)
    counting = args.target_shards * per_shard
    return {"per_shard_counted_ms": per_shard * 1000, "first_rows_read_ms": sample["read_cpu"] / read_sample * 1000,
            "marginal_row_read_ms": marginal * 1000, "fixed_s": fixed, "target_rows": args.target_rows,
            "target_shards": args.target_shards, "target_sample_rows": target_sample, "counting_s": counting,
            "all_rows_s": fixed + counting + reading(args.target_rows),
            "sample_s": fixed + counting + reading(target_sample)}


def table(build_: dict, results: dict, x: dict, args, cpu: str) -> str:
    every, sample = results["all"], results["sample"]
    margin = sample["sample"]["margin_95"].get("faithfulness.mean")
    rows = [f"CPU: {cpu}; work dir: {build_['shards']} shards x {args.rows_per_shard:,} rows = {build_['rows']:,} rows, "
            f"one set ({SOURCE}), made in {build_['seconds']:.0f} s; each report one run in a child process, the work "
            "dir in the page cache", "",
            "| report | seconds (wall) | CPU seconds | of which counting / reading rows / rest | rows read | shards read "
            "| peak RSS | faithfulness | valid rate |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in (("every row (--sample-rows 0)", every), (f"sample (--sample-rows {args.sample_rows:,}, seed {args.seed})", sample)):
        shown = f"{r['faithfulness']:.4f}" + ("" if r["sample"]["exact"] else f" ± {margin:.4f}" if margin is not None else " ± ?")
        rows.append(f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['count_cpu']:.2f} / {r['read_cpu']:.2f} / "
                    f"{r['fixed_cpu']:.2f} | {r['sample']['rows']:,} | {r['sample']['shards']}/{r['sample']['of_shards']} | "
                    f"{r['peak_rss_mb']:.0f} MB | {shown} | {r['valid_rate']:.4f} |")
    rows += [f"| **sample / every row** | **{sample['seconds'] / every['seconds']:.3f}** | "
             f"**{sample['cpu_seconds'] / every['cpu_seconds']:.3f}** | | | | | | |", "",
             f"Costs (CPU time): {x['per_shard_counted_ms']:.2f} ms per shard counted (stats, no row); "
             f"{x['first_rows_read_ms']:.3f} ms per row read over the sample's {sample['sample']['rows']:,} rows, "
             f"{x['marginal_row_read_ms']:.3f} ms per row beyond them; {x['fixed_s']:.1f} s the rest (plots, HTML).", "",
             f"Extrapolated (not measured) to {x['target_rows']:,} rows in {x['target_shards']:,} shards, one set: every "
             f"row {x['all_rows_s'] / 3600:.1f} h; the default sample ({x['target_sample_rows']:,.0f} rows) "
             f"{x['sample_s'] / 60:.1f} min, of which counting {x['counting_s'] / 60:.1f} min."]
    return "\n".join(rows)


def main() -> None:
    from rewrite.report.from_work import SAMPLE_ROWS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 shards x 1,000 rows, a sample of 2,000 (under a minute)")
    ap.add_argument("--shards", type=int, help=f"shards of the work dir (default {FULL['shards']})")
    ap.add_argument("--rows-per-shard", type=int, help=f"rows a shard (default {FULL['rows_per_shard']:,})")
    ap.add_argument("--sample-rows", type=int, help=f"the sample timed against every row (default the report's, {SAMPLE_ROWS:,})")
    ap.add_argument("--seed", type=int, default=0, help="the captions' and rewrites' seed, and the sample's")
    ap.add_argument("--target-rows", type=int, default=400_000_000, help="rows of the extrapolation")
    ap.add_argument("--target-shards", type=int, default=40_000, help="shards of the extrapolation")
    ap.add_argument("--target-sample-rows", type=int, default=SAMPLE_ROWS,
                    help=f"the sample of the extrapolation (default the report's, {SAMPLE_ROWS:,})")
    ap.add_argument("--work", type=Path, help="a work dir this benchmark made before (not made again)")
    ap.add_argument("--out-json", help="result file (default bench/results/<time>-report_scale.json)")
    ap.add_argument("--one", choices=("all", "sample"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = QUICK if args.quick else FULL
    args.shards = args.shards or size["shards"]
    args.rows_per_shard = args.rows_per_shard or size["rows_per_shard"]
    args.sample_rows = args.sample_rows if args.sample_rows is not None else size.get("sample_rows", SAMPLE_ROWS)
    if args.one:
        Path(args.out_json).write_text(json.dumps(one(args.one, args.work, args.sample_rows, args.seed)))
        return
    with tempfile.TemporaryDirectory(prefix="report_scale-") as tmp:
        if args.work is None:
            args.work = Path(tmp) / "work"
            made = build(args.work, args.shards, args.rows_per_shard, args.seed)
        else:
            from rewrite.workdir import layout, manifest

            planned = manifest.load_manifest(layout.Work(args.work))
            made = {"seconds": 0.0, "shards": planned.num_shards, "rows": planned.total_rows}
        print(f"work dir: {made}", file=sys.stderr)
        results = {}
        for mode in ("all", "sample"):
            results[mode] = measure(mode, args)
            print(f"{mode}: {results[mode]['seconds']:.2f} s", file=sys.stderr)
    x = extrapolate(results["all"], results["sample"], args)
    from machine import cpu_model

    cpu = cpu_model()
    md = table(made, results, x, args, cpu)
    print(md)
    out = Path(args.out_json) if args.out_json else HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-report_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu, "args": {k: str(v) for k, v in vars(args).items()}, "work_dir": made,
                               "results": results, "extrapolation": x}, indent=2) + "\n")
    out.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
