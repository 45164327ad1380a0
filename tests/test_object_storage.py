"""Inputs read from and exports written to object storage, against a real S3 server on 127.0.0.1 (moto's
server mode, tests/s3server.py) talked to by the real clients (s3fs in the CLI, boto3 here, the AWS CLI
in open_clip's `pipe:`), and a read-only HTTP server for https://-style inputs. Faults are real HTTP
failures injected in front of the server: throttling, connections dropped mid-upload and mid-read, wrong
credentials, a missing bucket."""
from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import CAPTIONS, run_cli
from s3server import RangeHTTPServer, S3Server, make_bucket, s3_env

SECRET = "s3cr3t-never-written-4f9a"
SOURCE = "coco"


@pytest.fixture(scope="module")
def s3():
    """One server for the module; its environment set for this process and the CLI it starts."""
    server = S3Server().start()
    saved = dict(os.environ)
    os.environ.update(s3_env(server, secret=SECRET))
    yield server
    os.environ.clear()
    os.environ.update(saved)
    server.stop()


@pytest.fixture
def fresh(s3):
    """Empty buckets src and dst, faults cleared, counts zeroed (the export tests' buckets stay)."""
    s3.clear_faults()
    s3.accepted_key = None
    client = _client(s3)
    for name in ("src", "dst"):
        if name in [b["Name"] for b in client.list_buckets()["Buckets"]]:
            for key in _keys(s3, name):
                client.delete_object(Bucket=name, Key=key)
            for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
            client.delete_bucket(Bucket=name)
        make_bucket(s3, name)
    s3.zero_counts()
    return s3


def _client(s3):
    import boto3
    return boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")


def _jpeg(i: int, side: int) -> bytes:
    """A real JPEG of noise (it does not compress): images dominate a tar's bytes, as in img2dataset's."""
    from PIL import Image
    rng = random.Random(i)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(buf, "JPEG")
    return buf.getvalue()


