"""Across layouts (shard count, chunk size, batch size, request order) the same settings send every key
the same prompt and seed, exactly; the sampled text then agrees for all but the rare key whose draw
falls within float rounding of a token boundary: batched fp32 kernels round differently depending on
which rows share a batch. (Within one layout, reruns and restarts are byte-identical: test_faults.py.)
The transformers engine here; vLLM in test_served_engines.py."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from conftest import Recording
from rewrite.workdir import layout
from rewrite.inputs import plan
from rewrite.run import runner
from rewrite.defaults import Schedule
from rewrite.run.config import RunConfig

AGREEMENT = 0.9  # share of keys whose sampled rewrite must be identical across layouts (transformers, fp32)


def demo_file(tmp_path: Path, n: int = 24) -> Path:
    from rewrite.launch.demo import demo_captions

    path = tmp_path / "captions.txt"
    path.write_text("\n".join(demo_captions().read_text(encoding="utf-8").splitlines()[:n]) + "\n", encoding="utf-8")
    return path


def rewrites_by_key(tmp_path: Path, name: str, eng, shards: int, chunk_rows: int, schedule: Schedule = Schedule(),
                    example_sets: int = 0) -> tuple[dict[str, str | None], set]:
    """Each key's rewrite, and the (prompt, seed) pairs of every request sent."""
    work = tmp_path / name
    plan.plan([str(demo_file(tmp_path))], work, num_shards=shards)
    config = RunConfig(source="chatgpt", seed=3, chunk_rows=chunk_rows, example_sets=example_sets)
    recording = Recording(eng)
    runner.run(work, config, list(range(shards)), recording, progress=False, schedule=schedule)
    rows = {r["key"]: r["rewrite"] for s in range(shards)
            for r in pq.read_table(layout.Work(work).rewrite_file("chatgpt", s)).to_pylist()}
    return rows, {(r.prompt, r.seed) for r in recording.requests}


def assert_layouts_agree(one, many, agreement: float = AGREEMENT) -> None:
    (rows_one, sent_one), (rows_many, sent_many) = one, many
    assert len(rows_one) == 24 and sum(v is not None for v in rows_one.values()) >= 20
    first_attempts = {r for r in sent_one if r in sent_many}
    assert len(first_attempts) >= 24  # every key's first request identical, prompt and seed
    same = sum(rows_many[k] == v for k, v in rows_one.items())
    assert same >= agreement * len(rows_one), f"{same}/{len(rows_one)} keys agree"


def layouts_agree(tmp_path: Path, eng, example_sets: int = 0) -> None:
    one = rewrites_by_key(tmp_path, "one", eng, shards=1, chunk_rows=24, example_sets=example_sets)
    batch = eng.batch_size
    eng.batch_size = 3
    try:
        many = rewrites_by_key(tmp_path, "many", eng, shards=3, chunk_rows=5, example_sets=example_sets,
                               schedule=Schedule(group_by_examples=False, sort_by_length=False))
    finally:
        eng.batch_size = batch
    assert_layouts_agree(one, many)


def test_transformers_layouts_agree(engine, tmp_path):
    layouts_agree(tmp_path, engine)


def test_transformers_layouts_agree_with_shared_example_sets(engine, tmp_path):
    layouts_agree(tmp_path, engine, example_sets=4)


def test_streaming_and_a_chunk_at_a_time_write_the_same_rewrites(engine, tmp_path):
    """The two schedulers send the same (prompt, seed) for every first attempt, and the rewrites agree
    up to fp32 batch rounding, as across layouts (a retry follows from the text it retries)."""
    stream = rewrites_by_key(tmp_path, "stream", engine, shards=1, chunk_rows=5, schedule=Schedule(streaming=True))
    chunked = rewrites_by_key(tmp_path, "chunked", engine, shards=1, chunk_rows=5, schedule=Schedule(streaming=False))
    assert_layouts_agree(stream, chunked)  # every first attempt the same request; the text up to rounding
