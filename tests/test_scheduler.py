"""The streaming scheduler (scheduler.py): dedup over the whole shard and commits of every chunk on the
real engine; the order it feeds an engine, on a scripted one (the order is what is under test there)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rewrite.workdir import done, layout
from rewrite.inputs import plan
from rewrite.run import runner, scheduler
from rewrite import stop
from rewrite.engines.base import Completion, Engine, Intake, in_order
from rewrite.defaults import Sampling, Schedule
from rewrite.run.config import EngineUnavailable, RunConfig

from conftest import run_cli
from fake_openai import FakeOpenAI

STEP = 0.05  # seconds
CAPTIONS = ["a red kite over a green field", "two dogs asleep on a sofa", "a bowl of soup with bread",
            "a lighthouse at dusk", "a cyclist on a mountain road", "fresh bread on a wooden board",
            "a tram in the snow", "three boats at a pier", "a child flying a paper plane"]


def test_dedup_spans_the_shard_not_one_chunk(tmp_path, engine):
    """The same six captions in each of three chunks: streaming asks for each once in the shard, a chunk
    at a time asks once per chunk; both write every row, equal rows equal rewrites."""
    pq.write_table(pa.table({"caption": CAPTIONS[:6] * 3}), tmp_path / "repeats.parquet")
    stats = {}
    for streaming in (True, False):
        work = tmp_path / f"work-{streaming}"
        plan.plan([str(tmp_path / "repeats.parquet")], work, num_shards=1)
        stats[streaming] = runner.run(work, RunConfig(source="coco", chunk_rows=6, max_attempts=1), [0], engine,
                                      progress=False, schedule=Schedule(streaming=streaming))[0]
        rows = pq.read_table(layout.Work(work).rewrite_file("coco", 0)).to_pylist()
        assert len(rows) == 18
        assert [r["rewrite"] for r in rows[:6]] * 3 == [r["rewrite"] for r in rows]
    assert stats[True]["requests"] == 6 and stats[True]["unique_captions"] == 18  # 6 per chunk, counted per chunk
    assert stats[False]["requests"] == 18


class Scripted(Engine):
    """Completes requests in the order it takes them, `hold` at a time, one per step of STEP seconds; the
    first attempt of a caption in `reject` comes back empty (rejected). Records what it was sent."""

    name, model = "scripted", "none"

    def __init__(self, reject: set[str], hold: int = 2):
        self.reject, self.hold, self.sent = reject, hold, []

    context_length = 4096

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="ignore")

    def generate(self, requests, sampling):
        raise AssertionError("the streaming scheduler calls stream")

    def stream(self, requests, sampling):
        intake = Intake(requests)
        held: list = []
        while True:
            time.sleep(STEP)  # a step: the judge, in another thread, has judged what came back before it
            held += intake.take(self.hold - len(held), holding=bool(held))
            if not held:
                if intake.ended:
                    return
                continue
            position, request = held.pop(0)
            caption = request.prompt.rsplit("\n", 2)[-1].split(" =>")[0]
            first = not any(c == caption for c, _ in self.sent)
            self.sent.append((caption, request.seed))
            text = "" if first and caption in self.reject else f"a new wording of {caption} today"
            yield position, Completion(text=text + "\n", prompt_tokens=1, generated_tokens=1, finish_reason="stop")


def test_a_rejected_rewrite_goes_back_ahead_of_new_work(tmp_path):
    pq.write_table(pa.table({"caption": CAPTIONS[:6]}), tmp_path / "c.parquet")
    work = tmp_path / "work"
    plan.plan([str(tmp_path / "c.parquet")], work, num_shards=1)
    engine = Scripted(reject={CAPTIONS[0]})
    stats = runner.run(work, RunConfig(source="human", chunk_rows=6), [0], engine, progress=False,
                       schedule=Schedule(sort_by_length=False, group_by_examples=False))[0]
    order = [c for c, _ in engine.sent]
    assert order.count(CAPTIONS[0]) == 2  # tried again with a new seed
    retry = order.index(CAPTIONS[0], 1)
    assert retry == 2, order  # at the engine's first pull after its rejection, not after the chunk's other rows
    assert len(set(s for _, s in engine.sent)) == len(engine.sent)  # every attempt its own seed
    assert stats["ok"] == 6 and stats["rejected"] == {"empty": 1} and stats["requests"] == 7


def test_schedule_order_puts_cut_captions_last():
    class Item:
        def __init__(self, cut):
            self.cut = cut

    class Req:
        def __init__(self, prompt):
            self.prompt, self.group = prompt, ""

    built = [(Item(True), Req("a")), (Item(False), Req("bbb")), (Item(False), Req("cc"))]
    assert scheduler.schedule_order(built, Schedule()) == [2, 1, 0]


def planned_shards(tmp_path, shards: int, per_shard: int = 3):
    pq.write_table(pa.table({"caption": CAPTIONS[:shards * per_shard]}), tmp_path / "c.parquet")
    work = tmp_path / "work"
    plan.plan([str(tmp_path / "c.parquet")], work, num_shards=shards)
    return work


class Watching(Scripted):
    """Scripted, noting at each request it takes which shards are done (their stats written) and how
    many streams it was asked for; `on_take(request)` runs as a request is taken."""

    def __init__(self, work, source: str, shards: int, on_take=lambda request: None):
        super().__init__(reject=set())
        self.work, self.source, self.shards, self.on_take = layout.Work(work), source, shards, on_take
        self.done_when_taken, self.streams = [], 0

    def stream(self, requests, sampling):
        self.streams += 1

        def watched():
            for request in requests:
                if request is not None:
                    self.done_when_taken.append([done.check(self.work, self.source, s).state == done.DONE
                                                 for s in range(self.shards)])
                    self.on_take(request)
                yield request

        return super().stream(watched(), sampling)


def test_the_next_shard_joins_the_stream_before_the_one_before_is_done(tmp_path):
    """One stream for a task's shards: shard 1's first request reaches the engine while shard 0's last
    rows still decode (no drain between shards), and both shards end done and whole."""
    work = planned_shards(tmp_path, 2)
    engine = Watching(work, "human", 2)
    stats = runner.run(work, RunConfig(source="human", chunk_rows=3), [0, 1], engine, progress=False,
                       schedule=Schedule(streaming=True))
    assert engine.streams == 1
    assert [s["shard"] for s in stats] == [0, 1] and all(s["ok"] == 3 for s in stats)
    assert len(engine.done_when_taken) == 6
    assert engine.done_when_taken[3] == [False, False]  # shard 1's first request: shard 0 not done yet
    for s in range(2):
        assert pq.read_table(layout.Work(work).rewrite_file("human", s)).num_rows == 3


def test_a_stream_leaves_the_objects_it_started_with_out_of_gc_and_restores_both_settings(tmp_path):
    """While a stream runs, what existed before it is frozen out of Python's collections (a full one
    would hold the GIL for ~0.3 s with the engine waiting) and threads switch every SWITCH_INTERVAL;
    after it ends, both are as they were."""
    import gc
    import sys

    work = planned_shards(tmp_path, 1)
    seen = []
    engine = Watching(work, "human", 1, on_take=lambda request: seen.append((gc.get_freeze_count(), sys.getswitchinterval())))
    before = (gc.get_freeze_count(), sys.getswitchinterval())
    runner.run(work, RunConfig(source="human", chunk_rows=3), [0], engine, progress=False,
               schedule=Schedule(streaming=True))
    assert len(seen) == 3
    assert all(frozen > 10_000 and switch == pytest.approx(scheduler.SWITCH_INTERVAL) for frozen, switch in seen)
    assert (gc.get_freeze_count(), sys.getswitchinterval()) == before


def test_a_units_prompt_pieces_are_checked_while_its_first_chunk_is_read(tmp_path, monkeypatch):
    """The check that prompt ids from pieces equal whole prompts (prompt.assemble: hundreds of prompts
    tokenized, ~0.03 s a set) runs beside the builder's read of the unit's first chunk, not before it:
    here the check's tokenizer calls wait for that read (they would wait in vain before it)."""
    work = planned_shards(tmp_path, 1)
    chunk_read, read_first = threading.Event(), []
    iter_shard = plan.iter_shard

    def reading(*args, **kwargs):
        for table in iter_shard(*args, **kwargs):
            chunk_read.set()
            yield table

    class Checking(Scripted):
        def encode_many(self, texts):
            read_first.append(chunk_read.wait(5))
            return [self.encode(t) for t in texts]

    monkeypatch.setattr(plan, "iter_shard", reading)
    engine = Checking(reject=set())
    stats = runner.run(work, RunConfig(source="human", chunk_rows=3), [0], engine, progress=False,
                       schedule=Schedule(streaming=True))
    assert len(read_first) >= 3 and all(read_first), read_first  # the check's pieces, captions, prompts
    assert stats[0]["ok"] == 3 and len(engine.sent) == 3


