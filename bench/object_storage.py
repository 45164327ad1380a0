"""Object storage benchmark: planning, reading and exporting webdataset tars that live in a bucket, against
a local S3 server (moto's server mode, tests/s3server.py, which counts every request and the bytes of
every request and response body). One run, on tars it makes and uploads itself.

    python bench/object_storage.py [--plan-tars 1000] [--tars 24] [--samples 1000] [--image-kb 50] [--repeats 3]

The server runs in a thread of this process; everything measured runs in a child process (the `rewrite`
CLI, or this script started again in a hidden child mode), so the client never shares the server's GIL,
and each child pays its own interpreter start and imports, as a user's command would. The bench process
only uploads, deletes and checks, and never while a child is measured: the server's counts are zeroed
right before a child starts and read right after it ends, so they are that child's requests alone. All
children get the server's endpoint and keys in the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY), as a user would set them.

The tars are bench/export_wds.py's (`write_tar`, `make_tars`): img2dataset's layout, KEY.jpg, KEY.json,
KEY.txt per sample, the images random bytes of JPEG-like size (0.6-1.6 x --image-kb). Beside a tar, where
a section says so, go img2dataset's `NNNNN_stats.json` and `NNNNN.parquet` (one row per sample, in the
tar's order, and one failed download among them, as img2dataset lists failures too).

1. Planning --plan-tars small tars (--plan-samples samples of 4 KB images; one tar made, uploaded under
   every name) with `rewrite shard s3://bench-src/PREFIX/ --out WORK`: once with `_stats.json` and the
   parquet beside each tar, once under another prefix with the tars alone (the plan then reads each tar's
   member headers by range reads). Reported per run: wall seconds of the command (start-up included), the
   server's requests (by method), bytes sent by the server, GETs of .tar objects (0 with stats: no tar is
   opened) and the command's peak RSS. Best of --repeats for the time.
2. Caption read: --tars tars of --samples samples uploaded twice, once with stats and parquet beside them,
   once with the stats alone (so that both plans open no tar; section 1 measures the header scan). Both prefixes are planned with the CLI (counted too), then a
   child reads every shard's keys and captions the way a run does (`plan.iter_shard(manifest, shard,
   1000)` over each shard): from the parquet beside each tar without fetching it, or by streaming each
   tar whole. Seconds (inside the child, after its imports), requests and bytes, and the ratios.
3. Export bucket to bucket. The rewrites are made first, in this process, by export_wds.py's `rewrite_all`
   (its SimulatedEngine stands in for a model: no generation is measured) over a work dir planned on the
   prefix with stats and parquet. Then, interleaved in a rotated order each repeat, each into a fresh
   prefix of another bucket (removed, untimed, after each run):
   - `rewrite export --work WORK --out s3://bench-dst/... --format wds --no-progress` (one worker), and
     with `--workers N` (N: --workers, the machine's cores by default), as bench/export_wds.py does;
   - a client-side copy with plain s3fs in a child: for each tar, `fs.open(src, "rb")` streamed into
     `fs.open(dst, "wb")` by `shutil.copyfileobj` in 8 MiB reads, s3fs's default block sizes: every byte
     goes through the client, as through the export, which must parse each tar to change its KEY.json;
   - a server-side copy with s3fs in a child: `fs.copy(src, dst)` per tar (CopyObject, no byte through
     the client), the floor of any copy.
   Each is the wall time of its child (interpreter start and imports included, as for the CLI); the copies
   also report their time after imports. Best of --repeats. The lead figure is export / client-side copy
   in speed (copy seconds over export seconds; the goal: at least 0.5). Beside it, the same ratio after
   imports: the copy's best time after its imports against the export timed inside the memory child of
   section 4 (one run, `export.export` after its imports). The first export is checked: every tar is
   there, and a sample's KEY.json carries the simulated rewrite of its KEY.txt.
4. Peak memory: the export runs in a child once over a work dir of 1 tar and once over --tars tars, into
   s3://; the child reads its VmHWM (peak RSS, /proc/self/status) at the end, and its RSS after the imports
   (rewrite, pyarrow.parquet, s3fs, pyarrow's compute kernels) before exporting. The ratio of the peaks
   should be about 1: an export streams each tar, it does not hold it.

Results go to bench/results/<time>-object_storage.json and .md (or --out-json PATH and PATH with .md).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"
for folder in (ROOT, TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

_spec = importlib.util.spec_from_file_location("bench_export_wds", HERE / "export_wds.py")  # (it puts bench/ on the path)
ew = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ew)
from machine import cpu_flags  # noqa: E402

SRC, DST = "bench-src", "bench-dst"
MB = 1e6
PLAN_IMAGE_KB = 4
COPY_BUFFER = 8 << 20
CHUNK_ROWS = 1000


# ---------------------------------------------------------------------------------------------------
# the bucket: img2dataset's files, uploads, clean-up

def img2dataset_files(tar_bytes: bytes) -> tuple[bytes, bytes]:
    """The NNNNN.parquet and NNNNN_stats.json img2dataset writes beside a tar: a row per sample from its
    KEY.json, in the tar's order, plus one failed download (second row) that the tar does not hold."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            if member.name.endswith(".json"):
                meta = json.loads(tar.extractfile(member).read())
                rows.append({k: meta[k] for k in ("key", "caption", "url", "status", "error_message", "width",
                                                  "height", "original_width", "original_height", "exif", "sha256")})
    failed = {**rows[0], "key": rows[0]["key"][:-4] + "9999", "caption": "never downloaded", "status":
              "failed_to_download", "error_message": "HTTP Error 404", "width": None, "height": None}
    rows.insert(1, failed)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    successes = len(rows) - 1
    stats = {"count": len(rows), "successes": successes, "failed_to_download": 1, "failed_to_resize": 0,
             "duration": 1.0, "status_dict": {"success": successes, "failed_to_download": 1}}
    return buf.getvalue(), json.dumps(stats).encode()


