"""Shared fixtures: real parquet/text inputs made here, the real embedded model, the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

CAPTIONS = [
    "red bicycle leaning against a brick wall",
    "children playing football in the park",
    "a bowl of ramen with egg and scallions",
    "old lighthouse on a rocky coast",
    "children playing football in the park",  # a repeat: dedup
    "sunset over the desert => dunes",  # the prompt's own separator
    'the "best" pizza in town',
    "café terrace in münchen at night",
    "line one\nline two of a caption",
    "dog catching a frisbee on the beach",
    "",  # blank: skipped, not rewritten
    "vintage car at a classic auto show",
]


def png_bytes(i: int) -> bytes:
    """Small distinct byte strings standing in for encoded images (passed through, never decoded)."""
    return b"\x89PNG\r\n\x1a\n" + bytes([i % 256]) * (64 + i)


def write_parquet(path: Path, captions: list[str | None], start: int = 0, row_group_size: int = 5) -> Path:
    n = len(captions)
    table = pa.table({
        "key": [f"{start + i:09d}" for i in range(n)],
        "caption": captions,
        "image": pa.array([{"bytes": png_bytes(start + i), "path": f"{start + i}.png"} for i in range(n)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "width": list(range(100 + start, 100 + start + n)),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    """An img2dataset-like folder: two parquet shards of captions plus a stats file that is ignored."""
    d = tmp_path / "input"
    write_parquet(d / "00000.parquet", CAPTIONS[:7], 0)
    write_parquet(d / "00001.parquet", CAPTIONS[7:], 7)
    (d / "00000_stats.json").write_text("{}")
    return d


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "captions.txt"
    p.write_text("\n".join(c.replace("\n", " ") for c in CAPTIONS) + "\n", encoding="utf-8")
    return p


def run_cli(*args: str, check: bool = True, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `rewrite` command in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "rewrite.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"rewrite {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def processes_marked(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (a test sets it for a command it starts: every
    process that command starts inherits it, whatever its command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def require(module: str):
    """Import a heavy optional module for a slow test: skip without it, but fail in CI (REWRITE_REQUIRE_SLOW)."""
    if os.environ.get("REWRITE_REQUIRE_SLOW"):
        return __import__(module)
    return pytest.importorskip(module)


class Recording:
    """Wraps a real engine and keeps the requests it was sent (to compare prompts across engines)."""

    def __init__(self, engine):
        self.engine, self.requests = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, requests, sampling):
        self.requests += list(requests)
        return self.engine.generate(requests, sampling)

    def stream(self, requests, sampling):
        from rewrite.engines import base

        def recorded():
            for request in requests:
                if request is not None:
                    self.requests.append(request)
                yield request

        return base.stream(self.engine, recorded(), sampling)


@pytest.fixture(scope="session")
def engine():
    """The transformers engine on the embedded SmolLM2-135M (loaded once per test session)."""
    from rewrite import engines

    eng = engines.load("transformers", None, batch_size=16)
    yield eng
    eng.close()
