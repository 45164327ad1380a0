"""The consumer harness itself (tests/consumers.py): open_clip_train's real loaders, in the consumer
venv, read a hand-made webdataset shard and TSV and give back exactly what was put in.

Needs the venv from scripts/install-consumer-env.sh: skipped without it, failed with REWRITE_REQUIRE_SLOW.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from consumers import (ConsumerError, consumer_python, consumer_venv, open_clip_csv, open_clip_wds,
                       webdataset_fields)

pytestmark = pytest.mark.slow

KEYS = ["000000000", "000000001", "000000002"]
CAPTIONS = [
    "red bicycle leaning against a brick wall",
    "café terrace in münchen at night",
    'the "best" pizza in town',
]
SHORT = ["a bicycle", "a café", "a pizza"]


@pytest.fixture(scope="module", autouse=True)
def consumer_venv_present():
    if consumer_python() is None:
        msg = f"no consumer venv at {consumer_venv()}: run scripts/install-consumer-env.sh"
        if os.environ.get("REWRITE_REQUIRE_SLOW"):
            pytest.fail(msg)
        pytest.skip(msg)


def jpeg(i: int) -> bytes:
    """A real JPEG of a distinct colour and size."""
    buf = io.BytesIO()
    Image.new("RGB", (64 + 16 * i, 48), (40 * i, 200 - 50 * i, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    """One img2dataset-like shard: KEY.jpg, KEY.txt, KEY.json (with an extra string field), sizes.json."""
    d = tmp_path / "wds"
    d.mkdir()
    path = d / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for i, (key, caption) in enumerate(zip(KEYS, CAPTIONS)):
            add_member(tar, f"{key}.jpg", jpeg(i))
            add_member(tar, f"{key}.txt", caption.encode("utf-8"))
            meta = {"key": key, "caption": caption, "caption_short": SHORT[i], "width": 64 + 16 * i, "height": 48}
            add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    (d / "sizes.json").write_text(json.dumps({"00000.tar": 3}))
    return path


@pytest.fixture
def tsv(tmp_path: Path) -> Path:
    """open_clip's default CSV layout: tab-separated, header filepath/title, image paths relative to the cwd."""
    (tmp_path / "images").mkdir()
    rows = ["filepath\ttitle"]
    for i, caption in enumerate(CAPTIONS):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(jpeg(i))
        rows.append(f"images/{i}.jpg\t{caption}")
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def check_loader_result(r: dict) -> None:
    assert r["count"] == 3 and r["batches"] == 3
    assert sorted(r["texts"]) == sorted(CAPTIONS)
    assert len(r["decoded"]) == 3 and "red bicycle leaning against a brick wall" in r["decoded"]
    assert r["image_shapes"] == [[3, 224, 224]]  # really decoded and transformed
    assert r["num_samples"] == 3
    assert r["versions"]["open_clip_torch"] == "3.3.0" and r["versions"]["webdataset"] == "0.2.86"
    assert not [w for w in r["warnings"] if "webdataset error" in w], r["warnings"]


def test_open_clip_wds_reads_every_sample_with_sizes_json(shard: Path):
    r = open_clip_wds(str(shard))  # no --train-num-samples: open_clip reads sizes.json
    check_loader_result(r)
    assert sorted(r["keys"]) == KEYS
    assert r["passes"] == 1  # nothing had to be repeated to fill the epoch


def test_open_clip_wds_in_a_worker_process(shard: Path):
    r = open_clip_wds(str(shard), 3, workers=1)
    check_loader_result(r)
    assert sorted(r["keys"]) == KEYS and r["passes"] == 1


def test_open_clip_csv_reads_every_row(tsv: Path, tmp_path: Path):
    r = open_clip_csv(tsv, "filepath", "title", "\t", cwd=tmp_path)
    check_loader_result(r)


def test_webdataset_fields(shard: Path):
    samples = webdataset_fields(str(shard))
    assert [s["key"] for s in samples] == KEYS
    assert all(s["members"] == ["jpg", "json", "txt"] for s in samples)
    assert [s["txt"] for s in samples] == CAPTIONS
    assert [s["json"]["caption_short"] for s in samples] == SHORT
    assert all(s["json_error"] is None for s in samples)


def test_a_sample_open_clip_drops_shows(tmp_path: Path):
    """The harness makes a silent drop visible: a KEY.json that does not parse loses its sample, the
    loader repeats others to fill the epoch (passes == 2), and logs a warning; plain webdataset still
    sees the sample and the parse error."""
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for i, (key, caption) in enumerate(zip(KEYS, CAPTIONS)):
            add_member(tar, f"{key}.jpg", jpeg(i))
            add_member(tar, f"{key}.txt", caption.encode("utf-8"))
            add_member(tar, f"{key}.json", b"{not json" if i == 1 else b"{}")
    r = open_clip_wds(str(path), 3)
    assert r["count"] == 3 and len(r["texts"]) == 3 and r["passes"] == 2
    assert set(r["texts"]) == {CAPTIONS[0], CAPTIONS[2]}
    assert [w for w in r["warnings"] if "webdataset error" in w and "JSONDecodeError" in w]
    samples = webdataset_fields(str(path))
    assert [s["key"] for s in samples] == KEYS and samples[1]["json"] is None and samples[1]["json_error"]


def test_no_valid_sample_fails_instead_of_looping(tmp_path: Path):
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        add_member(tar, f"{KEYS[0]}.txt", b"a caption without an image")
    with pytest.raises(ConsumerError, match="no valid sample"):
        open_clip_wds(str(path), 1, timeout=300)
