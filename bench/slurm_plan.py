"""Planning and a dry-run Slurm submission at scale: a 10M-row parquet file made here, planned into
1,200 shards, then `rewrite slurm submit --dry-run` over all of them (more shards than Slurm's default
MaxArraySize of 1001, so tasks take several shards each). Each step runs as a real `rewrite` command
in a subprocess; the time and the peak memory (max RSS) of each are reported.

    python bench/slurm_plan.py [--rows 10000000] [--shards 1200]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_input(path: Path, rows: int, group: int = 1_000_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("key", pa.string()), ("caption", pa.string())])) as writer:
        for start in range(0, rows, group):
            ids = range(start, min(rows, start + group))
            writer.write_table(pa.table({"key": [f"{i:010d}" for i in ids],
                                         "caption": [f"photo number {i} of a street at night" for i in ids]}),
                               row_group_size=100_000)


def timed(cmd: list[str]) -> dict:
    """Run a command; its wall time, and the peak RSS of that process from its own rusage (wait4). This
    process stays small (the input is made in a child), so the fork before exec does not inflate it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()[-2000:]}")
        return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), "stdout": out.read()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=1200)
    ap.add_argument("--make", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_input(Path(args.make), args.rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "captions.parquet"
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make", str(data), "--rows", str(args.rows)], check=True)
        made = time.perf_counter() - started
        cli = [sys.executable, "-m", "rewrite.cli"]
        shard = timed([*cli, "shard", str(data), "--out", f"{tmp}/work", "--num-shards", str(args.shards)])
        submit = timed([*cli, "slurm", "submit", "--work", f"{tmp}/work", "--source", "coco", "--parallel", "64",
                        "--gpus", "1", "--time", "4:00:00", "--dry-run", "--", "--engine", "vllm"])
        array = next(line for line in submit["stdout"].splitlines() if line.startswith("#SBATCH --array"))
        result = {"rows": args.rows, "shards": args.shards, "input_mb": round(data.stat().st_size / 2**20),
                  "make_input_seconds": round(made, 1), "plan": {k: v for k, v in shard.items() if k != "stdout"},
                  "dry_run_submit": {k: v for k, v in submit.items() if k != "stdout"}, "array_line": array}
    print(json.dumps(result, indent=2))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"slurm-plan-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
