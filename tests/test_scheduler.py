"""The streaming scheduler (scheduler.py): dedup over the whole shard and commits of every chunk on the
real engine; the order it feeds an engine, on a scripted one (the order is what is under test there)."""
from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from rewrite import layout, plan, runner, scheduler
from rewrite.engines.base import Completion, Engine, Intake
from rewrite.settings import Schedule

STEP = 0.05  # seconds
CAPTIONS = ["a red kite over a green field", "two dogs asleep on a sofa", "a bowl of soup with bread",
            "a lighthouse at dusk", "a cyclist on a mountain road", "fresh bread on a wooden board"]


def test_dedup_spans_the_shard_not_one_chunk(tmp_path, engine):
    """The same six captions in each of three chunks: streaming asks for each once in the shard, a chunk
    at a time asks once per chunk; both write every row, equal rows equal rewrites."""
    pq.write_table(pa.table({"caption": CAPTIONS * 3}), tmp_path / "repeats.parquet")
    stats = {}
    for streaming in (True, False):
        work = tmp_path / f"work-{streaming}"
        plan.plan([str(tmp_path / "repeats.parquet")], work, num_shards=1)
        stats[streaming] = runner.run(work, runner.RunConfig(source="coco", chunk_rows=6, max_attempts=1), [0], engine,
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
    pq.write_table(pa.table({"caption": CAPTIONS}), tmp_path / "c.parquet")
    work = tmp_path / "work"
    plan.plan([str(tmp_path / "c.parquet")], work, num_shards=1)
    engine = Scripted(reject={CAPTIONS[0]})
    stats = runner.run(work, runner.RunConfig(source="human", chunk_rows=6), [0], engine, progress=False,
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
