"""Request building and judging in worker processes (`--builders N`, run/builders.py): real worker
processes holding the packaged model's tokenizer make what the engine's process makes, errors come back
as they were raised, and no worker outlives the process that started it."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import processes_marked, run_cli
from fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

from rewrite.run import builders as builders_lib  # noqa: E402


def builder_pids(parent: int) -> list[int]:
    """Live worker processes started by `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"rewrite.run.builders" in (entry / "cmdline").read_bytes():
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z" and int(stat[1]) == parent:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_workers_make_what_the_engines_process_makes(engine):
    """Requests (first attempts with their fitted captions and cuts, and retries) and verdicts (the
    faithfulness gate on) from two workers equal those made in this process, for every set and a chat
    template; an error raised in a worker is raised as it was."""
    from rewrite import meta
    from rewrite.engines.base import Completion
    from rewrite.rewriting import prompt
    from rewrite.run import rows, shardwork
    from rewrite.run.config import RunConfig

    pool = builders_lib.Builders(2, engine)
    try:
        assert pool.wait_ready()
        assert len(builder_pids(os.getpid())) == 2
        captions = ["a dog on a beach", "Two  CATS\tsleeping", "word " * 300, "café 東京", "a => b"]
        for source, template in [("chatgpt", "laclip"), ("coco", "laclip"), ("human", "chat"), ("bard", "laclip")]:
            ask = shardwork.prompting(RunConfig(source=source, min_faithfulness=0.3), meta.load_usable(source),
                                      prompt.load_template(template), engine)
            jobs = [(f"id{i}", c, index, attempt) for i, c in enumerate(captions) for index in (0, 1) for attempt in (0, 2)]
            made = pool.first_requests(ask, jobs).result()
            assert made == rows.first_requests(ask, jobs)
            again = [(ident, fitted, index, attempt + 1) for (ident, _, index, attempt), (fitted, _, _) in zip(jobs, made)]
            assert pool.requests_again(ask, again).result() == rows.requests_again(ask, again)
            judged = [(Completion(text, 50, 9, "stop"), caption, targets, ask.min_faithfulness)
                      for text, caption, (_, _, (_, targets, _)) in zip(
                          ["A dog runs on the sand.", "", "an unrelated sentence about cars", "Café in Tokyo.", "a => b"],
                          captions, made)]
            assert pool.judge(judged).result() == rows.judge_many(judged)
        tight = dataclasses.replace(ask, budget=20)  # the examples alone do not fit: refused, as in this process
        with pytest.raises(prompt.TemplateError, match="examples alone"):
            pool.first_requests(tight, jobs[:1]).result()
    finally:
        pool.close()
    deadline = time.time() + 10
    while builder_pids(os.getpid()) and time.time() < deadline:
        time.sleep(0.05)
    assert builder_pids(os.getpid()) == []


def test_workers_still_starting_when_the_stream_ends_are_killed_not_waited_for(engine):
    """A stream shorter than its workers' start (loading transformers and the tokenizer: seconds) ends
    without waiting for it: `close` kills the workers that have answered nothing, the check call fails, and
    no worker is left."""
    pool = builders_lib.Builders(2, engine)
    pool.close()  # at once: both workers are still loading
    assert [worker.process.returncode for worker in pool.workers] == [-signal.SIGKILL] * 2
    with pytest.raises(builders_lib.BuildersUnavailable):
        pool.checked.result()
    assert builder_pids(os.getpid()) == []


def test_workers_die_with_a_killed_parent(tmp_path):
    """SIGKILL of the process that started them ends the workers (the kernel's parent-death signal)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from rewrite.engines import model\n"
        "from rewrite.engines.base import TokenizerEngine\n"
        "from rewrite.run.builders import Builders\n"
        "from transformers import AutoTokenizer\n"
        "class Tokens(TokenizerEngine):\n"
        "    name = 'tokens'\n"
        "    def __init__(self):\n"
        "        self.model = model.resolve(None)\n"
        "        self.tokenizer = AutoTokenizer.from_pretrained(self.model)\n"
        "    def generate(self, requests, sampling):\n"
        "        raise NotImplementedError\n"
        "pool = Builders(2, Tokens())\n"
        "assert pool.wait_ready()\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        workers = builder_pids(parent.pid)
        assert len(workers) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 10
    while any(Path(f"/proc/{pid}").exists() and (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")
              for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]


def test_a_run_with_builders_writes_the_bytes_of_one_without(tmp_path):
    """`rewrite run --builders 2` (its workers waited for, so they do the work: they say so) writes the
    rewrite files and stats of `--builders 0`, with two sets, two rewrites a caption and rejected
    rewrites retried; the server's answers depend on each request's caption and seed. No worker is
    left when the run ends."""
    from rewrite.engines import model

    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(f"a photo number {i} of a {['dog', 'cat', 'car'][i % 3]}" for i in range(40)) + "\n")
    server = FakeOpenAI().start()
    marker = f"REWRITE_TEST_BUILDERS_{os.getpid()}"
    try:
        outputs = {}
        for builders in ("0", "2"):
            work = tmp_path / f"w{builders}"
            run_cli("shard", captions, "--out", work, "--num-shards", "2")
            done = run_cli("run", "--work", work, "--engine", "openai", "--base-url", server.url, "--model",
                           model.resolve(None), "--source", "chatgpt,coco", "--num-rewrites", "2", "--chunk-rows", "6",
                           "--scheduler", "stream", "--builders", builders, "--no-progress",
                           env={"OPENAI_API_KEY": "sk-x", "REWRITE_WAIT_FOR_BUILDERS": "1", marker: "1"})
            assert ("building requests and judging in 2 worker processes" in done.stderr) == (builders == "2"), done.stderr
            outputs[builders] = {}
            for path in sorted((work / "rewrites").rglob("*")):
                if path.suffix == ".parquet":
                    outputs[builders][path.relative_to(work).as_posix()] = path.read_bytes()
                elif path.name.endswith(".stats.json"):
                    stats = json.loads(path.read_text())
                    outputs[builders][path.relative_to(work).as_posix()] = {
                        k: v for k, v in stats.items() if k not in ("seconds", "captions_per_s", "created")}
        assert len(outputs["0"]) == 8 and outputs["0"] == outputs["2"]
        assert processes_marked(marker) == []
    finally:
        server.stop()
