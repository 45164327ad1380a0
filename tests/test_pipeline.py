"""shard + run + status + export through the real CLI, on the real embedded model."""
import json

import pyarrow.parquet as pq
import pytest

from conftest import CAPTIONS, png_bytes, run_cli
from rewrite.run.config import set_configs


def run_all(work, source="chatgpt", *extra):
    return run_cli("run", "--work", work, "--source", source, "--shards", "all", "--no-progress", *extra)


def test_parquet_end_to_end_with_datasets(parquet_dir, tmp_path):
    import datasets

    work, out = tmp_path / "work", tmp_path / "export"
    run_cli("shard", parquet_dir, "--out", work, "--num-shards", "2")
    both = run_all(work, "chatgpt,mscoco")  # two sets in one pass; mscoco is LaCLIP's README name for coco
    assert both.stderr.count("loading the") == 1  # one engine start for both sets
    status = run_cli("status", "--work", work).stdout
    assert "chatgpt  done 2/2" in status and "coco     done 2/2" in status

    sides = {}
    for source in ("chatgpt", "coco"):
        side = sides[source] = pq.read_table(work / "rewrites" / source / "00000.parquet").to_pylist() + \
            pq.read_table(work / "rewrites" / source / "00001.parquet").to_pylist()
        assert [r["key"] for r in side] == [f"{i:09d}" for i in range(len(CAPTIONS))]
        for row, caption in zip(side, CAPTIONS):
            if not caption.strip():
                assert row["status"] == "skipped" and row["rewrite"] is None
            elif row["status"] == "ok":
                assert row["rewrite"].strip() and row["rewrite"].lower() != caption.lower()
                assert "\n" not in row["rewrite"] and "=>" not in row["rewrite"]
            else:
                assert row["status"] == "failed" and row["rewrite"] is None and row["reason"]
        assert sum(r["status"] == "ok" for r in side) >= len(CAPTIONS) - 3
        # Identical captions were rewritten once and share their rewrite.
        assert side[1]["rewrite"] == side[4]["rewrite"]
        stats = json.loads((work / "rewrites" / source / "00000.stats.json").read_text())
        assert stats["rows"] == 6 and stats["ok"] + stats["failed"] + stats["skipped"] == 6
        assert stats["generated_tokens"] > 0 and stats["captions_per_s"] > 0

    result = run_cli("export", "--work", work, "--out", out)
    assert "wrote 12 rows in 3 files" in result.stdout  # 2 parquet files and the card
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.column_names == ["key", "caption", "image", "width", "caption_chatgpt", "caption_coco"]
    assert ds["key"] == [f"{i:09d}" for i in range(len(CAPTIONS))]
    assert ds["caption"] == CAPTIONS
    assert [r["bytes"] for r in ds["image"]] == [png_bytes(i) for i in range(len(CAPTIONS))]
    assert list(ds["width"]) == list(range(100, 112))
    for source, side in sides.items():  # each column holds its own set's rewrites, row for row
        assert ds[f"caption_{source}"] == [r["rewrite"] for r in side]
    assert ds["caption_chatgpt"] != ds["caption_coco"]
    card = (out / "README.md").read_text()
    assert "configs:" in card and "path: data/train-*" in card and "| chatgpt |" in card
    parquet_rows = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), cache_dir=str(tmp_path / "hf2"))["train"]
    assert parquet_rows.num_rows == len(CAPTIONS)


def test_text_input_rerun_is_byte_identical_and_skips_done_shards(text_file, tmp_path):
    outputs = []
    for name in ("a", "b"):
        work = tmp_path / name
        run_cli("shard", text_file, "--out", work, "--num-shards", "2")
        run_all(work, "human", "--seed", "7", "--chunk-rows", "5" if name == "a" else "4")
        outputs.append([(work / "rewrites" / "human" / f"0000{s}.parquet").read_bytes() for s in range(2)])
    assert outputs[0] == outputs[1]  # same settings, other chunk size: same bytes
    again = run_all(tmp_path / "a", "human", "--seed", "7", "--chunk-rows", "5")
    assert "done already" in again.stdout
    rows = pq.read_table(tmp_path / "a" / "rewrites" / "human" / "00000.parquet").to_pylist()
    assert [r["key"] for r in rows] == [f"captions-{i:09d}" for i in range(6)]
    assert sum(r["status"] == "ok" for r in rows) >= 4


