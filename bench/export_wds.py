"""Webdataset benchmark: wds export throughput against a plain copy, the export's peak memory from 1 to
N tars, and planning 1,000 tars without reading image bytes. One run, on tars it makes itself.

    python bench/export_wds.py [--tars 24] [--samples 1000] [--image-kb 50] [--plan-tars 1000] [--workers N]

The tars follow img2dataset's layout: `{shard:05d}.tar` holding KEY.jpg, KEY.json, KEY.txt per sample
(9-digit keys, members in the order webdataset's TarWriter writes them), with `{shard:05d}_stats.json`
beside each. The images are random bytes of JPEG-like size (0.6-1.6 x --image-kb, i.e. 30-80 KB by
default); nothing ever decodes them.

1. Export throughput. The rewrites are made first with `runner.run` and `SimulatedEngine`, defined
   here: it stands in for a model (each rewrite is the caption's words reversed plus a word, no model,
   no sampling), so that only the export is measured, not generation. Then, after a warm-up read of
   every tar (so the page cache holds the inputs for every contender alike), `export.export(work, out,
   fmt="wds")` is timed against `shutil.copyfile` of each tar into another folder, and against the same
   copy followed by an fsync of each file (the export fsyncs each tar it commits), against a copy
   through a buffer in Python (what any copy that must see the bytes costs, before parsing a header),
   and, with --workers N > 1 (default: the machine's cores), against `export(..., workers=N)`. Each is timed 3 times,
   interleaved (in a rotated order each repeat), with `os.sync()` before each (so writeback of the
   previous one does not overlap); each timed run follows an untimed run of the same contender whose
   output was just removed, so all write into memory in the same state (see `throughput`). The best
   counts, since other jobs may share the CPU. MB/s are input tar bytes (10^6) per second, and the
   ratio export/copy is taken within the run (the goal: at least 0.5). 24 tars by default: an export
   pays a start-up the copy does not (status read, worker processes forked, pyarrow started in each,
   the last tar's fsync and the publish: about 30 ms with 2 workers), which over 10 tars of 59 MB is a
   tenth of the export's time and over 24 a twentieth; a real export has hundreds of tars or more.
2. Peak memory. The export runs in a subprocess, once over a work dir of 1 tar and once over one of
   --tars tars of the same size; the child reports its VmHWM (peak RSS, /proc/self/status) and its RSS
   after the imports (rewrite, pyarrow.parquet, and pyarrow's compute kernels, which it loads on first
   use: about 45 MB), before exporting. The ratio of the two peaks should be about 1.
3. Planning --plan-tars webdataset tars (--plan-samples samples each; one tar written, the others hard
   links to it) with `plan.plan([folder], work)`: with img2dataset's `_stats.json` beside each tar
   (counts from the stats, no tar opened) and without (one scan of each tar's headers). Bytes read from
   the tars are counted by the bench's own instrumentation: `rewrite.tars.samples._CountingFile` (the file
   object every read and count of samples goes through) is swapped, for the measurement only, for a subclass that adds
   every read to a `tars.ByteCounter` (plan takes no counter); `rchar` of /proc/self/io (every byte the
   process read, stats files included) cross-checks it. Best of 3 for the time.

Results go to bench/results/<time>-export_wds.json and .md (or --out-json PATH and PATH with .md).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (ROOT, HERE):  # HERE: machine.py, also when a test loads this file by its path
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from machine import cpu_flags, cpu_model

from rewrite.engines.base import Completion, Engine, Request
from rewrite.defaults import Sampling
from rewrite.run.config import RunConfig

SOURCE = "chatgpt"
MB = 1e6
MTIME = 1_700_000_000
WORDS = ("a photo of the red small large dog cat man woman child street city beach mountain river tree house car "
         "bicycle table kitchen plate food sunset sky cloud snow field flower garden window door wooden old new "
         "black white blue green yellow sitting standing running walking near under over next to with on in at "
         "two three group people playing holding looking vintage colorful bright dark view close up").split()
ADDED_WORD = "indeed"


# ---------------------------------------------------------------------------------------------------
# the simulated engine

class SimulatedEngine(Engine):
    """Stands in for a model so that only the export is measured: each rewrite is the caption's words in
    reverse order plus one word, deterministic, computed from the prompt's last line (`caption =>`).
    Tokens are UTF-8 bytes."""

    name = "simulated"
    model = "simulated-no-model"

    @property
    def context_length(self) -> int:
        return 1 << 20

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="ignore")

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        out = []
        for r in requests:
            caption = r.prompt.rsplit("\n", 1)[-1].removesuffix("=>").strip()
            text = " " + simulated_rewrite(caption) + "\n"
            out.append(Completion(text, prompt_tokens=len(r.prompt.encode("utf-8")),
                                  generated_tokens=len(text.encode("utf-8")), finish_reason="stop"))
        return out


def simulated_rewrite(caption: str) -> str:
    return " ".join(caption.split()[::-1] + [ADDED_WORD])


# ---------------------------------------------------------------------------------------------------
# making img2dataset-like tars

def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o444
    info.uname = info.gname = "bigdata"
    tar.addfile(info, BytesIO(data))


def write_tar(path: Path, shard: int, samples: int, image_kb: float, pool: bytes, rng: random.Random) -> int:
    """One img2dataset-like shard and its _stats.json; returns the tar's size in bytes."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(samples):
            key = f"{shard * 10_000 + i:09d}"
            size = int(rng.uniform(0.6, 1.6) * image_kb * 1024)
            start = rng.randrange(0, len(pool) - size)
            caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16)))
            meta = {"url": f"https://example.com/images/{key}.jpg", "caption": caption, "key": key,
                    "status": "success", "error_message": None, "width": 256, "height": 256,
                    "original_width": rng.randint(300, 1600), "original_height": rng.randint(300, 1600),
                    "exif": "{}", "sha256": f"{rng.getrandbits(256):064x}"}
            _member(tar, f"{key}.jpg", pool[start:start + size])
            _member(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
            _member(tar, f"{key}.txt", caption.encode("utf-8"))
    write_stats(path, samples)
    return path.stat().st_size


def write_stats(tar: Path, samples: int) -> None:
    stats = {"count": samples, "successes": samples, "failed_to_download": 0, "failed_to_resize": 0,
             "duration": 1.0, "status_dict": {"success": samples}}
    tar.with_name(tar.name[:-len(".tar")] + "_stats.json").write_text(json.dumps(stats), encoding="utf-8")


def make_tars(folder: Path, count: int, samples: int, image_kb: float, seed: int = 0) -> int:
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    pool = random.Random(seed + 1).randbytes(16 << 20)
    return sum(write_tar(folder / f"{s:05d}.tar", s, samples, image_kb, pool, rng) for s in range(count))


def warm_read(paths: Sequence[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


def rewrite_all(inputs: Path, work: Path) -> dict:
    """Plan `inputs` (one shard per tar) and rewrite every shard with the simulated engine."""
    from rewrite.inputs import plan
    from rewrite.run import runner

    manifest = plan.plan([str(inputs)], work)
    started = time.perf_counter()
    stats = runner.run(work, RunConfig(source=SOURCE), list(range(manifest.num_shards)), SimulatedEngine(),
                       progress=False)
    return {"shards": manifest.num_shards, "rows": manifest.total_rows, "seconds": time.perf_counter() - started,
            "ok": sum(s["ok"] for s in stats), "failed": sum(s["failed"] for s in stats)}


# ---------------------------------------------------------------------------------------------------
# 1. throughput

def time_copy(tars: Sequence[Path], dest: Path, fsync: bool) -> float:
    dest.mkdir()
    started = time.perf_counter()
    for t in tars:
        shutil.copyfile(t, dest / t.name)
        if fsync:
            with open(dest / t.name, "rb+") as f:
                os.fsync(f.fileno())
    return time.perf_counter() - started


def time_userspace_copy(tars: Sequence[Path], dest: Path) -> float:
    """The same bytes through a buffer in this process (pread, write; no tar parsing, no fsync): the
    ceiling of any copy that must see the bytes, as the export must to change KEY.json members."""
    dest.mkdir()
    started = time.perf_counter()
    for t in tars:
        src, dst = os.open(t, os.O_RDONLY), os.open(dest / t.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            while data := os.read(src, 1 << 18):
                os.write(dst, data)
        finally:
            os.close(src)
            os.close(dst)
    return time.perf_counter() - started


def time_export(work: Path, out: Path, workers: int = 1) -> float:
    from rewrite.exports import export  # noqa: F401  (imported before the baseline, as the others)

    started = time.perf_counter()
    summary = export.export(work, out, fmt="wds", workers=workers)
    seconds = time.perf_counter() - started
    if not summary.get("published"):
        raise SystemExit(f"the export was not published: {summary}")
    return seconds


def check_export(out: Path, tars: Sequence[Path]) -> None:
    """The export holds every tar, and a sample's KEY.json carries the simulated rewrite of its KEY.txt."""
    names = sorted(p.name for p in out.glob("*.tar"))
    if names != sorted(t.name for t in tars):
        raise SystemExit(f"export wrote {names[:3]}..., expected {[t.name for t in tars][:3]}...")
    with tarfile.open(out / tars[0].name) as tar:
        members = {m.name: m for m in tar.getmembers()}
        key = next(n for n in members if n.endswith(".txt"))[:-4]
        caption = tar.extractfile(members[f"{key}.txt"]).read().decode()
        meta = json.loads(tar.extractfile(members[f"{key}.json"]).read())
    if meta.get(f"caption_{SOURCE}") != simulated_rewrite(caption):
        raise SystemExit(f"{out / tars[0].name}: {key}.json holds {meta.get(f'caption_{SOURCE}')!r}, expected "
                         f"{simulated_rewrite(caption)!r}")


def _rotated(items: list, r: int) -> list:
    return items[r % len(items):] + items[:r % len(items)]


def _run(what: str, work: Path, tars: list[Path], target: Path) -> float:
    os.sync()
    if what.startswith("export"):
        seconds = time_export(work, target, workers=int(what.partition("_workers")[2] or 1))
    elif what == "copy_userspace":
        seconds = time_userspace_copy(tars, target)
    else:
        seconds = time_copy(tars, target, fsync=what == "copy_fsync")
    return seconds


def throughput(work: Path, tars: list[Path], tmp: Path, repeats: int, workers: int) -> dict:
    """Each timed run follows an untimed run of the same contender whose output was just removed, so that
    every contender writes into memory in the same state. Without it the copy's speed on this VM swung
    from 350 to 3,800 MB/s with whatever ran before it (a fresh 590 MB write, the export's fsynced
    output just deleted), while the export, bound by the CPU, stayed within 10%."""
    total = sum(t.stat().st_size for t in tars)
    warm_read(tars)
    times: dict[str, list[float]] = {"copy": [], "copy_fsync": [], "copy_userspace": [], "export": []}
    if workers > 1:
        times[f"export_workers{workers}"] = []
    untimed: dict[str, list[float]] = {k: [] for k in times}
    for r in range(repeats):
        for what in _rotated(list(times), r):  # each contender follows a different one in each repeat
            target = tmp / f"{what}-{r}"
            untimed[what].append(_run(what, work, tars, target))
            if what == "export" and r == 0:
                check_export(target, tars)
            shutil.rmtree(target)
            seconds = _run(what, work, tars, target)
            shutil.rmtree(target)
            times[what].append(seconds)
            print(f"  {what} {r + 1}/{repeats}: {total / MB / seconds:.0f} MB/s (its untimed run before: "
                  f"{total / MB / untimed[what][-1]:.0f} MB/s)", file=sys.stderr)
    best = {k: min(v) for k, v in times.items()}
    return {"tar_bytes": total, "seconds": times, "untimed_seconds": untimed, "best_seconds": best,
            "mb_per_s": {k: total / MB / v for k, v in best.items()},
            "export_over_copy": best["copy"] / best["export"],
            "export_over_copy_fsync": best["copy_fsync"] / best["export"],
            "userspace_copy_over_copy": best["copy"] / best["copy_userspace"],
            "workers": workers,
            "export_workers_over_copy": best["copy"] / best[f"export_workers{workers}"] if workers > 1 else None}


# ---------------------------------------------------------------------------------------------------
# 2. peak memory

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child_export(work: str, out: str) -> None:
    """In the subprocess: export, then print peak RSS figures as JSON."""
    import resource

    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401  (imported before the baseline: the export needs them anyway)
    from rewrite.exports import export  # noqa: F401  (imported before the baseline, as the others)

    pa.table({"a": ["x"]}).cast(pa.schema([("a", pa.large_string())]))  # pyarrow loads its compute kernels
    rss_after_imports = _status_kb("VmRSS")
    seconds = time_export(Path(work), Path(out))
    print(json.dumps({"rss_after_imports_kb": rss_after_imports, "vmhwm_kb": _status_kb("VmHWM"),
                      "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "seconds": seconds}))


def peak_export(work: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, "--child-export", str(work), str(out)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"export subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    shutil.rmtree(out)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(one_work: Path, many_work: Path, tmp: Path) -> dict:
    one = peak_export(one_work, tmp / "mem-out-1")
    many = peak_export(many_work, tmp / "mem-out-n")
    return {"one": one, "many": many, "ratio": many["vmhwm_kb"] / one["vmhwm_kb"],
            "growth_ratio": (many["vmhwm_kb"] - many["rss_after_imports_kb"])
            / max(1, one["vmhwm_kb"] - one["rss_after_imports_kb"])}


# ---------------------------------------------------------------------------------------------------
# 3. planning many tars

def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


@contextlib.contextmanager
def counting_tar_reads():
    """Every read rewrite.tars makes of a tar file, added to one ByteCounter (and each open counted)."""
    from rewrite import tars
    from rewrite.tars import samples

    counter, opened, original = tars.ByteCounter(), [0], samples._CountingFile

    class Counting(original):
        def __init__(self, path, given=None, ranges=False):
            super().__init__(path, given if given is not None else counter, ranges)
            opened[0] += 1

    samples._CountingFile = Counting
    try:
        yield counter, opened
    finally:
        samples._CountingFile = original


def plan_many(tmp: Path, count: int, samples: int, image_kb: float, repeats: int) -> dict:
    from rewrite.inputs import plan

    with_stats, without = tmp / "plan-with-stats", tmp / "plan-without-stats"
    make_tars(with_stats, 1, samples, image_kb, seed=7)
    without.mkdir()
    first = with_stats / "00000.tar"
    for s in range(count):
        name = f"{s:05d}.tar"
        if s:
            os.link(first, with_stats / name)
            write_stats(with_stats / name, samples)
        os.link(first, without / name)
    tar_bytes = count * first.stat().st_size
    stats_bytes = sum(p.stat().st_size for p in with_stats.glob("*_stats.json"))
    results = {"tars": count, "samples_per_tar": samples, "tar_bytes": tar_bytes, "stats_bytes": stats_bytes}
    for label, folder in (("stats", with_stats), ("scan", without)):
        runs = []
        for r in range(repeats):
            work = tmp / f"plan-work-{label}-{r}"
            with counting_tar_reads() as (counter, opened):
                before = _rchar()
                started = time.perf_counter()
                manifest = plan.plan([str(folder)], work)
                seconds = time.perf_counter() - started
                rchar = _rchar() - before
            if manifest.total_rows != count * samples or manifest.num_shards != count:
                raise SystemExit(f"plan of {folder}: {manifest.total_rows} rows in {manifest.num_shards} shards, "
                                 f"expected {count * samples} in {count}")
            runs.append({"seconds": seconds, "tar_bytes_read": counter.bytes_read, "tars_opened": opened[0],
                         "rchar": rchar})
            shutil.rmtree(work)
            print(f"  plan ({label}) {r + 1}/{repeats}: {seconds:.2f} s, {counter.bytes_read} tar bytes read",
                  file=sys.stderr)
        results[label] = {"runs": runs, "best_seconds": min(x["seconds"] for x in runs),
                          "tar_bytes_read": max(x["tar_bytes_read"] for x in runs),
                          "tars_opened": max(x["tars_opened"] for x in runs),
                          "rchar": max(x["rchar"] for x in runs)}
    return results


# ---------------------------------------------------------------------------------------------------
# report

def cpu() -> dict:
    return {"model_name": cpu_model(), "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in cpu_flags()}


def _size(n: float) -> str:
    return f"{n / MB:,.1f} MB" if n >= MB else f"{n / 1e3:,.1f} KB"


def report(args, c: dict, made: dict, tp: dict, mem: dict, pl: dict) -> str:
    mbs = tp["mb_per_s"]
    one, many = mem["one"], mem["many"]
    lines = [
        f"CPU: {c['model_name']}, {c['cores']} cores, avx512_bf16 {'yes' if c['avx512_bf16'] else 'no'}; "
        f"{args.tars} tars x {args.samples:,} samples ({_size(tp['tar_bytes'])}, images "
        f"{0.6 * args.image_kb:.0f}-{1.6 * args.image_kb:.0f} KB of random bytes), rewrites by a simulated engine "
        f"({made['rows']:,} rows in {made['seconds']:.1f} s); times are the best of {args.repeats}, warm page cache",
        "",
        "| measurement | result | goal |",
        "|---|---|---|",
        f"| copy: `shutil.copyfile` per tar | {mbs['copy']:,.0f} MB/s | |",
        f"| copy + fsync per tar | {mbs['copy_fsync']:,.0f} MB/s | |",
        f"| copy through a buffer in Python (read, write; no fsync) | {mbs['copy_userspace']:,.0f} MB/s "
        f"({tp['userspace_copy_over_copy']:.2f} x copy) | |",
        f"| export `--format wds` (fsyncs each tar) | {mbs['export']:,.0f} MB/s | |",
        f"| export / copy | {tp['export_over_copy']:.2f} | >= 0.5 |",
        f"| export / (copy + fsync) | {tp['export_over_copy_fsync']:.2f} | |",
    ]
    if tp.get("export_workers_over_copy"):
        w = tp["workers"]
        lines += [f"| export `--workers {w}` (one process per shard) | {mbs[f'export_workers{w}']:,.0f} MB/s | |",
                  f"| export `--workers {w}` / copy | {tp['export_workers_over_copy']:.2f} | >= 0.5 |"]
    lines += [
        f"| export peak RSS, 1 tar | {one['vmhwm_kb'] / 1024:,.0f} MB ({one['rss_after_imports_kb'] / 1024:,.0f} MB "
        "before exporting) | |",
        f"| export peak RSS, {args.tars} tars | {many['vmhwm_kb'] / 1024:,.0f} MB "
        f"({many['rss_after_imports_kb'] / 1024:,.0f} MB before exporting) | |",
        f"| peak RSS {args.tars} tars / 1 tar | {mem['ratio']:.2f} (growth while exporting: "
        f"{(many['vmhwm_kb'] - many['rss_after_imports_kb']) / 1024:,.0f} vs "
        f"{(one['vmhwm_kb'] - one['rss_after_imports_kb']) / 1024:,.0f} MB) | ~1 |",
    ]
    for label, what in (("stats", "with `_stats.json`"), ("scan", "without stats (header scan)")):
        r = pl[label]
        lines.append(
            f"| plan {pl['tars']:,} tars x {pl['samples_per_tar']} samples {what} | {r['best_seconds']:.2f} s; "
            f"{r['tars_opened']:,} tars opened, {_size(r['tar_bytes_read'])} of {_size(pl['tar_bytes'])} tar bytes "
            f"read ({r['tar_bytes_read'] / pl['tar_bytes']:.2%}); process rchar {_size(r['rchar'])} | "
            f"{'no tar opened' if label == 'stats' else 'small fraction, no image bytes'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tars", type=int, default=24, help="tars for the throughput and memory runs")
    ap.add_argument("--samples", type=int, default=1000, help="samples per tar of the throughput and memory runs")
    ap.add_argument("--image-kb", type=float, default=50, help="images are 0.6-1.6 x this many KB")
    ap.add_argument("--plan-tars", type=int, default=1000, help="tars for the planning run")
    ap.add_argument("--plan-samples", type=int, default=20, help="samples per tar of the planning run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="also time `export --workers N` (default: this machine's cores; 1 times only the default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the best counts")
    ap.add_argument("--tmp-dir", help="where the temporary tars go (default: the system's temp dir)")
    ap.add_argument("--out-json", help="the JSON result file (default bench/results/<time>-export_wds.json); "
                    "the markdown goes beside it")
    ap.add_argument("--child-export", nargs=2, metavar=("WORK", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_export:
        child_export(*args.child_export)
        return
    started = time.perf_counter()
    c = cpu()
    with tempfile.TemporaryDirectory(prefix="export_wds-", dir=args.tmp_dir) as name:
        tmp = Path(name)
        print(f"making {args.tars} tars x {args.samples} samples in {tmp}", file=sys.stderr)
        make_tars(tmp / "tars", args.tars, args.samples, args.image_kb)
        tars = sorted((tmp / "tars").glob("*.tar"))
        made = rewrite_all(tmp / "tars", tmp / "work")
        print(f"rewrote {made['rows']} rows in {made['seconds']:.1f} s; timing export against copy", file=sys.stderr)
        tp = throughput(tmp / "work", tars, tmp, args.repeats, args.workers)

        print("peak memory: export of 1 tar and of all in subprocesses", file=sys.stderr)
        (tmp / "tars-1").mkdir()
        os.link(tars[0], tmp / "tars-1" / tars[0].name)
        write_stats(tmp / "tars-1" / tars[0].name, args.samples)
        rewrite_all(tmp / "tars-1", tmp / "work-1")
        mem = memory(tmp / "work-1", tmp / "work", tmp)

        print(f"planning {args.plan_tars} tars", file=sys.stderr)
        pl = plan_many(tmp, args.plan_tars, args.plan_samples, args.image_kb, args.repeats)
    table = report(args, c, made, tp, mem, pl)
    print(table)
    if args.out_json:
        json_path = Path(args.out_json)
    else:
        json_path = HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-export_wds.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"args": vars(args), "cpu": c, "rewrite": made, "throughput": tp, "memory": mem,
                                     "plan": pl, "seconds": time.perf_counter() - started}, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(table + "\n")
    print(f"\nwritten: {json_path} and {json_path.with_suffix('.md').name} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
