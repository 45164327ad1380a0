"""An input that changed after planning is refused, naming it, wherever it is read (a run's read of a
shard, every export format) and before the wds export commits a tar; a touched but identical file is
not. Rewrites reach the right samples of a wds export when keys repeat (by position), and a KEY.json
field the export would replace is refused unless --replace-json-fields. Real tars and parquet files,
the real CLI for exports; the rewrites come from bench/export_wds.py's SimulatedEngine (each rewrite is
the caption's words reversed plus a word), so that no model is loaded."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from rewrite.inputs import plan
from rewrite.workdir.manifest import load_manifest
from rewrite.run import runner
from rewrite import tars
from test_tars import jpeg, make_tar
from rewrite.run.config import RunConfig

SOURCE = "chatgpt"
FIELD = f"caption_{SOURCE}"
_spec = importlib.util.spec_from_file_location("bench_export_wds",
                                               Path(__file__).resolve().parent.parent / "bench" / "export_wds.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def tar_of(path: Path, captions: list[str], keys: list[str] | None = None, image_salt: int = 0,
           metas: dict[int, dict] | None = None) -> Path:
    """A shard of KEY.jpg, KEY.txt, KEY.json per caption (keys 000000000.. unless given)."""
    members = []
    for i, caption in enumerate(captions):
        key = keys[i] if keys else f"{i:09d}"
        meta = {"key": key, **(metas or {}).get(i, {})}
        members += [(f"{key}.jpg", jpeg(i + image_salt)), (f"{key}.txt", caption.encode()),
                    (f"{key}.json", json.dumps(meta).encode())]
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_tar(path, members)


CAPTIONS = [f"a photo of thing number {i} on a table" for i in range(12)]
OTHERS = [f"another picture {i}" for i in range(12)]  # the same keys, other captions (and other images)


def rewrite_all(work: Path) -> None:
    m = load_manifest(work)
    runner.run(work, RunConfig(source=SOURCE), list(range(m.num_shards)), bench.SimulatedEngine(),
               progress=False)


def planned_and_run(tmp_path: Path, *plan_args: str) -> tuple[Path, Path]:
    tar = tar_of(tmp_path / "in" / "00000.tar", CAPTIONS)
    work = tmp_path / "work"
    run_cli("shard", tar, "--out", work, *plan_args)
    rewrite_all(work)
    return tar, work


def export(work: Path, out: Path, fmt: str = "wds", *options: str):
    return run_cli("export", "--work", work, "--out", out, "--format", fmt, "--no-progress", *options, check=False)


def refused(proc, *names: str) -> str:
    """The one line of a refusal (exit 2, no traceback) that names each of `names`."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


def samples_of(path: Path) -> list[tars.Sample]:
    return list(tars.iter_samples(path))


# ------------------------------------------------------------------------------------- a changed input

def test_a_touched_tar_is_exported_and_one_replaced_in_place_is_refused_by_every_export(tmp_path):
    tar, work = planned_and_run(tmp_path)
    os.utime(tar, (1_800_000_000, 1_800_000_000))
    assert export(work, tmp_path / "out").returncode == 0
    assert [s.json[FIELD] for s in samples_of(tmp_path / "out" / "00000.tar")] == \
        [bench.simulated_rewrite(c) for c in CAPTIONS]
    size = tar.stat().st_size
    tar_of(tar, OTHERS, image_salt=50)
    assert tar.stat().st_size == size and [s.key for s in samples_of(tar)] == [f"{i:09d}" for i in range(12)]
    for fmt in ("wds", "hf", "csv"):
        out = tmp_path / f"out-{fmt}"
        line = refused(export(work, out, fmt, *(["--extract-images", tmp_path / "img"] if fmt == "csv" else [])),
                       f"input file {tar} changed since it was planned", "member headers differ", "plan again")
        assert not [p for p in out.rglob("*") if p.is_file() and p.suffix in (".tar", ".parquet", ".tsv")], line
    assert not (tmp_path / "img" / "00000").exists()  # no image of the changed tar was kept either
    with pytest.raises(plan.PlanError, match=f"{tar} changed since it was planned"):
        list(plan.iter_shard(load_manifest(work), 0, 5))  # as `rewrite run` reads it