@pytest.mark.parametrize("args, message", [
    (["shard", "{tmp}/nope.parquet", "--out", "{tmp}/w"], "input path .*nope.parquet does not exist"),
    (["shard", "{parquet_dir}", "--out", "{tmp}/w", "--caption-column", "text"], "has no caption column 'text'"),
    (["shard", "{tmp}/empty.txt", "--out", "{tmp}/w"], "hold no rows"),
    (["run", "--work", "{work}", "--source", "laion"], "unknown source 'laion'"),
    (["run", "--work", "{work}", "--source", "bard", "--shards", "0-x"], "--shards '0-x'"),
    (["run", "--work", "{work}", "--source", "bard", "--shards", "9"], "shard 9 is not in the plan"),
    (["run", "--work", "{tmp}/nowork", "--source", "bard"], "has no shard plan"),
    (["run", "--work", "{work}", "--source", "bard", "--model", "{tmp}/no-model"], "--model .*no such directory"),
    (["export", "--work", "{work}", "--out", "{tmp}/o"], "no rewrites yet"),
])
def test_bad_input_gives_a_clear_error(parquet_dir, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    work = tmp_path / "work"
    run_cli("shard", parquet_dir, "--out", work, "--num-shards", "2")
    fill = {"tmp": tmp_path, "parquet_dir": parquet_dir, "work": work}
    proc = run_cli(*[a.format(**fill) for a in args], check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    import re
    assert re.search(message, proc.stderr), proc.stderr


def test_export_reports_missing_shards(parquet_dir, tmp_path):
    work = tmp_path / "work"
    run_cli("shard", parquet_dir, "--out", work, "--num-shards", "3")
    run_cli("run", "--work", work, "--source", "bard", "--shards", "1", "--no-progress")
    proc = run_cli("export", "--work", work, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "bard: shards 0,2" in proc.stderr
    status = run_cli("status", "--work", work).stdout
    assert "done 1/3" in status and "missing shards: 0,2" in status
    proc = run_cli("export", "--work", work, "--out", tmp_path / "o", "--allow-missing")
    assert "no rewrites for shards 0,2" in proc.stderr
    table = pq.read_table(tmp_path / "o" / "data")
    assert table.num_rows == len(CAPTIONS)
    assert table.column("caption_bard").to_pylist()[:4] == [None] * 4


def test_changed_settings_are_refused(text_file, tmp_path):
    work = tmp_path / "w"
    run_cli("shard", text_file, "--out", work, "--num-shards", "4")
    run_cli("run", "--work", work, "--source", "bard", "--shards", "0", "--no-progress")
    proc = run_cli("run", "--work", work, "--source", "bard", "--shards", "1", "--seed", "3", "--no-progress", check=False)
    assert proc.returncode == 2 and "seed: 0 then, 3 now" in proc.stderr


def test_fingerprint_covers_code_version_and_model_files(text_file, tmp_path):
    work = tmp_path / "w"
    run_cli("shard", text_file, "--out", work, "--num-shards", "2")
    run_cli("run", "--work", work, "--source", "bard", "--shards", "0", "--no-progress")
    path = work / "rewrites" / "bard" / "settings.json"
    recorded = json.loads(path.read_text())
    assert len(recorded["model_digest"]) == 64 and recorded["version"]
    for field, value in (("version", "0.0.1"), ("model_digest", "0" * 64), ("example_sets", 16)):
        path.write_text(json.dumps({**recorded, field: value}))
        proc = run_cli("run", "--work", work, "--source", "bard", "--shards", "1", "--no-progress", check=False)
        assert proc.returncode == 2 and f"{field}: {value!r} then" in proc.stderr, proc.stderr
    proc = run_cli("run", "--work", work, "--source", "bard", "--shards", "1", "--no-progress", "--overwrite", check=False)
    assert proc.returncode == 2 and "removes the output of shards 0 that --shards does not name" in proc.stderr
    run_cli("run", "--work", work, "--source", "bard", "--shards", "0-1", "--no-progress", "--overwrite")
    assert json.loads(path.read_text())["model_digest"] == recorded["model_digest"]


def test_several_sets_read_each_shard_once(engine, text_file, tmp_path, monkeypatch):
    """run_sets reads a shard's captions from the inputs once for all its sets, and each set's rows are
    those of the shard."""
    from rewrite.inputs import plan
    from rewrite.run import runner

    work = tmp_path / "work"
    plan.plan([str(text_file)], work, num_shards=2)
    reads, real = [], plan.iter_shard
    monkeypatch.setattr(plan, "iter_shard", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    configs = set_configs(["human", "bard"], max_attempts=1)
    finished = runner.run_sets(work, configs, [0, 1], engine, progress=False)
    assert sorted(reads) == [0, 1]  # one read per shard, not per shard and set
    assert sorted((s["source"], s["shard"]) for s in finished) == [("bard", 0), ("bard", 1), ("human", 0), ("human", 1)]
    for name in ("human", "bard"):
        keys = [k for shard in (0, 1) for k in pq.read_table(work / "rewrites" / name / f"{shard:05d}.parquet",
                                                             columns=["key"]).column("key").to_pylist()]
        assert keys == [f"captions-{i:09d}" for i in range(len(CAPTIONS))]