def client():
    import boto3
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")


def upload(objects: list[tuple[str, str, bytes | Path]], threads: int = 8) -> None:
    """(bucket, key, bytes or a local file) put in parallel threads."""
    s3 = client()

    def put(item):
        bucket, key, body = item
        s3.put_object(Bucket=bucket, Key=key, Body=body.read_bytes() if isinstance(body, Path) else body)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, objects))


def keys(bucket: str, prefix: str) -> list[str]:
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def delete_prefix(bucket: str, prefix: str) -> None:
    s3, found = client(), keys(bucket, prefix)
    for i in range(0, len(found), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in found[i:i + 1000]]})


def get(bucket: str, key: str) -> bytes:
    return client().get_object(Bucket=bucket, Key=key)["Body"].read()


# ---------------------------------------------------------------------------------------------------
# measuring a child

def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def measured(server, cmd: list[str]) -> dict:
    """Run a child with the server's counts zeroed before and read after: wall seconds, peak RSS (its own
    rusage, wait4), the server's counts and requests, and the child's stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        server.zero_counts()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        counts, requests = server.counts(), server.requests()
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {code}:\n{err.read()[-3000:]}")
        tar_gets = [p for m, p in requests if m == "GET" and p.split("?", 1)[0].endswith(".tar")]
        return {"seconds": seconds, "peak_rss_kb": usage.ru_maxrss, "requests": counts["requests"],
                "by_method": counts["by_method"], "bytes_out": counts["bytes_out"], "bytes_in": counts["bytes_in"],
                "tar_gets": len(tar_gets), "stdout": out.read()}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rewrite.cli", *args]


def me(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _rotated(items: list, r: int) -> list:
    return items[r % len(items):] + items[:r % len(items)]


def _strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "stdout"}


# ---------------------------------------------------------------------------------------------------
# 1. planning many tars

def plan_many(server, tmp: Path, count: int, samples: int, repeats: int) -> dict:
    folder = tmp / "plan-tar"
    ew.make_tars(folder, 1, samples, PLAN_IMAGE_KB, seed=7)
    data = (folder / "00000.tar").read_bytes()
    table, stats = img2dataset_files(data)
    objects = []
    for s in range(count):
        objects += [(SRC, f"plan-stats/{s:05d}.tar", data), (SRC, f"plan-stats/{s:05d}.parquet", table),
                    (SRC, f"plan-stats/{s:05d}_stats.json", stats), (SRC, f"plan-bare/{s:05d}.tar", data)]
    started = time.perf_counter()
    upload(objects)
    print(f"  uploaded {len(objects)} objects in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    result = {"tars": count, "samples_per_tar": samples, "tar_bytes": count * len(data)}
    for label, prefix in (("stats", "plan-stats"), ("scan", "plan-bare")):
        runs = []
        for r in range(repeats):
            work = tmp / f"plan-work-{label}-{r}"
            run = measured(server, cli("shard", f"s3://{SRC}/{prefix}/", "--out", str(work)))
            manifest = json.loads((work / "manifest.json").read_text())
            if manifest["total_rows"] != count * samples or len(manifest["shards"]) != count:
                raise SystemExit(f"plan of s3://{SRC}/{prefix}/: {manifest['total_rows']} rows in "
                                 f"{len(manifest['shards'])} shards, expected {count * samples} in {count}")
            shutil.rmtree(work)
            runs.append(_strip(run))
            print(f"  plan ({label}) {r + 1}/{repeats}: {run['seconds']:.2f} s, {run['requests']} requests, "
                  f"{run['bytes_out']} bytes out, {run['tar_gets']} tar GETs", file=sys.stderr)
        result[label] = {"runs": runs, "best_seconds": min(x["seconds"] for x in runs),
                         **{k: max(x[k] for x in runs) for k in ("requests", "bytes_out", "tar_gets", "peak_rss_kb")},
                         "by_method": runs[-1]["by_method"]}
    delete_prefix(SRC, "plan-")
    return result


# ---------------------------------------------------------------------------------------------------
# 2. a run's caption read: from the parquet beside each tar, or by streaming the tar

def child_read(work: str) -> None:
    """In the child: every shard's keys and captions as a run reads them; seconds after the imports."""
    from rewrite.inputs import plan
    from rewrite.workdir.manifest import load_manifest

    started = time.perf_counter()
    manifest = load_manifest(work)
    rows = chars = 0
    for s in range(manifest.num_shards):
        for table in plan.iter_shard(manifest, s, CHUNK_ROWS):
            rows += table.num_rows
            chars += sum(len(c or "") for c in table.column("caption").to_pylist())
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows, "caption_chars": chars}))


