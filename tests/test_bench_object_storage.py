"""bench/object_storage.py at toy size: it starts the local S3 server, plans, reads, exports bucket to
bucket and copies with s3fs for real, and writes every section of its result."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "object_storage.py"


@pytest.mark.slow
def test_object_storage_benchmark_runs_end_to_end_at_small_size(tmp_path):
    out = tmp_path / "x.json"
    done = subprocess.run([sys.executable, str(BENCH), "--plan-tars", "5", "--tars", "2", "--samples", "4",
                           "--image-kb", "2", "--repeats", "1", "--workers", "2", "--tmp-dir", str(tmp_path), "--out-json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"plan", "caption_read", "throughput", "memory", "cpu"} <= set(result)

    plan = result["plan"]
    assert plan["tars"] == 5 and plan["tar_bytes"] > 0
    assert plan["stats"]["tar_gets"] == 0 and plan["stats"]["requests"] > 0  # counts from _stats.json alone
    assert plan["scan"]["tar_gets"] >= 5  # every tar's headers read, by range reads...
    assert 0 < plan["scan"]["bytes_out"] < plan["tar_bytes"] / 2  # ...not its images
    assert plan["stats"]["best_seconds"] > 0 and plan["scan"]["best_seconds"] > 0

    read = result["caption_read"]
    assert read["rows"] == 8
    assert read["parquet"]["tar_gets"] == 0 and read["stream"]["tar_gets"] >= 2
    assert read["parquet"]["caption_chars"] == read["stream"]["caption_chars"] > 0
    assert read["parquet"]["plan"]["tar_gets"] == 0 == read["stream"]["plan"]["tar_gets"]  # both planned from stats
    assert read["speedup"] > 0 and read["bytes_ratio"] > 1

    tp = result["throughput"]
    for key in ("export_over_copy_client", "export_over_copy_server", "export_over_copy_client_after_imports"):
        assert tp[key] > 0, key
    assert set(tp["mb_per_s"]) == {"export", "copy_client", "copy_server", "export_workers2"}
    assert tp["export_workers_over_copy_client"] > 0
    assert tp["bytes_out"]["copy_client"] >= tp["tar_bytes"] and tp["bytes_in"]["copy_client"] >= tp["tar_bytes"]
    assert tp["bytes_in"]["copy_server"] == 0  # CopyObject: no byte through the client
    assert tp["bytes_out"]["export"] >= tp["tar_bytes"] and tp["bytes_in"]["export"] >= tp["tar_bytes"]

    mem = result["memory"]
    assert mem["one"]["vmhwm_kb"] > 0 and mem["many"]["vmhwm_kb"] >= mem["many"]["rss_after_imports_kb"] > 0
    assert mem["ratio"] > 0

    table = out.with_suffix(".md").read_text()
    assert "**export / client-side copy**" in table and "peak RSS 2 tars / 1 tar" in table
    assert "avx512" in table