def test_the_first_requests_go_to_the_engine_while_the_pieces_check_runs(tmp_path):
    """The run's first requests do not wait for the pieces check where they are the same whichever way it
    goes (rows.first_requests_either_way): here the check's tokenizer calls wait for the engine's first
    request (they would wait in vain if the requests waited for the check), and the requests are those
    of a run whose check was done before it started."""
    first_taken, check_waited = threading.Event(), []

    class CheckingLate(Scripted):
        def encode_many(self, texts):
            if threading.current_thread().name.startswith("rewrite-prompting"):  # the check, not the builder
                check_waited.append(first_taken.wait(5))
            return [self.encode(t) for t in texts]

        def stream(self, requests, sampling):
            def taken():
                for request in requests:
                    if request is not None:
                        self.requests.append(request)
                        first_taken.set()
                    yield request
            return super().stream(taken(), sampling)

        def generate(self, requests, sampling):  # a chunk at a time: its requests made after the check
            return in_order(self.stream(requests, sampling), len(requests))

    config = RunConfig(source="human", chunk_rows=3)
    runs = []
    for streaming in (True, False):
        engine = CheckingLate(reject=set())
        engine.requests = []
        (tmp_path / str(streaming)).mkdir()
        stats = runner.run(planned_shards(tmp_path / str(streaming), 1), config, [0], engine, progress=False,
                           schedule=Schedule(streaming=streaming))
        assert stats[0]["ok"] == 3
        runs.append(sorted(engine.requests, key=lambda r: r.seed))
    assert len(check_waited) >= 3 and all(check_waited), check_waited  # the check went on after the first request
    assert runs[0] == runs[1] and all(r.prompt_ids == tuple(r.prompt.encode()) for r in runs[0])