def test_a_run_commits_no_row_of_a_tar_that_changed(tmp_path):
    """The tar's headers are known at its end: no chunk of it is given to the run before then."""
    tar = tar_of(tmp_path / "in" / "00000.tar", CAPTIONS)
    work = tmp_path / "work"
    plan.plan([str(tar)], work)
    tar_of(tar, OTHERS, image_salt=50)
    with pytest.raises(plan.PlanError, match=f"input file {tar} changed since it was planned"):
        runner.run(work, RunConfig(source=SOURCE, chunk_rows=4), [0], bench.SimulatedEngine(), progress=False)
    assert not list((work / "rewrites").rglob("*.parquet"))


def test_a_tar_of_another_size_is_refused_before_it_is_read(tmp_path):
    tar, work = planned_and_run(tmp_path)
    size = tar.stat().st_size
    tar_of(tar, [c + " " + "x" * 2000 for c in CAPTIONS])
    refused(export(work, tmp_path / "out"), f"input file {tar} changed since it was planned",
            f"size {size} then, {tar.stat().st_size} now")


def test_a_tar_planned_from_its_stats_is_checked_against_its_first_read(tmp_path):
    """The plan opens no tar (the count comes from img2dataset's stats), so the first full read records
    the tar's headers in the work dir; a later export compares with that."""
    tar = tar_of(tmp_path / "in" / "00000.tar", CAPTIONS)
    (tmp_path / "in" / "00000_stats.json").write_text(json.dumps({"count": 12, "successes": 12}))
    work = tmp_path / "work"
    run_cli("shard", tmp_path / "in", "--out", work)
    assert "digest" not in json.loads((work / "manifest.json").read_text())["files"][0]
    assert not list(work.rglob("*.digest.json"))
    rewrite_all(work)
    [record] = list(work.rglob("*.digest.json"))
    assert export(work, tmp_path / "out").returncode == 0
    tar_of(tar, OTHERS, image_salt=50)
    refused(export(work, tmp_path / "out2"), f"input file {tar} changed since it was first read", "member headers")
    assert json.loads(record.read_text())["file"] == str(tar)
    (work / "manifest.json").unlink()  # planned again into the same folder, its inputs/ left: the record goes
    shutil.rmtree(work / "rewrites")
    run_cli("shard", tmp_path / "in", "--out", work)
    rewrite_all(work)
    assert export(work, tmp_path / "out3").returncode == 0


def test_a_parquet_input_changed_in_place_is_refused_and_a_touched_one_is_not(tmp_path):
    """Same size and rows, other captions: only the footer (its statistics) tells the files apart."""
    def write(captions):
        pq.write_table(pa.table({"key": [f"k{i}" for i in range(12)], "caption": captions}), data, compression="none")

    data = tmp_path / "in.parquet"
    write(CAPTIONS)
    m = plan.plan([str(data)], tmp_path / "work")
    os.utime(data, (1_800_000_000, 1_800_000_000))
    assert next(plan.iter_shard(m, 0, 100)).column("caption").to_pylist() == CAPTIONS
    size = data.stat().st_size
    write([c.replace("thing", "dingo") for c in CAPTIONS])
    assert data.stat().st_size == size
    with pytest.raises(plan.PlanError, match=f"input file {data} changed since it was planned .its parquet footer"):
        list(plan.iter_shard(load_manifest(tmp_path / "work"), 0, 100))


