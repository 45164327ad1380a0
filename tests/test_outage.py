"""An engine outage is not a result: with the openai engine's server down, dying mid-run or failing some
requests, the rows it could not serve wait (engine_unavailable), no shard holding one is done, the run
exits 69 naming the server, and the same command run again requests exactly those rows and ends with
the bytes of an uninterrupted run. A request the server refuses (400) stays a final engine_error.

The peer is a real HTTP server on 127.0.0.1 speaking the OpenAI completions protocol to the real `openai`
client (tests/fake_openai.py): deterministic, it answers a rewrite made from the prompt's caption and the
request's seed, and can be stopped, started again, told to drop connections or to answer an HTTP error.
Also here: the characters str.splitlines() breaks at are rejected inside a rewrite."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import require, run_cli
from fake_openai import FakeOpenAI
from rewrite.workdir import done, layout
from rewrite.rewriting import validate
from rewrite.engines.base import Completion

SOURCE = "human"
KEY = "sk-outage-secret-7c1e"
CAPTIONS = [f"a {colour} kite over field number {i}" for i, colour in enumerate(
    ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "pink"] * 2)]
CAPTIONS[7] = CAPTIONS[3]  # a repeat: dedup shares its request


@pytest.fixture
def server():
    require("openai")
    fake = FakeOpenAI().start()
    yield fake
    if fake.httpd is not None:
        fake.stop()


def planned(tmp_path: Path, name: str) -> Path:
    captions = tmp_path / "captions.txt"
    if not captions.exists():
        captions.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    work = tmp_path / name
    run_cli("shard", captions, "--out", work, "--num-shards", "2")
    return work


def rewrite_run(work: Path, url: str, scheduler: str, *extra: str):
    """`rewrite run` against the server: 2 requests in flight, one retry each, so an outage shows in seconds."""
    return run_cli("run", "--work", work, "--source", SOURCE, "--engine", "openai", "--base-url", url,
                   "--model", "served-model", "--concurrency", "2", "--request-retries", "1", "--chunk-rows", "3",
                   "--scheduler", scheduler, "--no-progress", *extra, check=False, env={"OPENAI_API_KEY": KEY})


def shard_files(work: Path) -> list[bytes]:
    return [layout.Work(work).rewrite_file(SOURCE, s).read_bytes() for s in range(2)]


def reference(tmp_path: Path, server: FakeOpenAI, scheduler: str) -> list[bytes]:
    """The shard files of an uninterrupted run, the server up throughout."""
    work = planned(tmp_path, f"reference-{scheduler}")
    assert rewrite_run(work, server.url, scheduler).returncode == 0
    return shard_files(work)


def committed_rows(work: Path) -> list[dict]:
    w = layout.Work(work)
    return [r for s in range(2) for part in sorted(w.parts(SOURCE, s).glob("*.parquet"))
            for r in pq.read_table(part).to_pylist()]


BY_KEY = {f"captions-{i:09d}": c for i, c in enumerate(CAPTIONS)}


def waiting_captions(work: Path) -> set[str]:
    """The captions of the committed rows waiting for the engine."""
    return {BY_KEY[r["key"]] for r in committed_rows(work) if r["reason"] == validate.ENGINE_UNAVAILABLE}


def uncommitted_captions(work: Path) -> set[str]:
    """The captions of the rows in no committed chunk (the run stopped before it took them)."""
    committed = {r["key"] for r in committed_rows(work)}
    return {caption for key, caption in BY_KEY.items() if key not in committed}


def states(work: Path) -> list[str]:
    return [done.check(layout.Work(work), SOURCE, s).state for s in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["stream", "chunked"])
def test_a_server_down_from_the_start_stops_the_run_and_a_rerun_finishes_it(tmp_path, server, scheduler):
    expected = reference(tmp_path, server, scheduler)
    server.stop()
    work = planned(tmp_path, "work")
    started = time.monotonic()
    proc = rewrite_run(work, server.url, scheduler, "--unavailable-after", "4")
    assert proc.returncode == 69, proc.stderr
    assert time.monotonic() - started < 60
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the engine at {server.url} is unavailable (APIConnectionError"), last
    assert last.endswith("run the same command again to retry") and "after 4 requests in a row" in last
    assert KEY not in proc.stderr + proc.stdout
    assert "done" not in states(work) and waiting_captions(work)
    committed = [p for s in range(2) for p in layout.Work(work).parts(SOURCE, s).glob("*.parquet")]
    assert 0 < len(committed) < 8  # the chunks taken were committed, and the run took no more (2 shards x 4)

    status = run_cli("status", "--work", work).stdout
    assert "done 0/2" in status and "waiting for the engine" in status, status
    listed = json.loads(run_cli("status", "--work", work, "--json").stdout)[0]
    assert listed["waiting"] and listed["rows_done"] == sum(part.stats["rows"] for s in range(2)
                                                           for part in done.parts(layout.Work(work), SOURCE, s)) > 0

    server.start()  # back on the same port
    proc = rewrite_run(work, server.url, scheduler)
    assert proc.returncode == 0, proc.stderr
    assert states(work) == ["done", "done"] and shard_files(work) == expected
    assert "done already" in rewrite_run(work, server.url, scheduler).stdout


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["stream", "chunked"])
def test_a_server_dying_mid_run_leaves_its_rows_waiting_and_a_rerun_requests_exactly_those(tmp_path, server, scheduler):
    expected = reference(tmp_path, server, scheduler)
    work = planned(tmp_path, "work")
    server.serve = 12  # then it drops every connection
    proc = rewrite_run(work, server.url, scheduler)
    assert proc.returncode == 69, proc.stderr
    assert "is unavailable (APIConnectionError" in proc.stderr
    assert "done" not in states(work)
    waiting, untaken = waiting_captions(work), uncommitted_captions(work)
    assert waiting and len(untaken) < len(set(CAPTIONS))  # rows were served before it died, and kept

    server.stop()
    server.serve, server.seen = None, []
    server.start()
    proc = rewrite_run(work, server.url, scheduler)
    assert proc.returncode == 0, proc.stderr
    # Exactly the rows that waited and those the first run never took; no row it committed otherwise.
    assert {caption for caption, _ in server.seen} == waiting | untaken
    assert shard_files(work) == expected


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["stream", "chunked"])
def test_sporadic_server_errors_leave_their_shard_unfinished_and_the_others_done(tmp_path, server, scheduler):
    expected = reference(tmp_path, server, scheduler)
    work = planned(tmp_path, "work")
    server.fail = {CAPTIONS[15]: 503}  # one caption of shard 1, answered 503 through every retry
    proc = rewrite_run(work, server.url, scheduler)
    assert proc.returncode == 69, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the engine at {server.url} was unavailable for some requests (InternalServerError"), last
    assert f"{SOURCE} shard 1 (1 rows)" in last and last.endswith("run the same command again to retry")
    assert f"{SOURCE} shard 00000:" in proc.stdout  # the other shard was finished
    assert states(work) == ["done", "partial"] and waiting_captions(work) == {CAPTIONS[15]}

    server.fail, server.seen = {}, []
    proc = rewrite_run(work, server.url, scheduler)
    assert proc.returncode == 0, proc.stderr
    assert {caption for caption, _ in server.seen} == {CAPTIONS[15]}
    assert shard_files(work) == expected
    stats = json.loads(layout.Work(work).stats_file(SOURCE, 1).read_text())
    assert validate.ENGINE_UNAVAILABLE not in stats["failed_reasons"] and stats["failed"] == sum(
        r["status"] == "failed" for r in pq.read_table(layout.Work(work).rewrite_file(SOURCE, 1)).to_pylist())


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["stream", "chunked"])
def test_a_request_the_server_refuses_is_a_final_engine_error(tmp_path, server, scheduler):
    work = planned(tmp_path, "work")
    server.fail = {CAPTIONS[4]: 400}
    proc = rewrite_run(work, server.url, scheduler)
    assert proc.returncode == 0, proc.stderr
    assert states(work) == ["done", "done"]
    rows = pq.read_table(layout.Work(work).rewrite_file(SOURCE, 0)).to_pylist()
    assert [(r["status"], r["reason"]) for r in rows if r["key"] == "captions-000000004"] == [("failed", "engine_error")]
    stats = json.loads(layout.Work(work).stats_file(SOURCE, 0).read_text())
    assert all(m.startswith("BadRequestError: Error code: 400") for m in stats["engine_errors"]), stats
    assert not any(KEY in m for m in stats["engine_errors"])  # the server echoed the key: it is never kept
    assert "done already" in rewrite_run(work, server.url, scheduler).stdout


@pytest.mark.slow
def test_the_engine_tells_a_refused_request_from_a_server_that_cannot_serve(server, monkeypatch):
    """400 and 422 refuse the request itself: a final error. The others say the server cannot serve (for
    now, or this run): unavailable, as are a dropped connection and one refused."""
    from rewrite import engines
    from rewrite.engines.base import Request
    from rewrite.defaults import Sampling

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the server echoes it in its error answers
    eng = engines.load("openai", "served-model", base_url=server.url, request_retries=0)
    answers = {}
    for status in (400, 422, 401, 403, 404, 429, 500, 503):
        server.fail = {"a kite": status}
        [completion] = eng.generate([Request("a => b\n\na kite =>", 1)], Sampling())
        assert f"Error code: {status}" in completion.error and KEY not in completion.error
        answers[status] = completion.finish_reason
    server.fail, server.serve = {}, 0
    answers["dropped"] = eng.generate([Request("a kite =>", 1)], Sampling())[0].finish_reason
    server.stop()
    answers["refused"] = eng.generate([Request("a kite =>", 1)], Sampling())[0].finish_reason
    assert answers == {400: "error", 422: "error", 401: "unavailable", 403: "unavailable", 404: "unavailable",
                       429: "unavailable", 500: "unavailable", 503: "unavailable", "dropped": "unavailable",
                       "refused": "unavailable"}


@pytest.mark.slow
def test_an_engine_that_gave_up_sends_no_more_until_a_run_restarts_it(server):
    from rewrite import engines
    from rewrite.engines.base import Request
    from rewrite.defaults import Sampling

    server.stop()
    eng = engines.load("openai", "served-model", base_url=server.url, request_retries=0, concurrency=2,
                       unavailable_after=3)
    out = eng.generate([Request(f"x =>{i}", i) for i in range(10)], Sampling())
    assert all(c.finish_reason == "unavailable" and "APIConnectionError" in c.error for c in out)
    assert 3 <= sum(c.sent for c in out) <= 4 and eng.outage.gave_up  # the bound, and what was in flight
    server.start()
    assert [c.sent for c in eng.generate([Request("a kite =>", 1)], Sampling())] == [False]
    eng.outage.restart()  # as a run does when it starts
    assert [c.finish_reason for c in eng.generate([Request("a kite =>", 1)], Sampling())] == ["stop"]


@pytest.mark.parametrize("char", [c for c in map(chr, range(0x110000)) if len(f"a{c}b".splitlines()) > 1])
def test_every_character_splitlines_breaks_at_is_rejected_in_a_rewrite(char):
    completion = Completion(text=f"a kite{char}over a field", prompt_tokens=1, generated_tokens=1, finish_reason="stop")
    assert validate.check(f"a kite{char}over a field", "a kite", completion, []) == validate.CONTROL_CHARACTERS