def test_sets_share_a_stream_unless_their_sampling_differs(tmp_path):
    work = planned_shards(tmp_path, 2)
    same = Watching(work, "human", 2)
    configs = [RunConfig(source=s, chunk_rows=3) for s in ("human", "coco")]
    assert len(runner.run_sets(work, configs, [0, 1], same, progress=False, schedule=Schedule(streaming=True))) == 4
    assert same.streams == 1 and len(same.sent) == 12

    work2 = tmp_path / "other"
    plan.plan([str(tmp_path / "c.parquet")], work2, num_shards=2)
    hotter = [RunConfig(source="human", chunk_rows=3),
              RunConfig(source="coco", chunk_rows=3, sampling=Sampling(temperature=1.2))]
    differ = Watching(work2, "human", 2)
    assert len(runner.run_sets(work2, hotter, [0, 1], differ, progress=False, schedule=Schedule(streaming=True))) == 4
    assert differ.streams == 2  # one per sampling setting, each over both shards
    assert len(differ.sent) == 12


def test_a_stop_between_shards_finishes_the_shards_in_flight_and_leaves_the_rest(tmp_path):
    """SIGUSR1 as shard 1's first request is taken, one chunk open at a time: shard 0 is done, shard 1's
    chunk (in flight) is committed, shard 2 is not started; a rerun joins shard 1 without a request and
    does shard 2."""
    work = planned_shards(tmp_path, 3)
    signalled = []

    def stop_at_shard_1(request):
        if len(signalled) == 0 and len(engine.done_when_taken) == 4:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)

    engine = Watching(work, "human", 3, on_take=stop_at_shard_1)
    config = RunConfig(source="human", chunk_rows=3)
    with pytest.raises(stop.StopRequested):
        runner.run(work, config, [0, 1, 2], engine, progress=False, schedule=Schedule(streaming=True, open_chunks=1))
    w = layout.Work(work)
    assert [done.check(w, "human", s).state == done.DONE for s in range(3)] == [True, False, False]
    assert [p.name for p in w.parts("human", 1).glob("*.parquet")] == ["00000.parquet"]
    assert not w.parts("human", 2).exists()
    again = Watching(work, "human", 3)
    stats = runner.run(work, config, [0, 1, 2], again, progress=False, schedule=Schedule(streaming=True))
    assert [s["shard"] for s in stats] == [1, 2] and len(again.sent) == 3
    assert [s["ok"] for s in stats] == [3, 3]


