"""Every read once: one `rewrite run` over N shards and two sets parses the plan once and checks each
shard's state once; one `rewrite export` parses the plan once and hashes each shard file once. The real
CLI runs in this process (so the reads can be counted), against the deterministic server on 127.0.0.1."""
from __future__ import annotations

from collections import Counter

import pytest
from typer.testing import CliRunner

from conftest import require, run_cli
from fake_openai import FakeOpenAI
from rewrite.cli import app
from rewrite.workdir import done
from rewrite.workdir.manifest import Manifest

SETS = ("human", "coco")
SHARDS = 4


@pytest.fixture
def counted(monkeypatch):
    """Counts of plan parses, shard state checks (by set and shard) and file hashes (by file name)."""
    counts = {"plans": 0, "checks": Counter(), "hashes": Counter()}
    parse, check, sha256 = Manifest.from_dict.__func__, done.check, done.sha256

    def counting_parse(cls, *args, **kwargs):
        counts["plans"] += 1
        return parse(cls, *args, **kwargs)

    def counting_check(w, source, shard, **kwargs):
        counts["checks"][source, shard] += 1
        return check(w, source, shard, **kwargs)

    def counting_sha256(path):
        counts["hashes"][f"{path.parent.name}/{path.name}"] += 1
        return sha256(path)

    monkeypatch.setattr(Manifest, "from_dict", classmethod(counting_parse))
    monkeypatch.setattr(done, "check", counting_check)
    monkeypatch.setattr(done, "sha256", counting_sha256)
    return counts


def test_a_run_and_an_export_read_the_plan_once_check_each_shard_once_and_hash_each_file_once(tmp_path, counted):
    require("openai")
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(f"a photo of thing number {i} on a table" for i in range(12)) + "\n")
    work = tmp_path / "work"
    run_cli("shard", captions, "--out", work, "--num-shards", str(SHARDS))
    server = FakeOpenAI().start()
    try:
        ran = CliRunner().invoke(app, ["run", "--work", str(work), "--source", ",".join(SETS), "--engine", "openai",
                                       "--base-url", server.url, "--model", "served-model", "--no-progress"],
                                 env={"OPENAI_API_KEY": "sk-x"})
    finally:
        server.stop()
    assert ran.exit_code == 0, ran.output
    assert counted["plans"] == 1
    assert counted["checks"] == Counter({(s, shard): 1 for s in SETS for shard in range(SHARDS)})
    assert not counted["hashes"]  # a shard file's sha256 is taken while it is written

    counted["plans"], counted["checks"] = 0, Counter()
    exported = CliRunner().invoke(app, ["export", "--work", str(work), "--out", str(tmp_path / "out"), "--no-progress"])
    assert exported.exit_code == 0, exported.output
    assert counted["plans"] == 1
    assert counted["hashes"] == Counter({f"{s}/{shard:05d}.parquet": 1 for s in SETS for shard in range(SHARDS)})