def caption_read(server, tmp: Path, names: list[str], rows: int, repeats: int) -> dict:
    result = {}
    for label, prefix in (("parquet", "caps"), ("stream", "bare")):
        work = tmp / f"read-work-{label}"
        planned = measured(server, cli("shard", f"s3://{SRC}/{prefix}/", "--out", str(work)))
        runs = []
        for r in range(repeats):
            run = measured(server, me("--child-read", str(work)))
            inner = json.loads(run["stdout"].strip().splitlines()[-1])
            if inner["rows"] != rows:
                raise SystemExit(f"reading s3://{SRC}/{prefix}/ gave {inner['rows']} rows, expected {rows}")
            runs.append({**_strip(run), "wall_seconds": run["seconds"], "seconds": inner["seconds"],
                         "caption_chars": inner["caption_chars"]})
            print(f"  read ({label}) {r + 1}/{repeats}: {inner['seconds']:.2f} s, {run['requests']} requests, "
                  f"{run['bytes_out']} bytes out, {run['tar_gets']} tar GETs", file=sys.stderr)
        if len({x["caption_chars"] for x in runs}) != 1:
            raise SystemExit(f"reads of s3://{SRC}/{prefix}/ disagree: {[x['caption_chars'] for x in runs]}")
        result[label] = {"plan": _strip(planned), "runs": runs, "best_seconds": min(x["seconds"] for x in runs),
                         **{k: max(x[k] for x in runs) for k in ("requests", "bytes_out", "tar_gets")},
                         "caption_chars": runs[0]["caption_chars"]}
    if result["parquet"]["caption_chars"] != result["stream"]["caption_chars"]:
        raise SystemExit(f"the parquet gave {result['parquet']['caption_chars']} caption characters, the tars "
                         f"{result['stream']['caption_chars']}")
    p, s = result["parquet"], result["stream"]
    result.update(rows=rows, speedup=s["best_seconds"] / p["best_seconds"],
                  bytes_ratio=s["bytes_out"] / max(1, p["bytes_out"]),
                  requests_ratio=s["requests"] / max(1, p["requests"]))
    return result