class Flaky(Engine):
    """Answers each request from its caption and seed alone (empty, so rejected, for a third of the seeds);
    the captions in `down` it cannot serve (finish_reason "unavailable", as a server down), and after
    `give_up_after` of those in a row it answers every request unsent, as the openai engine does
    (engines.base.Outage). Records what it sent. Its `generate` serves both schedulers."""

    name, model, context_length = "flaky", "none", 4096

    def __init__(self, down=(), give_up_after: int = 1000):
        from rewrite.engines.base import Outage

        self.down, self.sent, self.outage = set(down), [], Outage(give_up_after)

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="ignore")

    def generate(self, requests, sampling):
        out = []
        for request in requests:
            if self.outage.gave_up:
                out.append(self.outage.unsent())
                continue
            caption = request.prompt.rsplit("\n", 2)[-1].split(" =>")[0]
            self.sent.append((caption, request.seed))
            if caption in self.down:
                out.append(Completion("", 0, 0, "unavailable", error="ConnectionError: no server"))
            else:
                text = "" if request.seed % 3 == 0 else f" {caption}, seen in {('soft', 'grey', 'warm')[request.seed % 3]} light"
                out.append(Completion(text + "\n", 5, 5, "stop"))
            self.outage.note(out[-1])
        return out


MANY = [f"a kite number {i} over a green field" for i in range(14)] + ["two dogs asleep on a sofa"] * 3


def flaky_work(tmp_path, name: str):
    if not (tmp_path / "many.parquet").exists():
        pq.write_table(pa.table({"caption": MANY}), tmp_path / "many.parquet")
    work = tmp_path / name
    plan.plan([str(tmp_path / "many.parquet")], work, num_shards=2)
    return work


def shard_bytes(work, source: str = "human") -> list[bytes]:
    return [layout.Work(work).rewrite_file(source, s).read_bytes() for s in range(2)]


@pytest.mark.parametrize("streaming", [True, False])
def test_rows_the_engine_could_not_serve_wait_and_a_rerun_requests_exactly_them(tmp_path, streaming):
    """Rows whose requests came back unavailable are committed as failed (engine_unavailable) with the rest of
    their chunk, their shards are not done, status counts them; a rerun requests those rows alone, at the
    attempts they had reached, and ends with an uninterrupted run's bytes."""
    from rewrite.workdir import status

    config, schedule = RunConfig(source="human", chunk_rows=4), Schedule(streaming=streaming)
    reference = flaky_work(tmp_path, "reference")
    runner.run(reference, config, [0, 1], Flaky(), progress=False, schedule=schedule)
    work = flaky_work(tmp_path, "work")
    down = {MANY[2], MANY[11], MANY[16]}
    with pytest.raises(EngineUnavailable, match=r"^the flaky engine was unavailable for some requests "
                                                       r"\(ConnectionError: no server\)") as raised:
        runner.run(work, config, [0, 1], Flaky(down), progress=False, schedule=schedule)
    assert raised.value.waiting == {("human", 0): 1, ("human", 1): 4} and raised.value.finished == []
    w = layout.Work(work)
    assert [done.check(w, "human", s).state for s in range(2)] == ["partial", "partial"]

    manifest, [st] = status.collect(work)
    assert st.rows_done == len(MANY) and st.waiting == {0: 1, 1: 4} and "engine_unavailable" in st.reasons
    assert f"rows {len(MANY)}/{len(MANY)}" in status.render(manifest, [st])

    again = Flaky()
    finished = runner.run(work, config, [0, 1], again, progress=False, schedule=schedule)
    assert {caption for caption, _ in again.sent} == down
    assert shard_bytes(work) == shard_bytes(reference)
    assert all("engine_unavailable" not in s["failed_reasons"] for s in finished)
    assert sum(s["ok"] + s["failed"] for s in finished) == len(MANY)