def test_a_changed_conversion_in_the_work_dir_is_refused(tmp_path):
    (tmp_path / "in.csv").write_text("key,caption\n" + "".join(f"k{i},{c}\n" for i, c in enumerate(CAPTIONS)))
    m = plan.plan([str(tmp_path / "in.csv")], tmp_path / "work")
    converted = m.data_path(m.files[0])
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(12)], "caption": OTHERS}), converted)
    with pytest.raises(plan.PlanError, match=f"input file {converted} changed since it was planned"):
        list(plan.iter_shard(m, 0, 100))


# ------------------------------------------------------------------------------------- keys and fields

def test_repeated_keys_get_their_own_rewrites_in_a_wds_export(tmp_path):
    """One shard of two tars: a key repeated as a whole second sample inside the first tar (not adjacent
    to the first), and a key of the first tar again in the second."""
    first = tar_of(tmp_path / "in" / "a.tar", ["one cat", "two dogs", "three birds", "four fish"],
                   keys=["k1", "k2", "k1", "k3"])
    second = tar_of(tmp_path / "in" / "b.tar", ["five cows", "six owls"], keys=["k2", "k4"], image_salt=9)
    work = tmp_path / "work"
    run_cli("shard", tmp_path / "in", "--out", work, "--num-shards", "1")
    rewrite_all(work)
    assert export(work, tmp_path / "out").returncode == 0
    for src in (first, second):
        exported = samples_of(tmp_path / "out" / src.name)
        assert [s.key for s in exported] == [s.key for s in samples_of(src)]
        assert [s.json[FIELD] for s in exported] == [bench.simulated_rewrite(s.caption) for s in exported]


def test_a_json_field_the_export_would_replace_is_refused_unless_asked(tmp_path):
    tar = tar_of(tmp_path / "in" / "00000.tar", CAPTIONS, metas={3: {FIELD: "a caption of the user's"}})
    work = tmp_path / "work"
    run_cli("shard", tar, "--out", work)
    rewrite_all(work)
    refused(export(work, tmp_path / "out"), str(tar), "'000000003.json'", FIELD, "--replace-json-fields")
    assert not (tmp_path / "out" / "00000.tar").exists()
    assert export(work, tmp_path / "out", "wds", "--replace-json-fields").returncode == 0
    assert [s.json[FIELD] for s in samples_of(tmp_path / "out" / "00000.tar")] == \
        [bench.simulated_rewrite(c) for c in CAPTIONS]


def test_rewrites_that_do_not_line_up_say_what_was_found(tmp_path):
    """A work dir planned before identities were recorded (none to check) whose input changed after the
    run: the export names the keys that differ instead of blaming the plan."""
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(12)], "caption": CAPTIONS}), data)
    work = tmp_path / "work"
    plan.plan([str(data)], work)
    manifest = json.loads((work / "manifest.json").read_text())
    for f in manifest["files"]:
        f.pop("size", None), f.pop("digest", None)
    (work / "manifest.json").write_text(json.dumps(manifest))
    rewrite_all(work)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(11)] + ["new"], "caption": CAPTIONS}), data)
    line = refused(export(work, tmp_path / "out", "hf"), "'k11'", "'new'", "the input changed after the run",
                   "shard 00000 (in.parquet)")
    assert "plan changed" not in line


def test_sample_indices_draws_what_random_sample_draws():
    """seeds.sample_indices is random.sample(range(n), k) without its checks: the same indices in the same
    order and the generator left in the same state, for small populations (its pool) and large ones (its
    set of picks). If a Python version changes random.sample, this fails: our draws stay as they were."""
    import random

    from rewrite.rewriting import seeds

    for seed in range(300):
        for n, k in ((2, 2), (5, 2), (16, 3), (21, 3), (22, 3), (40, 3), (100, 7), (1000, 30), (3, 0)):
            ours, theirs = random.Random(seed), random.Random(seed)
            assert seeds.sample_indices(ours, n, k) == theirs.sample(range(n), k)
            assert ours.getrandbits(32) == theirs.getrandbits(32)
