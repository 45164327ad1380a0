"""Bad input: each case gets a clear error naming the file, row or option, or a per-row status while
the rest of the shard goes on. (More cases, on the plan alone, are in test_plan.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import run_cli, write_parquet

LONG = "a small boat on a calm lake " * 360  # ~10,000 characters


def test_odd_rows_get_a_status_and_the_shard_goes_on(tmp_path):
    captions = [None, "", "   \t ", LONG, "two lines\nof one caption", "a => b caption", "a plain red apple", "a plain red apple"]
    table = pa.table({"key": ["k0", "k1", "k2", "k3", "k4", "k5", "dup", "dup"], "caption": captions})
    pq.write_table(table, tmp_path / "odd.parquet")
    work = tmp_path / "w"
    run_cli("shard", tmp_path / "odd.parquet", "--out", work, "--num-shards", "1")
    # A context of 1024 tokens, so the 10,000-character caption (~2,500 tokens) has to be cut to fit.
    proc = run_cli("run", "--work", work, "--source", "human", "--no-progress", "--max-model-len", "1024")
    assert "key 'dup' appears more than once" in proc.stderr
    rows = pq.read_table(work / "rewrites" / "human" / "00000.parquet").to_pylist()
    assert [r["key"] for r in rows] == table.column("key").to_pylist()  # every row, in order
    assert [(r["status"], r["reason"]) for r in rows[:3]] == [("skipped", "empty_caption")] * 3
    assert all(r["rewrite"] is None for r in rows[:3])
    assert all(r["status"] in ("ok", "failed") for r in rows[3:])
    for r in rows[3:]:  # never silently the original: a value only with status ok, a reason only when failed
        assert (r["rewrite"] is not None) == (r["status"] == "ok")
        assert (r["reason"] is None) == (r["status"] == "ok") or r["reason"] == "caption_cut"
    assert rows[6]["rewrite"] == rows[7]["rewrite"]  # identical captions: rewritten once
    stats = json.loads((work / "rewrites" / "human" / "00000.stats.json").read_text())
    assert stats["captions_cut"] == 1  # the 10,000-character caption was cut (to --max-caption-tokens)
    assert rows[3]["status"] == "failed" or rows[3]["reason"] == "caption_cut"
    assert stats["duplicate_keys"] == 1 and stats["skipped"] == 3 and stats["rows"] == 8


def test_zero_row_file_beside_others_is_planned(tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", ["one", "two"])
    write_parquet(tmp_path / "in" / "b.parquet", [])
    m = run_cli("shard", tmp_path / "in", "--out", tmp_path / "w")
    assert "over 2 rows from 2 files" in m.stdout


def test_corrupt_parquet_names_the_file(tmp_path):
    bad = tmp_path / "in" / "broken.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"PAR1 this is not a parquet file PAR1")
    proc = run_cli("shard", bad, "--out", tmp_path / "w", check=False)
    assert proc.returncode == 2 and "broken.parquet is not a readable parquet file" in proc.stderr


def test_unreadable_path_names_the_file(tmp_path):
    path = write_parquet(tmp_path / "in" / "secret.parquet", ["a caption"])
    path.chmod(0)
    cmd = [sys.executable, "-m", "rewrite.cli", "shard", str(path), "--out", str(tmp_path / "w")]
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               "--inh-caps=-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "secret.parquet is not readable" in proc.stderr, proc.stderr


def test_a_work_dir_holding_another_plan_is_refused(tmp_path, text_file):
    work = tmp_path / "w"
    run_cli("shard", text_file, "--out", work, "--num-shards", "2")
    proc = run_cli("shard", text_file, "--out", work, "--num-shards", "3", check=False)
    assert proc.returncode == 2 and "already holds a plan (2 shards" in proc.stderr


def test_an_input_changed_after_planning_is_refused(tmp_path):
    path = write_parquet(tmp_path / "in" / "a.parquet", ["one", "two", "three"])
    work = tmp_path / "w"
    run_cli("shard", path, "--out", work)
    write_parquet(path, ["one", "two"])
    proc = run_cli("run", "--work", work, "--source", "bard", "--no-progress", check=False)
    assert proc.returncode == 2 and "a.parquet changed since it was planned (3 rows then, 2 now)" in proc.stderr