@pytest.mark.parametrize("streaming", [True, False])
def test_retry_failed_gives_the_failed_rows_another_round_and_keeps_the_others(tmp_path, streaming):
    """--retry-failed on done shards requests their failed rows alone, at attempts after those spent (new
    seeds), keeps every other row, and ends where a run given both rounds from the start ends."""
    config, schedule = RunConfig(source="human", chunk_rows=4, max_attempts=1), Schedule(streaming=streaming)
    work = flaky_work(tmp_path, "work")
    runner.run(work, config, [0, 1], Flaky(), progress=False, schedule=schedule)
    before = [r for s in range(2) for r in pq.read_table(layout.Work(work).rewrite_file("human", s)).to_pylist()]
    failed = {MANY[i] for i, r in enumerate(before) if r["status"] == "failed"}
    first = Flaky()  # the same first run again, to see its seeds
    runner.run(flaky_work(tmp_path, "first"), config, [0, 1], first, progress=False, schedule=schedule)
    first_seeds = {seed for _, seed in first.sent}
    assert failed

    retry = Flaky()
    runner.run(work, config, [0, 1], retry, progress=False, schedule=schedule, retry_failed=True)
    assert {caption for caption, _ in retry.sent} == failed and not {seed for _, seed in retry.sent} & first_seeds
    after = [r for s in range(2) for r in pq.read_table(layout.Work(work).rewrite_file("human", s)).to_pylist()]
    assert [a for a, b in zip(after, before) if b["status"] == "ok"] == [b for b in before if b["status"] == "ok"]
    assert sum(r["status"] == "failed" for r in after) < len(failed)

    both = flaky_work(tmp_path, "both")
    runner.run(both, config, [0, 1], Flaky(), progress=False, schedule=schedule, retry_failed=True)
    assert shard_bytes(work) == shard_bytes(both)
    assert json.loads(layout.Work(work).stats_file("human", 0).read_text())["retry_round"] == 1


def test_status_counts_the_rows_of_the_committed_chunks_of_a_partial_shard(tmp_path):
    from rewrite.workdir import status

    work = planned_shards(tmp_path, 1, per_shard=6)
    engine = Watching(work, "human", 1, on_take=lambda request: os.kill(os.getpid(), signal.SIGUSR1))
    with pytest.raises(stop.StopRequested):
        runner.run(work, RunConfig(source="human", chunk_rows=3), [0], engine, progress=False,
                   schedule=Schedule(streaming=True, open_chunks=1))
    manifest, [st] = status.collect(work)
    assert st.shards == {0: "partial"} and (st.rows_done, st.ok) == (3, 3)
    assert "rows 3/6  ok 3" in status.render(manifest, [st])


@pytest.mark.parametrize("streaming", [True, False])
def test_an_engine_that_gives_up_stops_the_run_and_a_rerun_finishes_it(tmp_path, streaming):
    """Every request unavailable: after 3 in a row the engine gives up, the chunks taken are committed, no
    other is taken and no shard is done; the rerun, the engine back, ends as an uninterrupted run."""
    config, schedule = RunConfig(source="human", chunk_rows=2), Schedule(streaming=streaming, open_chunks=2)
    reference = flaky_work(tmp_path, "reference")
    runner.run(reference, config, [0, 1], Flaky(), progress=False, schedule=schedule)
    work = flaky_work(tmp_path, "work")
    down = Flaky(down=MANY, give_up_after=3)
    with pytest.raises(EngineUnavailable, match=r"^the flaky engine is unavailable \(ConnectionError: no server\): "
                                                       r"the run stopped after 3 requests in a row") as raised:
        runner.run(work, config, [0, 1], down, progress=False, schedule=schedule)
    assert raised.value.gave_up and len(down.sent) == 3
    w = layout.Work(work)
    parts = [p for s in range(2) for p in w.parts("human", s).glob("*.parquet")]
    assert 1 <= len(parts) <= 2 and "done" not in [done.check(w, "human", s).state for s in range(2)]
    again = Flaky()
    runner.run(work, config, [0, 1], again, progress=False, schedule=schedule)
    assert shard_bytes(work) == shard_bytes(reference)