def _img2dataset_shards(s3, prefix: str, tars: int = 2, per: int = 3, side: int = 32, stats: bool = True,
                        bucket: str = "src") -> list[bytes]:
    """img2dataset-style shards in s3://BUCKET/PREFIX/: NNNNN.tar (KEY.jpg, KEY.txt, KEY.json, samples in
    completion order), NNNNN.parquet (every row, a failed download among them) and NNNNN_stats.json.
    Returns the tars' bytes."""
    client, made = _client(s3), []
    for t in range(tars):
        order = list(range(per))
        random.Random(t).shuffle(order)
        buf, rows = io.BytesIO(), []
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for i in order:
                key = f"{t:05d}{i:04d}"
                caption = CAPTIONS[(t * per + i) % len(CAPTIONS)].replace("\n", " ") or "a plain caption"
                for ext, data in (("jpg", _jpeg(t * per + i, side)), ("txt", caption.encode()),
                                  ("json", json.dumps({"key": key, "caption": caption}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 1_700_000_000
                    tar.addfile(info, io.BytesIO(data))
                rows.append({"key": key, "caption": caption, "status": "success", "error_message": None})
        rows.insert(1, {"key": f"{t:05d}9999", "caption": "never downloaded", "status": "failed_to_download",
                        "error_message": "404"})
        client.put_object(Bucket=bucket, Key=f"{prefix}/{t:05d}.tar", Body=buf.getvalue())
        if stats:
            table = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows), table)
            client.put_object(Bucket=bucket, Key=f"{prefix}/{t:05d}.parquet", Body=table.getvalue())
            client.put_object(Bucket=bucket, Key=f"{prefix}/{t:05d}_stats.json",
                              Body=json.dumps({"count": per + 1, "successes": per, "failed_to_download": 1}).encode())
        made.append(buf.getvalue())
    return made


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _get(s3, bucket: str, key: str) -> bytes:
    return _client(s3).get_object(Bucket=bucket, Key=key)["Body"].read()


def _keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = _client(s3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _secret_in(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def _one_line_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    return lines[0]


# ---------------------------------------------------------------- without the model


def test_a_remote_work_dir_is_refused_saying_why(fresh, tmp_path):
    _img2dataset_shards(fresh, "shards", tars=1)
    for args in (("shard", "s3://src/shards/00000.tar", "--out", "s3://dst/work"),
                 ("run", "--work", "s3://dst/work", "--source", SOURCE),
                 ("export", "--work", "s3://dst/work", "--out", str(tmp_path / "out"))):
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        line = _one_line_error(proc)
        assert "s3://dst/work" in line and "flock" in line and "shared filesystem" in line, line
    assert _keys(fresh, "dst") == []


def test_planning_reads_stats_or_headers_only(fresh, tmp_path):
    """With img2dataset's stats no tar is fetched; without them, only the tars' headers are (range reads),
    a small part of their bytes."""
    tars = _img2dataset_shards(fresh, "with", tars=3, side=256)
    _img2dataset_shards(fresh, "bare", tars=3, side=256, stats=False)
    fresh.zero_counts()
    run_cli("shard", "s3://src/with/{00000..00002}.tar", "--out", tmp_path / "with")
    tar_gets = [path for method, path in fresh.requests() if method == "GET" and path.endswith(".tar")]
    assert tar_gets == [], tar_gets

    fresh.zero_counts()
    out = run_cli("shard", "s3://src/bare/", "--out", tmp_path / "bare")
    assert "planned 3 shards over 9 rows from 3 files" in out.stdout, out.stdout
    counted = fresh.counts()
    assert counted["bytes_out"] < sum(map(len, tars)) / 10, (counted, sum(map(len, tars)))
    plan = json.loads((tmp_path / "bare" / "manifest.json").read_text())
    assert [f["path"] for f in plan["files"]] == [f"s3://src/bare/{t:05d}.tar" for t in range(3)]
    assert all(f["digest"] for f in plan["files"])  # the header scan's digest, as for a local tar


def test_an_upload_appears_whole_or_not_at_all(fresh):
    from rewrite import storage

    with pytest.raises(RuntimeError):
        with storage.open_file("s3://dst/half.bin", "wb") as f:
            f.write(b"x" * (9 << 20))  # more than one part: a multipart upload is under way
            raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError):
        with storage.parquet_writer("s3://dst/half.parquet", pa.schema([("a", pa.int64())])) as writer:
            writer.write_table(pa.table({"a": [1, 2]}))
            raise RuntimeError("killed before the footer")
    assert _keys(fresh, "dst") == []
    uploads = _client(fresh).list_multipart_uploads(Bucket="dst").get("Uploads", [])
    assert uploads == [], uploads  # aborted, not left to linger
    with storage.open_file("s3://dst/whole.txt", "w") as f:
        f.write("all of it\n")
    assert _get(fresh, "dst", "whole.txt") == b"all of it\n"


def test_redaction_and_storage_options():
    from rewrite import remote

    assert remote.redact("https://user:pw@host/a.tar?X-Amz-Signature=abc&X-Amz-Credential=k&v=2") == "https://host/a.tar?v=2"
    assert remote.redact("s3://bucket/key") == "s3://bucket/key"
    assert remote.parse_options(["endpoint_url=http://h:9000", "anon=true"]) == {"endpoint_url": "http://h:9000",
                                                                               "anon": "true"}
    with pytest.raises(ValueError, match="--storage-option secret") as e:
        remote.parse_options(["secret"])
    assert "key=value" in str(e.value)
    remote.configure({"endpoint_url": "http://h:9000", "secret": SECRET, "anon": "false"})
    try:
        assert remote.described_options() == "anon=False, endpoint_url=http://h:9000, secret"
    finally:
        remote.configure({})


def test_wrong_credentials_and_a_missing_bucket_are_one_line_naming_the_url(fresh, tmp_path):
    _img2dataset_shards(fresh, "shards", tars=1)
    fresh.accepted_key = "testing-key"
    proc = run_cli("shard", "s3://src/shards/00000.tar", "--out", tmp_path / "w1", check=False,
                   env={"AWS_ACCESS_KEY_ID": "wrong-key"})
    line = _one_line_error(proc)
    assert proc.returncode == 1 and "s3://src/shards/00000.tar" in line and "access denied" in line, line
    assert "storage options: none" in line, line  # which options were in use (names only, never a value)
    assert not (tmp_path / "w1").exists() or not (tmp_path / "w1" / "manifest.json").exists()
    fresh.accepted_key = None
    proc = run_cli("shard", f"https://user:{SECRET}@example.com/00000.tar", "--out", tmp_path / "w3", check=False)
    line = _one_line_error(proc)
    assert proc.returncode == 2 and "https://example.com/00000.tar" in line and "credential" in line, line
    proc = run_cli("shard", "s3://no-such-bucket/shards/00000.tar", "--out", tmp_path / "w2", check=False)
    line = _one_line_error(proc)
    assert proc.returncode == 2 and "s3://no-such-bucket/shards/00000.tar" in line and "does not exist" in line, line


def test_slurm_tasks_export_to_a_bucket_and_never_carry_a_secret(fresh, tmp_path, text_file):
    work = tmp_path / "work"
    run_cli("shard", text_file, "--out", work, "--num-shards", "2")
    proc = run_cli("slurm", "submit", "--work", work, "--source", SOURCE, "--dry-run", "--then-export", "s3://dst/ds",
                   "--", "--storage-option", "endpoint_url=" + fresh.endpoint)
    assert "--then-export s3://dst/ds --export-format hf" in proc.stdout, proc.stdout
    proc = run_cli("slurm", "submit", "--work", work, "--source", SOURCE, "--dry-run", "--",
                   "--storage-option", "secret=" + SECRET, check=False)
    line = _one_line_error(proc)
    assert proc.returncode == 2 and "--storage-option secret" in line and "environment" in line, line
    assert _secret_in(work) == []


def test_throttled_reads_are_retried(fresh, tmp_path):
    _img2dataset_shards(fresh, "shards", tars=2, stats=False)
    fresh.throttle(2, "GET", "/src/shards/00001.tar")
    out = run_cli("shard", "s3://src/shards/{00000..00001}.tar", "--out", tmp_path / "work")
    assert "planned 2 shards over 6 rows" in out.stdout
    assert fresh.faults_left() == 0  # the throttles were met, and survived


# ---------------------------------------------------------------- through the model, and the consumers


@pytest.fixture(scope="module")
def rewritten(s3, tmp_path_factory):
    """Two img2dataset tars (with parquet and stats) in s3://kept-src/shards, planned and rewritten into a local
    work dir: what the export tests start from. Planned with no GET of a tar, run with none either."""
    for name in ("kept-src", "kept-dst"):
        make_bucket(s3, name)
    tars = _img2dataset_shards(s3, "shards", tars=2, per=3, side=64, bucket="kept-src")
    work = tmp_path_factory.mktemp("s3work") / "work"
    s3.zero_counts()
    run_cli("shard", "s3://kept-src/shards/{00000..00001}.tar", "--out", work)
    run_cli("run", "--work", work, "--source", SOURCE, "--no-progress", "--max-new-tokens", "24")
    tar_gets = [path for method, path in s3.requests() if method == "GET" and path.endswith(".tar")]
    return work, tars, tar_gets


@pytest.fixture
def calm(s3, rewritten):
    s3.clear_faults()
    s3.accepted_key = None
    s3.zero_counts()
    return s3


@pytest.mark.slow
def test_tars_in_a_bucket_to_a_wds_export_in_another_read_by_open_clip(rewritten, calm, monkeypatch):
    from consumers import consumer_python, open_clip_wds

    work, tars, tar_gets = rewritten
    assert tar_gets == []  # planned from _stats.json, run from the parquet beside each tar
    out = run_cli("export", "--work", work, "--out", "s3://kept-dst/wds", "--format", "wds", "--no-progress")
    assert "wrote 6 rows in 3 files to s3://kept-dst/wds" in out.stdout, out.stdout
    assert _keys(calm, "kept-dst", "wds/") == ["wds/.rewrite-export.json", "wds/00000.tar", "wds/00001.tar", "wds/sizes.json"]
    record = json.loads(_get(calm, "kept-dst", "wds/.rewrite-export.json"))
    assert record["published"] and not record["publishing"] and sorted(record["files"]) == ["00000.tar", "00001.tar", "sizes.json"]
    for t, original in enumerate(tars):
        exported = _members(_get(calm, "kept-dst", f"wds/{t:05d}.tar"))
        before = _members(original)
        assert [name for name, _ in exported] == [name for name, _ in before]
        for (name, data), (_, old) in zip(exported, before):
            if name.endswith(".json"):
                fields = json.loads(data)
                assert fields["key"] == json.loads(old)["key"] and isinstance(fields[f"caption_{SOURCE}"], str)
            else:
                assert data == old, name  # every original member byte for byte
    assert not [p for p in work.rglob("*.tar")]  # no local copy of a tar was made
    assert _secret_in(work) == []
    assert all(SECRET.encode() not in _get(calm, "kept-dst", k) for k in _keys(calm, "kept-dst"))

    if consumer_python() is None:
        pytest.skip("no consumer venv (scripts/install-consumer-env.sh)")
    urls = "pipe:aws s3 cp s3://kept-dst/wds/{00000..00001}.tar -"
    seen = open_clip_wds(urls, num_samples=6)
    assert seen["count"] == 6 and sorted(seen["keys"]) == sorted(n[:-4] for t in tars for n, _ in _members(t) if n.endswith(".jpg"))


@pytest.mark.slow
def test_parquet_in_a_bucket_to_an_hf_export_read_by_datasets(fresh, tmp_path):
    import datasets

    rows = [{"key": f"k{i:03d}", "caption": c.replace("\n", " "), "url": f"http://img/{i}"} for i, c in enumerate(CAPTIONS)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=5)
    _client(fresh).put_object(Bucket="src", Key="tables/part-0.parquet", Body=buf.getvalue())
    work = tmp_path / "work"
    run_cli("shard", "s3://src/tables/", "--out", work, "--num-shards", "2")
    run_cli("run", "--work", work, "--source", SOURCE, "--no-progress", "--max-new-tokens", "24")
    run_cli("export", "--work", work, "--out", "s3://dst/hf", "--format", "hf", "--no-progress")

    # The README's load command: the record names the files of the published export.
    options = {"endpoint_url": fresh.endpoint, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": SECRET}
    record = json.loads(_get(fresh, "dst", "hf/.rewrite-export.json"))
    assert record["published"]
    files = [f"s3://dst/hf/{name}" for name in record["files"] if name.endswith(".parquet")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", storage_options=options,
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == len(rows) and ds["key"] == [r["key"] for r in rows]
    assert ds["caption"] == [r["caption"] for r in rows]
    done = [r for r, c in zip(ds[f"caption_{SOURCE}"], ds["caption"]) if c.strip()]
    assert done and all(isinstance(r, str) and r for r in done)
    assert _secret_in(work) == []


@pytest.mark.slow
def test_a_read_only_http_input(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    rows = [{"caption": c.replace("\n", " ")} for c in CAPTIONS[:6]]
    pq.write_table(pa.Table.from_pylist(rows), folder / "captions.parquet", row_group_size=2)
    with RangeHTTPServer(folder) as site:
        url = f"{site.url}/captions.parquet"
        run_cli("shard", url, "--out", tmp_path / "work")
        plan = json.loads((tmp_path / "work" / "manifest.json").read_text())
        assert plan["files"][0]["path"] == url and plan["total_rows"] == 6
        ranged = [r for r in site.requests() if r[0] == "GET"]
        assert ranged and all(r[2] for r in ranged), ranged  # the footer by range reads, not the whole file
        run_cli("run", "--work", tmp_path / "work", "--source", SOURCE, "--no-progress", "--max-new-tokens", "24")
        run_cli("export", "--work", tmp_path / "work", "--out", tmp_path / "out", "--format", "hf", "--no-progress")
    table = pq.read_table(next((tmp_path / "out" / "data").glob("*.parquet")))
    assert table.column("caption").to_pylist() == [r["caption"] for r in rows]
    assert all(table.column(f"caption_{SOURCE}").to_pylist())


@pytest.mark.slow
def test_an_export_killed_mid_upload_keeps_what_is_finished_and_a_rerun_completes(rewritten, calm):
    work, _, _ = rewritten
    calm.drop_upload(100, after_bytes=2048, method="PUT", path="/kept-dst/killed/00001.tar")
    proc = run_cli("export", "--work", work, "--out", "s3://kept-dst/killed", "--format", "wds", "--no-progress", check=False)
    line = _one_line_error(proc)
    assert proc.returncode == 1 and "s3://kept-dst/killed/00001.tar" in line, line
    there = _keys(calm, "kept-dst", "killed/")
    assert "killed/00000.tar" in there and "killed/00001.tar" not in there, there  # whole, or not at all
    record = json.loads(_get(calm, "kept-dst", "killed/.rewrite-export.json"))
    assert not record.get("published") and record["publishing"]  # a reader of the record loads nothing yet

    calm.clear_faults()
    calm.zero_counts()
    run_cli("export", "--work", work, "--out", "s3://kept-dst/killed", "--format", "wds", "--no-progress")
    uploads = [path for method, path in calm.requests() if method in ("PUT", "POST") and "killed/00000.tar" in path]
    assert uploads == [], uploads  # the finished tar was kept (checked by size and ETag), not sent again
    assert json.loads(_get(calm, "kept-dst", "killed/.rewrite-export.json"))["published"]
    assert _keys(calm, "kept-dst", "killed/") == ["killed/.rewrite-export.json", "killed/00000.tar", "killed/00001.tar",
                                            "killed/sizes.json"]


@pytest.mark.slow
def test_an_export_whose_read_fails_stops_naming_the_url_and_a_rerun_completes(rewritten, calm):
    work, tars, _ = rewritten
    calm.drop_read(100, after_bytes=4096, path="/kept-src/shards/00001.tar")
    calm.throttle(2, "PUT")  # and throttled on the way: retried
    proc = run_cli("export", "--work", work, "--out", "s3://kept-dst/cut", "--format", "wds", "--no-progress", check=False)
    line = _one_line_error(proc)
    assert proc.returncode == 1 and "s3://kept-src/shards/00001.tar" in line, line
    calm.clear_faults()
    run_cli("export", "--work", work, "--out", "s3://kept-dst/cut", "--format", "wds", "--no-progress")
    assert [n for n, _ in _members(_get(calm, "kept-dst", "cut/00001.tar"))] == [n for n, _ in _members(tars[1])]


@pytest.mark.slow
def test_a_run_whose_read_fails_keeps_finished_shards_and_a_rerun_finishes(fresh, tmp_path):
    _img2dataset_shards(fresh, "shards", tars=2)
    work = tmp_path / "work"
    run_cli("shard", "s3://src/shards/{00000..00001}.tar", "--out", work)
    fresh.go_down()
    proc = run_cli("run", "--work", work, "--source", SOURCE, "--no-progress", "--max-new-tokens", "24", check=False)
    fresh.go_up()
    line = _one_line_error(proc)
    assert proc.returncode == 1 and "s3://src/shards/0000" in line, line
    assert not list((work / "rewrites" / SOURCE).glob("*.stats.json"))
    fresh.drop_read(100, after_bytes=64, path="/src/shards/00001.parquet")
    proc = run_cli("run", "--work", work, "--source", SOURCE, "--no-progress", "--max-new-tokens", "24", check=False)
    line = _one_line_error(proc)
    assert proc.returncode == 1 and "s3://src/shards/00001.parquet" in line, line
    assert [p.name for p in (work / "rewrites" / SOURCE).glob("*.stats.json")] == ["00000.stats.json"]
    fresh.clear_faults()
    out = run_cli("run", "--work", work, "--source", SOURCE, "--no-progress", "--max-new-tokens", "24")
    assert "shard 00001" in out.stdout and "shard 00000" not in out.stdout, out.stdout
