"""A change of the code's structure changes no output byte. Tars and parquet files go through `shard`,
`run` (both schedulers, two sets, two rewrites a caption) and every export format; each file they write
is compared with the digests in tests/data/output_digests.json, made by the code before the redesign
(issue 23) from the same inputs. The rewrites come from a deterministic server on 127.0.0.1
(tests/fake_openai.py), so the outputs depend on the code and not on the CPU.

Parquet bytes carry the writing library's version, so a parquet file's bytes are compared when the
installed pyarrow is the one that made the digests, and its content (schema with metadata, and rows)
always. JSON files are compared without their time fields and the server's address, and an export's
record without the `export` field (its format, sets and columns) that the redesign added, checked here
the other way. The outputs are made under one fixed path,
since they record absolute paths. To make the digests anew, on purpose: REWRITE_RECORD_OUTPUT=1 pytest tests/test_output_bytes.py."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import CAPTIONS, require, run_cli, write_parquet
from fake_openai import FakeOpenAI

DATA = Path(__file__).parent / "data"
DIGESTS = DATA / "output_digests.json"
VARYING = ("seconds", "captions_per_s", "created", "base_url")  # times, and the server's port: not the code's
EXPORT_RECORD = ".rewrite-export.json"
ROOT = Path(tempfile.gettempdir()) / "rewrite-output-bytes"  # one path: outputs record their absolute paths


def make_tars(folder: Path) -> None:
    """Two img2dataset-like shards of KEY.jpg, KEY.txt, KEY.json (a real JPEG, fixed bytes)."""
    image = (DATA / "tiny.jpg").read_bytes()
    folder.mkdir(parents=True)
    for t in range(2):
        with tarfile.open(folder / f"{t:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for r in range(5):
                key, caption = f"{t:05d}{r:04d}", (CAPTIONS[t * 5 + r].replace("\n", " ") or "a plain caption")
                for ext, data in (("jpg", image), ("txt", caption.encode()),
                                  ("json", json.dumps({"key": key, "caption": caption}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 1_700_000_000 + r
                    tar.addfile(info, io.BytesIO(data))


def rewrite(work: Path, url: str, *options: str) -> None:
    run_cli("run", "--work", work, "--engine", "openai", "--base-url", url, "--model", "served-model",
            "--concurrency", "2", "--chunk-rows", "3", "--no-progress", *options, env={"OPENAI_API_KEY": "sk-x"})


def produce(root: Path, url: str) -> dict[str, Path]:
    """Every folder a user gets from the commands, by a name that does not depend on `root`."""
    make_tars(root / "tars")
    write_parquet(root / "parquet" / "00000.parquet", CAPTIONS[:7], 0)
    write_parquet(root / "parquet" / "00001.parquet", CAPTIONS[7:], 7)
    tars, table = root / "work-tars", root / "work-parquet"
    run_cli("shard", str(root / "tars" / "{00000..00001}.tar"), "--out", tars, "--num-shards", "2")
    run_cli("shard", root / "parquet", "--out", table, "--rows-per-shard", "5")
    rewrite(tars, url, "--source", "human", "--num-rewrites", "2", "--scheduler", "stream")
    rewrite(tars, url, "--source", "coco", "--scheduler", "chunked")
    rewrite(table, url, "--source", "chatgpt")
    made = {"work-tars": tars, "work-parquet": table}
    for work, fmt, extra in ((tars, "wds", ("--views", "caption_human_1")), (tars, "hf", ()),
                             (table, "hf", ()), (table, "csv", ("--extract-images", root / "images-csv")),
                             (table, "laclip", ("--extract-images", root / "images-laclip"))):
        name = f"{work.name}-{fmt}"
        run_cli("export", "--work", work, "--out", root / name, "--format", fmt, "--no-progress", *extra)
        made[name] = root / name
    made["images-csv"], made["images-laclip"] = root / "images-csv", root / "images-laclip"
    return made


def _timeless(value):
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def digest(path: Path) -> dict[str, str]:
    """The file's digests: `bytes` (its bytes; for JSON, its bytes without time fields) and, for parquet,
    `content` (schema with metadata and rows, without VARYING fields in the metadata)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        value = _timeless(json.loads(data))
        if path.name == EXPORT_RECORD:
            value.pop("export", None)  # what the export is (format, sets, columns): added by the redesign
        text = json.dumps(value, sort_keys=True)
        return {"bytes": hashlib.sha256(text.encode()).hexdigest()}
    found = {"bytes": hashlib.sha256(data).hexdigest()}
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        meta = {k.decode(): _timeless(json.loads(v)) if v[:1] in b"{[" else v.decode()
                for k, v in (table.schema.metadata or {}).items()}
        shown = json.dumps([table.schema.remove_metadata().to_string(), meta, table.to_pylist()],
                           sort_keys=True, default=repr)
        found["content"] = hashlib.sha256(shown.encode()).hexdigest()
    return found


def digests(made: dict[str, Path]) -> dict[str, dict[str, str]]:
    return {f"{name}/{p.relative_to(folder)}": digest(p)
            for name, folder in made.items() for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock") and not p.name.endswith(".mutex")}


@pytest.fixture(scope="module")
def outputs():
    require("openai")
    server = FakeOpenAI().start()
    try:
        shutil.rmtree(ROOT, ignore_errors=True)
        ROOT.mkdir()
        yield digests(produce(ROOT, server.url))
    finally:
        server.stop()
        shutil.rmtree(ROOT, ignore_errors=True)


def test_runs_and_exports_write_the_bytes_they_wrote_before_the_redesign(outputs):
    if os.environ.get("REWRITE_RECORD_OUTPUT") == "1":
        DIGESTS.write_text(json.dumps({"pyarrow": pa.__version__, "files": outputs}, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(DIGESTS.read_text())
    same_writer = recorded["pyarrow"] == pa.__version__
    assert sorted(outputs) == sorted(recorded["files"])
    for name, now in outputs.items():
        before = recorded["files"][name]
        if "content" in before:
            assert now["content"] == before["content"], f"{name}: its content changed"
            if same_writer:
                assert now["bytes"] == before["bytes"], f"{name}: its bytes changed"
        else:
            assert now["bytes"] == before["bytes"], f"{name}: its bytes changed"


def test_an_export_record_says_its_format_sets_and_columns(outputs):
    """The report reads an export through the format that wrote it, as the export's record says it."""
    for fmt, name in (("wds", "work-tars-wds"), ("hf", "work-tars-hf"), ("csv", "work-parquet-csv"),
                      ("laclip", "work-parquet-laclip")):
        record = json.loads((ROOT / name / EXPORT_RECORD).read_text())["export"]
        sets = {"human": ["caption_human_0", "caption_human_1"], "coco": ["caption_coco"]} \
            if name.startswith("work-tars") else {"chatgpt": ["caption_chatgpt"]}
        assert record == {"format": fmt, "sets": sets}, name