# ---------------------------------------------------------------------------------------------------
# 3. export bucket to bucket against s3fs copies

def child_copy(mode: str, src: str, dst: str, names: list[str]) -> None:
    """In the child: copy s3://SRC/NAME to s3://DST/NAME for each name with plain s3fs; seconds after the
    imports. `client`: streamed through this process; `server`: CopyObject."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    started = time.perf_counter()
    copied = 0
    for name in names:
        if mode == "client":
            with fs.open(f"{src}/{name}", "rb") as fin, fs.open(f"{dst}/{name}", "wb") as fout:
                shutil.copyfileobj(fin, fout, COPY_BUFFER)
                copied += fout.tell()
        else:
            fs.copy(f"{src}/{name}", f"{dst}/{name}")
    print(json.dumps({"seconds": time.perf_counter() - started, "bytes": copied}))


def check_export(prefix: str, names: list[str]) -> None:
    """Every tar is in the export, and a sample's KEY.json carries the simulated rewrite of its KEY.txt."""
    found = [k[len(prefix) + 1:] for k in keys(DST, prefix + "/")]
    if sorted(n for n in found if n.endswith(".tar")) != sorted(names) or ".rewrite-export.json" not in found:
        raise SystemExit(f"s3://{DST}/{prefix}/ holds {found[:5]}..., expected {names[:3]}... and the record")
    if not json.loads(get(DST, f"{prefix}/.rewrite-export.json")).get("published"):
        raise SystemExit(f"s3://{DST}/{prefix}/ is not published")
    with tarfile.open(fileobj=io.BytesIO(get(DST, f"{prefix}/{names[0]}"))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        key = next(n for n in members if n.endswith(".txt"))[:-4]
        caption = tar.extractfile(members[f"{key}.txt"]).read().decode()
        meta = json.loads(tar.extractfile(members[f"{key}.json"]).read())
    if meta.get(f"caption_{ew.SOURCE}") != ew.simulated_rewrite(caption):
        raise SystemExit(f"s3://{DST}/{prefix}/{names[0]}: {key}.json holds {meta.get(f'caption_{ew.SOURCE}')!r}, "
                         f"expected {ew.simulated_rewrite(caption)!r}")


def throughput(server, work: Path, names: list[str], tar_bytes: int, repeats: int, workers: int) -> dict:
    contenders = ["export", "copy_client", "copy_server"] + ([f"export_workers{workers}"] if workers > 1 else [])
    runs: dict[str, list[dict]] = {k: [] for k in contenders}
    for r in range(repeats):
        for what in _rotated(contenders, r):
            prefix = f"{what}-{r}"
            if what.startswith("export"):
                run = measured(server, cli("export", "--work", str(work), "--out", f"s3://{DST}/{prefix}",
                                           "--format", "wds", "--no-progress", "--workers",
                                           str(workers if what != "export" else 1)))
                if r == 0:
                    check_export(prefix, names)
            else:
                run = measured(server, me("--child-copy", what.removeprefix("copy_"), f"{SRC}/caps",
                                          f"{DST}/{prefix}", *names))
                inner = json.loads(run["stdout"].strip().splitlines()[-1])
                run["inner_seconds"] = inner["seconds"]
                if what == "copy_client" and inner["bytes"] != tar_bytes:
                    raise SystemExit(f"the client-side copy moved {inner['bytes']} bytes, the tars hold {tar_bytes}")
            copied = [k for k in keys(DST, prefix + "/") if k.endswith(".tar")]
            if len(copied) != len(names):
                raise SystemExit(f"{what}: s3://{DST}/{prefix}/ holds {len(copied)} tars, expected {len(names)}")
            delete_prefix(DST, prefix + "/")
            runs[what].append(_strip(run))
            print(f"  {what} {r + 1}/{repeats}: {tar_bytes / MB / run['seconds']:.1f} MB/s, {run['requests']} "
                  f"requests, {run['bytes_out']} out / {run['bytes_in']} in", file=sys.stderr)
    best = {k: min(x["seconds"] for x in v) for k, v in runs.items()}
    best_inner = {k: min(x["inner_seconds"] for x in v) for k, v in runs.items() if not k.startswith("export")}
    return {"tar_bytes": tar_bytes, "tars": len(names), "runs": runs, "best_seconds": best,
            "best_inner_seconds": best_inner, "mb_per_s": {k: tar_bytes / MB / v for k, v in best.items()},
            "export_over_copy_client": best["copy_client"] / best["export"],
            "export_over_copy_server": best["copy_server"] / best["export"],
            **({"export_workers_over_copy_client": best["copy_client"] / best[f"export_workers{workers}"],
                "workers": workers} if workers > 1 else {}),
            "requests": {k: v[-1]["requests"] for k, v in runs.items()},
            "by_method": {k: v[-1]["by_method"] for k, v in runs.items()},
            "bytes_out": {k: v[-1]["bytes_out"] for k, v in runs.items()},
            "bytes_in": {k: v[-1]["bytes_in"] for k, v in runs.items()}}


# ---------------------------------------------------------------------------------------------------
# 4. peak memory of the export

def child_export(work: str, out: str) -> None:
    """In the child: export into `out` (s3://), then print the peak RSS figures as JSON."""
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401  (imported before the baseline: the export needs them anyway)
    import s3fs  # noqa: F401
    from rewrite.exports import export

    pa.table({"a": ["x"]}).cast(pa.schema([("a", pa.large_string())]))  # pyarrow loads its compute kernels
    rss_after_imports = ew._status_kb("VmRSS")
    started = time.perf_counter()
    summary = export.export(work, out, fmt="wds")
    seconds = time.perf_counter() - started
    if not summary.get("published"):
        raise SystemExit(f"the export was not published: {summary}")
    print(json.dumps({"rss_after_imports_kb": rss_after_imports, "vmhwm_kb": ew._status_kb("VmHWM"),
                      "seconds": seconds}))


def peak_export(server, work: Path, prefix: str, names: list[str]) -> dict:
    run = measured(server, me("--child-export", str(work), f"s3://{DST}/{prefix}"))
    check_export(prefix, names)
    delete_prefix(DST, prefix + "/")
    return {**json.loads(run["stdout"].strip().splitlines()[-1]), "wall_seconds": run["seconds"],
            "requests": run["requests"], "bytes_out": run["bytes_out"], "bytes_in": run["bytes_in"]}


def memory(server, one_work: Path, many_work: Path, names: list[str]) -> dict:
    one = peak_export(server, one_work, "mem-1", names[:1])
    many = peak_export(server, many_work, "mem-n", names)
    return {"one": one, "many": many, "ratio": many["vmhwm_kb"] / one["vmhwm_kb"],
            "growth_ratio": (many["vmhwm_kb"] - many["rss_after_imports_kb"])
            / max(1, one["vmhwm_kb"] - one["rss_after_imports_kb"])}


# ---------------------------------------------------------------------------------------------------
# report

def cpu() -> dict:
    return {**ew.cpu(), "avx512": any(f.startswith("avx512") for f in cpu_flags())}


def _size(n: float) -> str:
    return ew._size(n)


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _methods(by: dict) -> str:
    return ", ".join(f"{n:,} {m}" for m, n in sorted(by.items()))


def report(args, c: dict, made: dict, pl: dict, rd: dict, tp: dict, mem: dict) -> str:
    mbs, one, many = tp["mb_per_s"], mem["one"], mem["many"]
    lines = [
        f"CPU: {c['model_name']}, {c['cores']} cores, avx512 {'yes' if c['avx512'] else 'no'}; local S3 server "
        f"(moto, in the bench process; every measured client in a child process); {args.tars} tars x "
        f"{args.samples:,} samples ({_size(tp['tar_bytes'])}, images {0.6 * args.image_kb:.0f}-"
        f"{1.6 * args.image_kb:.0f} KB of random bytes), rewrites by a simulated engine ({made['rows']:,} rows in "
        f"{made['seconds']:.1f} s); times are the best of {args.repeats}",
        "",
        "| measurement | result | goal |",
        "|---|---|---|",
    ]
    for label, what in (("stats", "with `_stats.json` + parquet"), ("scan", "without (header scan)")):
        r = pl[label]
        lines.append(
            f"| plan {pl['tars']:,} tars x {pl['samples_per_tar']} samples {what} | {r['best_seconds']:.2f} s "
            f"(command wall time); {r['requests']:,} requests ({_methods(r['by_method'])}); {_size(r['bytes_out'])} "
            f"sent of {_size(pl['tar_bytes'])} tar bytes; {r['tar_gets']:,} tar GETs; peak RSS "
            f"{r['peak_rss_kb'] / 1024:,.0f} MB | {'0 tar GETs' if label == 'stats' else 'no image bytes'} |")
    for label, what in (("parquet", "with `_stats.json` + parquet"), ("stream", "with `_stats.json` only (the tar streamed)")):
        r = rd[label]["plan"]
        lines.append(
            f"| plan {args.tars} tars x {args.samples:,} samples {what} | {r['seconds']:.2f} s (one run); "
            f"{r['requests']:,} requests; {_size(r['bytes_out'])} sent of {_size(tp['tar_bytes'])}; "
            f"{r['tar_gets']:,} tar GETs | |")
    for label, what in (("parquet", "from the parquet beside each tar"), ("stream", "by streaming each tar")):
        r = rd[label]
        lines.append(
            f"| a run's caption read, {rd['rows']:,} rows {what} | {r['best_seconds']:.2f} s after imports; "
            f"{r['requests']:,} requests; {_size(r['bytes_out'])} sent; {r['tar_gets']:,} tar GETs | |")
    lines += [
        f"| caption read: parquet against streaming | {rd['speedup']:.2f} x as fast, {rd['bytes_ratio']:,.1f} x "
        f"fewer bytes, {rd['requests_ratio']:.2f} x the requests (streaming / parquet) | |",
        f"| **export / client-side copy** (speed, wall time of each child) | **{tp['export_over_copy_client']:.2f}** "
        f"| >= 0.5 |",
        *([f"| **export --workers {tp['workers']} / client-side copy** | **{tp['export_workers_over_copy_client']:.2f}** "
           "| >= 0.5 |"] if "workers" in tp else []),
        f"| export / client-side copy, after imports (export timed in the {args.tars}-tar memory child, one run) | "
        f"{tp['export_over_copy_client_after_imports']:.2f} | |",
        f"| export / server-side copy | {tp['export_over_copy_server']:.2f} | |",
        f"| `rewrite export --format wds` bucket to bucket | {_rate(mbs['export'])} MB/s "
        f"({tp['best_seconds']['export']:.2f} s; {tp['requests']['export']:,} requests "
        f"({_methods(tp['by_method']['export'])}), {_size(tp['bytes_out']['export'])} read, "
        f"{_size(tp['bytes_in']['export'])} written) | |",
        f"| client-side copy, plain s3fs (`open` -> `open`, copyfileobj) | {_rate(mbs['copy_client'])} MB/s "
        f"({tp['best_seconds']['copy_client']:.2f} s; {tp['best_inner_seconds']['copy_client']:.2f} s after "
        f"imports; {tp['requests']['copy_client']:,} requests) | |",
        f"| server-side copy, s3fs `copy` (CopyObject) | {_rate(mbs['copy_server'])} MB/s "
        f"({tp['best_seconds']['copy_server']:.2f} s; {tp['best_inner_seconds']['copy_server']:.2f} s after "
        f"imports; {tp['requests']['copy_server']:,} requests) | |",
        f"| export peak RSS, 1 tar | {one['vmhwm_kb'] / 1024:,.0f} MB ({one['rss_after_imports_kb'] / 1024:,.0f} MB "
        f"before exporting) | |",
        f"| export peak RSS, {args.tars} tars | {many['vmhwm_kb'] / 1024:,.0f} MB "
        f"({many['rss_after_imports_kb'] / 1024:,.0f} MB before exporting) | |",
        f"| peak RSS {args.tars} tars / 1 tar | {mem['ratio']:.2f} (growth while exporting: "
        f"{(many['vmhwm_kb'] - many['rss_after_imports_kb']) / 1024:,.0f} vs "
        f"{(one['vmhwm_kb'] - one['rss_after_imports_kb']) / 1024:,.0f} MB) | ~1 |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan-tars", type=int, default=1000, help="tars for the planning run")
    ap.add_argument("--plan-samples", type=int, default=8, help="samples per tar of the planning run")
    ap.add_argument("--tars", type=int, default=24, help="tars for the caption read, export and memory runs")
    ap.add_argument("--samples", type=int, default=1000, help="samples per tar of those runs")
    ap.add_argument("--image-kb", type=float, default=50, help="images are 0.6-1.6 x this many KB")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the best counts")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="also time `rewrite export --workers N` (default: the machine's cores; 1: not)")
    ap.add_argument("--tmp-dir", help="where the local tars and work dirs go (default: the system's temp dir)")
    ap.add_argument("--out-json", help="the JSON result file (default bench/results/<time>-object_storage.json); "
                    "the markdown goes beside it")
    ap.add_argument("--child-read", metavar="WORK", help=argparse.SUPPRESS)
    ap.add_argument("--child-copy", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    ap.add_argument("--child-export", nargs=2, metavar=("WORK", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_read:
        return child_read(args.child_read)
    if args.child_copy:
        mode, src, dst, *names = args.child_copy
        return child_copy(mode, f"s3://{src}", f"s3://{dst}", names)
    if args.child_export:
        return child_export(*args.child_export)

    from s3server import S3Server, make_bucket, s3_env

    started = time.perf_counter()
    c = cpu()
    server = S3Server().start()
    os.environ.update(s3_env(server))
    try:
        for bucket in (SRC, DST):
            make_bucket(server, bucket)
        with tempfile.TemporaryDirectory(prefix="object_storage-", dir=args.tmp_dir) as name:
            tmp = Path(name)
            print(f"planning {args.plan_tars} tars in s3://{SRC}/ (server {server.endpoint})", file=sys.stderr)
            pl = plan_many(server, tmp, args.plan_tars, args.plan_samples, args.repeats)

            print(f"making {args.tars} tars x {args.samples} samples, uploading them twice", file=sys.stderr)
            tar_bytes = ew.make_tars(tmp / "tars", args.tars, args.samples, args.image_kb)
            tars = sorted((tmp / "tars").glob("*.tar"))
            names = [t.name for t in tars]
            objects = []
            for t in tars:
                table, stats = img2dataset_files(t.read_bytes())
                stem = t.name[:-len(".tar")]
                objects += [(SRC, f"caps/{t.name}", t), (SRC, f"caps/{stem}.parquet", table),
                            (SRC, f"caps/{stem}_stats.json", stats), (SRC, f"bare/{t.name}", t),
                            (SRC, f"bare/{stem}_stats.json", stats)]
            upload(objects, threads=4)
            rows = args.tars * args.samples
            print("caption read: parquet beside each tar against streaming the tar", file=sys.stderr)
            rd = caption_read(server, tmp, names, rows, args.repeats)
            delete_prefix(SRC, "bare/")

            print("rewriting with the simulated engine", file=sys.stderr)
            made = ew.rewrite_all(f"s3://{SRC}/caps/", tmp / "work")
            if made["rows"] != rows or made["ok"] + made["failed"] == 0:
                raise SystemExit(f"the simulated run made {made}, expected {rows} rows")
            print("export bucket to bucket against s3fs copies", file=sys.stderr)
            tp = throughput(server, tmp / "work", names, tar_bytes, args.repeats, args.workers)

            print("peak memory: export of 1 tar and of all in subprocesses", file=sys.stderr)
            ew.rewrite_all(f"s3://{SRC}/caps/{names[0]}", tmp / "work-1")
            mem = memory(server, tmp / "work-1", tmp / "work", names)
            tp["export_over_copy_client_after_imports"] = (tp["best_inner_seconds"]["copy_client"]
                                                           / mem["many"]["seconds"])
    finally:
        server.stop()
    table = report(args, c, made, pl, rd, tp, mem)
    print(table)
    json_path = Path(args.out_json) if args.out_json else (
        HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-object_storage.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"args": vars(args), "cpu": c, "rewrite": made, "plan": pl, "caption_read": rd,
                                     "throughput": tp, "memory": mem, "seconds": time.perf_counter() - started},
                                    indent=2) + "\n")
    json_path.with_suffix(".md").write_text(table + "\n")
    print(f"\nwritten: {json_path} and {json_path.with_suffix('.md').name} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
