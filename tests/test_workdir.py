"""A work dir is self-contained and never overlaps its inputs: it works from any folder and after a
copy, and planning refuses a work dir that is, or lies inside, an input."""
from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import CAPTIONS, run_cli
from rewrite.workdir import layout
from rewrite.workdir.manifest import load_manifest
from rewrite.inputs import plan


def all_rows(work) -> list[dict]:
    """Every row of every shard, read through a freshly loaded plan (as `rewrite run` reads them)."""
    m = load_manifest(work)
    return [r for s in range(m.num_shards) for c in plan.iter_shard(m, s, 5) for r in c.to_pylist()]


def test_a_relative_work_dir_works_from_another_folder(tmp_path, monkeypatch, text_file):
    """Converted inputs are recorded relative to the work dir, not to the folder planned from."""
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    run_cli("shard", text_file, "--out", "work", "--num-shards", "3")
    work = tmp_path / "here" / "work"
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert "plan: 3 shards, 12 rows, 1 input files" in run_cli("status", "--work", work).stdout
    assert [r["caption"] for r in all_rows(work)] == [c.replace("\n", " ") for c in CAPTIONS]
    assert load_manifest(work).root == work


def test_a_copied_work_dir_reads_its_own_files(tmp_path, text_file):
    """A copy must not read the original's converted inputs."""
    work = tmp_path / "work"
    plan.plan([str(text_file)], work, num_shards=2)
    shutil.copytree(work, tmp_path / "copy")
    expected = all_rows(tmp_path / "copy")
    converted = next((work / "inputs").glob("*.parquet"))  # the original's: same rows, other text
    pq.write_table(pa.table({"caption": [f"changed {i}" for i in range(len(CAPTIONS))]}), converted)
    assert all_rows(tmp_path / "copy") == expected
    shutil.rmtree(work)
    assert all_rows(tmp_path / "copy") == expected
    assert [r["caption"] for r in expected] == [c.replace("\n", " ") for c in CAPTIONS]


def test_the_inputs_are_recorded_as_given(tmp_path, monkeypatch, text_file):
    """A file, a folder, a recursive glob's folder up to its first wildcard, a plain glob's files; absolute."""
    (tmp_path / "csvs" / "part").mkdir(parents=True)
    (tmp_path / "csvs" / "part" / "a.csv").write_text("caption\none\n")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "b.txt").write_text("two\n")
    monkeypatch.chdir(tmp_path / "texts")
    m = plan.plan([str(text_file), ".", "../csvs/**/*.csv", "../csvs/*/*.csv"], tmp_path / "w")
    assert m.inputs == [str(text_file), str(tmp_path / "texts"), str(tmp_path / "csvs"),
                        str(tmp_path / "csvs" / "part" / "a.csv")]
    assert load_manifest(tmp_path / "w").inputs == m.inputs


@pytest.mark.parametrize("given, out, message", [
    ("input", "input", r"--out .*/input is the input folder .*/input: "),
    ("input/**/*.parquet", "input", r"--out .*/input is the input folder .*/input: "),
    ("input", "input/work", r"--out .*/input/work lies inside the input folder .*/input: "),
    ("input/**/*.parquet", "input/work", r"--out .*/input/work lies inside the input folder .*/input: "),
    ("input/00000.parquet", "input/00000.parquet", r"--out .*/00000.parquet is the input file .*/input/00000.parquet: "),
])
def test_a_work_dir_overlapping_an_input_is_refused(tmp_path, parquet_dir, given, out, message):
    """Conversions and rewrites must never land among the user's files (a recursive glob counts as its folder)."""
    before = sorted(parquet_dir.rglob("*"))
    with pytest.raises(plan.PlanError, match=message):
        plan.plan([str(tmp_path / given)], tmp_path / out)
    assert sorted(parquet_dir.rglob("*")) == before  # nothing was written among the inputs


def test_a_plain_glob_lets_a_work_dir_sit_beside_the_files_it_matches(tmp_path, parquet_dir):
    """`*.parquet` can never match what lands in a sub-folder (the work dir's own files included)."""
    m = plan.plan([str(parquet_dir / "*.parquet")], parquet_dir / "work")
    assert m.inputs == [str(parquet_dir / "00000.parquet"), str(parquet_dir / "00001.parquet")]


def test_the_cli_refuses_a_work_dir_inside_the_inputs(tmp_path, text_file):
    """`rewrite shard . --out work` is the easy mistake: refused with exit 2, nothing created."""
    proc = run_cli("shard", tmp_path, "--out", tmp_path / "work", check=False)
    assert proc.returncode == 2 and f"lies inside the input folder {tmp_path}" in proc.stderr
    assert not (tmp_path / "work").exists()


def test_an_old_plan_is_refused_with_a_way_out(tmp_path, text_file):
    """A version-1 plan recorded converted inputs relative to the planning folder: it cannot be trusted."""
    plan.plan([str(text_file)], tmp_path / "w")
    manifest = layout.Work(tmp_path / "w").manifest
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": 1}))
    with pytest.raises(plan.PlanError, match="plan version 1 .*plan again into a new work dir"):
        load_manifest(tmp_path / "w")


def test_a_plan_never_writes_among_someone_elses_files(tmp_path, text_file):
    """--out must be new, empty, or a plan cut short (only its converted `inputs/` there)."""
    busy = tmp_path / "project"
    busy.mkdir()
    (busy / "notes.md").write_text("mine")
    with pytest.raises(plan.PlanError, match=r"--out .*project is not empty \(notes.md\) and holds no plan"):
        plan.plan([str(text_file)], busy)
    assert [p.name for p in busy.iterdir()] == ["notes.md"]
    cut_short = tmp_path / "work"
    (cut_short / "inputs").mkdir(parents=True)
    (cut_short / "inputs" / "00000-captions.parquet").write_bytes(b"half a conversion")
    assert plan.plan([str(text_file)], cut_short).total_rows == len(CAPTIONS)