@pytest.mark.parametrize("streaming", [True, False])
def test_a_retry_round_stopped_half_way_and_run_again_ends_as_one_run(tmp_path, streaming):
    """A --retry-failed run stopped (SIGUSR1) half-way (its second request: shard 1 has two chunks to retry)
    and run again with the same options gives the failed rows one round, not two: the result is the
    uninterrupted retry's."""
    config, schedule = RunConfig(source="human", chunk_rows=4, max_attempts=1), Schedule(streaming=streaming,
                                                                                                 open_chunks=1)
    whole, cut = flaky_work(tmp_path, "whole"), flaky_work(tmp_path, "cut")
    for work in (whole, cut):
        runner.run(work, config, [0, 1], Flaky(), progress=False, schedule=schedule)
    runner.run(whole, config, [0, 1], Flaky(), progress=False, schedule=schedule, retry_failed=True)

    class Stopping(Flaky):
        def generate(self, requests, sampling):
            if len(self.sent) == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            return super().generate(requests, sampling)

    with pytest.raises(stop.StopRequested):
        runner.run(cut, config, [0, 1], Stopping(), progress=False, schedule=schedule, retry_failed=True)
    assert [done.check(layout.Work(cut), "human", s).state for s in range(2)] == ["done", "partial"]
    runner.run(cut, config, [0, 1], Flaky(), progress=False, schedule=schedule, retry_failed=True)
    assert shard_bytes(cut) == shard_bytes(whole)


# Run as `rewrite run`, it says which thread imported pandas first.
_WATCHED_RUN = """
import sys, threading
def hook(event, args):
    if event == "import" and args[0] == "pandas" and not hasattr(hook, "by"):
        hook.by = threading.current_thread().name
        print("pandas imported by", hook.by, file=sys.stderr)
sys.addaudithook(hook)
from rewrite.cli import main
sys.argv = ["rewrite", *sys.argv[1:]]
main()
"""


def test_the_streams_first_chunk_read_does_not_import_pandas(tmp_path, text_file):
    """pyarrow's first conversion of a Python list imports pandas (0.3 s of CPU here): `rewrite run` has
    it done before the engine loads (runner.warm_up), not in the stream's first chunk read, where the
    engine's first request would wait for it. Seen in a real `rewrite run` on a real server."""
    work = tmp_path / "work"
    run_cli("shard", text_file, "--out", work, "--num-shards", "1")
    server = FakeOpenAI().start()
    try:
        ran = subprocess.run([sys.executable, "-c", _WATCHED_RUN, "run", "--work", str(work), "--source", "coco",
                              "--engine", "openai", "--base-url", server.url, "--model", "served-model",
                              "--scheduler", "stream", "--no-progress"],
                             capture_output=True, text=True, timeout=600, env={**os.environ, "OPENAI_API_KEY": "sk-x"})
    finally:
        server.stop()
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert done.check(layout.Work(work), "coco", 0).state == done.DONE
    said = ran.stderr
    assert "pandas imported by MainThread" in said, said[-3000:]
    assert said.index("pandas imported by") < said.index("loading the openai engine"), said[-3000:]


def _mimalloc_options(code: str, **env: str) -> str:
    """What pyarrow's mimalloc says of its options (MIMALLOC_VERBOSE) in a fresh process running `code`."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MIMALLOC_ALLOW_THP", "ARROW_DEFAULT_MEMORY_POOL")}
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**clean, "MIMALLOC_VERBOSE": "1", **env})
    assert ran.returncode == 0, ran.stderr[-2000:]
    return ran.stderr


def test_importing_rewrite_keeps_arrows_allocator_off_transparent_huge_pages():
    """With huge pages, a shard's join (its first write after a second's pause) paid for zeroing whole
    2 MiB pages: 50-75 ms of CPU against 13-16 at 8,192 rows. `import rewrite` turns them off for
    pyarrow's mimalloc, before any of its modules loads pyarrow; a user's own setting wins."""
    alone = _mimalloc_options("import pyarrow")
    if "option 'allow_thp': 1" not in alone:
        pytest.skip("pyarrow's allocator here is not a mimalloc that asks for huge pages")
    assert "option 'allow_thp': 0" in _mimalloc_options("import rewrite.cli")
    assert "option 'allow_thp': 1" in _mimalloc_options("import rewrite.cli", MIMALLOC_ALLOW_THP="1")
