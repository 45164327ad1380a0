"""Everything the tool creates follows the umask, so that a group on a shared cluster can read the work
dir, the dataset and a shared model cache (files written through mkstemp or mkdtemp would be 0600/0700)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rewrite.workdir import atomic
from rewrite.workdir.lock import ShardLock

UMASKS = [0o022, 0o027, 0o002]  # the usual, a group that only reads, a group that shares the writing (locks)


def wrong_modes(root: Path, umask: int) -> dict[str, str]:
    """Every file and folder in the tree at root (root too) whose mode is not 0o666 / 0o777 less the umask."""
    wrong = {}
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        want = (0o777 if stat.S_ISDIR(mode) else 0o666) & ~umask
        if stat.S_IMODE(mode) != want:
            wrong[str(path.relative_to(root))] = f"{stat.S_IMODE(mode):o}, not {want:o}"
    return wrong


@pytest.mark.parametrize("umask", UMASKS, ids=oct)
def test_atomic_writes_and_lock_files_follow_the_umask(tmp_path, umask):
    """The fast check of the two ways files are made: atomic commits (every output) and lock files."""
    root = tmp_path / "made"  # made by the code under test, like everything in it
    old = os.umask(umask)
    try:
        atomic.write_json(root / "a.json", {"a": 1})
        with atomic.atomic_path(root / "b.parquet") as tmp:
            tmp.write_bytes(b"data")
        with ShardLock(root / "locks" / "00000.lock") as lock:
            assert lock.acquire()
    finally:
        os.umask(old)
    assert sorted(p.name for p in root.rglob("*")) == ["00000.lock", "a.json", "b.parquet", "locks"]
    assert wrong_modes(root, umask) == {}


def run_cli(umask: int, *args, env: dict | None = None) -> None:
    """The real `rewrite` command in a subprocess started with `umask`."""
    proc = subprocess.run([sys.executable, "-m", "rewrite.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})}, preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, f"rewrite {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"


# The whole pipeline under one umask that differs from the default (the unit test above covers all three).
@pytest.mark.parametrize("umask", [0o027], ids=oct)
def test_work_dir_dataset_and_model_cache_follow_the_umask(tmp_path, umask):
    """A whole job (plan, run with the embedded model converted into an empty cache, export) under a
    umask: every file and folder it leaves, named or not, has the umask's mode."""
    captions = tmp_path / "captions.txt"
    captions.write_text("a red bicycle\nold lighthouse on a rocky coast\na bowl of ramen\ndog on the beach\n"
                        "a vintage car\n", encoding="utf-8")
    work, out, cache = tmp_path / "work", tmp_path / "dataset", tmp_path / "cache"
    run_cli(umask, "shard", captions, "--out", work, "--num-shards", 1)
    run_cli(umask, "run", "--work", work, "--source", "bard", "--no-progress", "--chunk-rows", 2,
            env={"REWRITE_CACHE": str(cache)})
    run_cli(umask, "export", "--work", work, "--out", out)
    # The trees hold what is checked: lock files, the converted model and the exported data.
    assert list(work.rglob("*.lock")) and list(cache.rglob("*.safetensors")) and list(out.rglob("*.parquet"))
    assert {root.name: wrong_modes(root, umask) for root in (work, out, cache)} == {"work": {}, "dataset": {}, "cache": {}}
