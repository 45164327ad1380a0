"""Scheduler benchmark: a chunk at a time with retry rounds (the old way, `Schedule(streaming=False)`)
against the streaming scheduler, both driving a simulated GPU through the real runner.

    python bench/scheduler.py [--quick] [--captions 8192] [--shards 1]

The simulated GPU (`SimulatedGPU`, defined here; never a default, never used by a test of the pipeline)
is a step loop like vLLM's: each step every running sequence makes one token and takes
`t0 + t1 * running` seconds of sleep (t0 the step's fixed share: at a full batch 40% of it), with at most
--max-running sequences (vLLM's max_num_seqs, 256); new requests join at any step. Each request's output
length (10-40 tokens) and whether its rewrite is rejected (an empty completion) are drawn from a hash
of its own seed, so both schedulers see the same work. The simulator's own bookkeeping is O(1) per
request taken or finished, and a request's output is drawn inside the step that takes it in (as a GPU
computes while the step runs), so the time between steps is the scheduler's. (A first version drew
with a random.Random per request and passed over every running sequence each step: 0.2 ms a step, 2%
of the wall time, counted as the engine waiting; drawing between steps cost 0.3% more.) Which rows of the last batch are rejected, and so how long
the run's end takes, depends on the seeds: over run seeds 0-3 the default configuration's occupancy
ranged 0.916-0.936. Everything else is the real runner: plan, chunks, prompts
tokenized with the packaged model's tokenizer, validation with CLIP's tokenizer, commits, stats.

Per configuration (in a subprocess of its own, for its peak RSS): engine-busy share (time in steps, as
slept, / wall time of `runner.run`), mean batch occupancy (running / max per step), useful share (their product),
captions/s and its ratio to the ideal (the steps the run needed, each full: total sequence-steps /
max-running x the full-batch step time), busy share in steady state (from the first step's start to
the last one's end: without the run's start-up and final assembly), chunk commit latency p50/p99 (from the chunk's rows being
read to its part being committed), CPU ms per caption (process CPU time, sleeping excluded) and peak RSS.

Sweep: full-batch step time 2 / 10 / 20 ms x rejects 0 / 3 / 20% x chunk 512 / 4,096 (--quick: 10 ms,
3%, chunk 512 and a smaller input). --shards N plans the captions into N shards run by one task (as an
array task runs its share): streaming, they are one engine stream. The last line is the default configuration (10 ms, 3%, chunk 512).
Results go to bench/results/<time>-scheduler.json and .md (or --out-json PATH).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rewrite.engines.base import Completion, Engine, Intake, Request, in_order
from rewrite.defaults import Sampling
from rewrite.run.config import RunConfig, prepare
from rewrite.run.shardwork import ChunksToDo

SOURCE = "coco"


class SimulatedGPU(Engine):
    """A vLLM-like step loop that sleeps instead of computing (see the module docstring)."""

    name = "simulated-gpu"

    def __init__(self, tokenizer, step_full: float, reject: float, max_running: int = 256, fixed_share: float = 0.4):
        self.tokenizer, self.reject, self.max_running = tokenizer, reject, max_running
        self.in_flight = max_running
        self.t0 = step_full * fixed_share
        self.t1 = step_full * (1 - fixed_share) / max_running
        self.model = "simulated"
        self.busy = 0.0
        self.first_step = self.last_step = None  # perf_counter at the first step's start, the last one's end
        self.steps = 0
        self.occupied = 0  # sequence-steps

    @property
    def context_length(self) -> int:
        return 2048

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _draw(self, request: Request) -> tuple[int, Completion]:
        """The request's output length and completion, from a hash of its seed (cheap: see the stream)."""
        h = _mix(request.seed)
        length = 10 + h % 31
        start = (h >> 32) % (len(_OUTPUT_WORDS) - 20)
        rejected = (h >> 8) % 1_000_000 < self.reject * 1_000_000
        text = "" if rejected else " ".join(_OUTPUT_WORDS[start:start + length // 2])
        prompt_tokens = len(request.prompt_ids) if request.prompt_ids is not None else len(self.encode(request.prompt))
        return length, Completion(text=text, prompt_tokens=prompt_tokens, generated_tokens=length, finish_reason="stop")

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        return in_order(self.stream(requests, sampling), len(requests))

    def stream(self, requests: Iterable[Request | None], sampling: Sampling) -> Iterator[tuple[int, Completion]]:
        """The step loop. Its own bookkeeping costs O(1) per request taken or finished (finishing steps
        kept in a table, outputs drawn from a hash of the seed), and a request's output is drawn inside
        the step that takes it in (a GPU computes it while the step runs), so that what falls between
        steps is the scheduler's and the stream's Python: a pass over every running sequence per step
        and a random.Random per request had taken 2% of the wall time, and the draws between steps
        0.3%, counted against the scheduler."""
        intake = Intake(requests)
        finishing: dict[int, list] = defaultdict(list)  # step at whose end they finish -> [(position, completion)]
        running = 0
        while True:
            joining = intake.take(self.max_running - running, holding=bool(running))  # at any step
            running += len(joining)
            if not running:
                if intake.ended:
                    return
                continue
            started = time.perf_counter()
            for position, request in joining:  # what the GPU computes for them: drawn inside the step
                length, completion = self._draw(request)
                finishing[self.steps + length].append((position, completion))
            time.sleep(max(0.0, self.t0 + self.t1 * running - (time.perf_counter() - started)))
            self.last_step = time.perf_counter()
            self.first_step = self.first_step or started
            self.busy += self.last_step - started  # as slept: a sleep overruns by ~0.1-0.5 ms
            self.steps += 1
            self.occupied += running
            done = finishing.pop(self.steps, [])
            running -= len(done)
            yield from done


_MASK = (1 << 64) - 1
def _output_words(count: int = 4096, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"word{rng.randrange(500)}" for _ in range(count)]


_OUTPUT_WORDS = _output_words()  # a request's output is a slice of these


def _mix(seed: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of a request's seed, without a PRNG to set up."""
    z = (seed + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def captions(n: int) -> list[str]:
    from rewrite.launch.demo import demo_captions

    base = demo_captions().read_text(encoding="utf-8").splitlines()
    return [base[i % len(base)] if i < len(base) else f"{base[i % len(base)]}, take {i // len(base) + 1}"
            for i in range(n)]


@contextlib.contextmanager
def commit_latencies(out: dict):
    """Times from a chunk's rows being read to its part being committed, by (shard, chunk) (bench-only
    instrumentation of shardwork's chunk walk and of its atomic commits)."""
    from rewrite.workdir import atomic

    read_at: dict[tuple[int, int], float] = {}  # (shard, chunk) -> when its rows were read
    walk, commit = ChunksToDo.__iter__, atomic.atomic_path

    def timed_walk(self):
        for index, table in walk(self):
            read_at[self.shard, index] = time.perf_counter()
            yield index, table

    @contextlib.contextmanager
    def timed_commit(path):
        with commit(path) as tmp:
            yield tmp
        path = Path(path)
        if path.parent.name.endswith(".parts") and path.suffix == ".parquet":  # a chunk's part
            chunk = (int(path.parent.name.split(".")[0]), int(path.stem))
            out[chunk] = time.perf_counter() - read_at[chunk]

    ChunksToDo.__iter__, atomic.atomic_path = timed_walk, timed_commit
    try:
        yield
    finally:
        ChunksToDo.__iter__, atomic.atomic_path = walk, commit


def one(args) -> dict:
    """One configuration, in this process: plan, run, measure."""
    from transformers import AutoTokenizer

    from rewrite.engines import model as model_lib
    from rewrite.inputs import plan
    from rewrite.run import runner
    from rewrite.defaults import Schedule

    tokenizer = AutoTokenizer.from_pretrained(model_lib.resolve(None))
    engine = SimulatedGPU(tokenizer, args.step_ms / 1000, args.reject, args.max_running)
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text("\n".join(captions(args.captions)) + "\n", encoding="utf-8")
        plan.plan([str(src)], Path(tmp) / "work", num_shards=args.shards)
        config = RunConfig(source=SOURCE, chunk_rows=args.chunk)
        shards = list(range(args.shards))
        prepare(Path(tmp) / "work", config, shards)  # as `rewrite run` does before its engine loads
        latencies: dict[tuple[int, int], float] = {}
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with commit_latencies(latencies):
            finished = runner.run(Path(tmp) / "work", config, shards, engine,
                                  progress=False, schedule=Schedule(streaming=args.mode == "stream"))
        stats = {k: sum(shard[k] for shard in finished) for k in ("rows", "requests", "ok", "failed")}
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    full_step = engine.t0 + engine.t1 * engine.max_running
    ideal = engine.occupied / engine.max_running * full_step
    lat = sorted(latencies.values())
    return {"mode": args.mode, "step_ms": args.step_ms, "reject": args.reject, "chunk": args.chunk, "shards": args.shards,
            "captions": stats["rows"], "requests": stats["requests"], "ok": stats["ok"], "failed": stats["failed"],
            "seconds": wall, "busy": engine.busy / wall,
            "busy_steady": engine.busy / (engine.last_step - engine.first_step), "occupancy": engine.occupied / engine.steps / engine.max_running,
            "useful": engine.busy / wall * engine.occupied / engine.steps / engine.max_running,
            "captions_per_s": stats["rows"] / wall, "ideal_share": ideal / wall,
            "commit_p50_s": statistics.median(lat) if lat else None,
            "commit_p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "chunks": len(lat), "cpu_ms_per_caption": cpu * 1000 / stats["rows"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(mode: str, step_ms: float, reject: float, chunk: int, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--one", mode, "--step-ms", str(step_ms), "--reject", str(reject),
               "--chunk", str(chunk), "--captions", str(args.captions), "--max-running", str(args.max_running),
               "--shards", str(args.shards),
               "--out-json", f.name]
        subprocess.run(cmd, check=True)
        return json.loads(Path(f.name).read_text())


def line(r: dict) -> str:
    return (f"{r['mode']}: busy={r['busy']:.2f} busy_steady={r['busy_steady']:.2f} occupancy={r['occupancy']:.2f} useful={r['useful']:.2f} "
            f"captions/s={r['captions_per_s']:.0f} ideal={r['ideal_share']:.2f} "
            f"commit_p50={r['commit_p50_s']:.2f}s commit_p99={r['commit_p99_s']:.2f}s "
            f"cpu_ms/caption={r['cpu_ms_per_caption']:.2f} rss={r['peak_rss_mb']:.0f}MB")


def table(results: list[dict], cpu: str) -> str:
    rows = [f"CPU: {cpu}; simulated GPU: max 256 running, step = 40% fixed + 60% per running sequence at a "
            "full batch; outputs 10-40 tokens", "",
            "| step | rejects | chunk | mode | busy | busy, steady | occupancy | useful | captions/s | vs ideal | "
            "commit p50 / p99 | CPU ms/caption | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['step_ms']:g} ms | {r['reject']:.0%} | {r['chunk']} | {r['mode']} | {r['busy']:.2f} | "
                    f"{r['busy_steady']:.2f} | "
                    f"{r['occupancy']:.2f} | {r['useful']:.2f} | {r['captions_per_s']:,.0f} | {r['ideal_share']:.2f} | "
                    f"{r['commit_p50_s']:.2f} / {r['commit_p99_s']:.2f} s | {r['cpu_ms_per_caption']:.2f} | "
                    f"{r['peak_rss_mb']:,.0f} MB |")
    return "\n".join(rows)


def cpu_model() -> str:
    for text in Path("/proc/cpuinfo").read_text().splitlines():
        if text.startswith("model name"):
            return text.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the default configuration only, on fewer captions")
    ap.add_argument("--captions", type=int, help="captions per run (default 8192; --quick 2048)")
    ap.add_argument("--max-running", type=int, default=256, help="the simulated GPU's max running sequences")
    ap.add_argument("--shards", type=int, default=1,
                    help="shards the captions are planned into, all run by one task (default 1)")
    ap.add_argument("--out-json", help="result file (default bench/results/<time>-scheduler.json)")
    ap.add_argument("--one", choices=("old", "stream"), help=argparse.SUPPRESS)
    ap.add_argument("--step-ms", type=float, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--reject", type=float, default=0.03, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=512, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.mode = args.one
        args.captions = args.captions or 8192
        Path(args.out_json).write_text(json.dumps(one(args)))
        return
    args.captions = args.captions or (2048 if args.quick else 8192)
    default = (10.0, 0.03, 512)
    sweep = [default] if args.quick else [(s, r, c) for s in (2.0, 10.0, 20.0) for r in (0.0, 0.03, 0.2)
                                          for c in (512, 4096) if (s, r, c) != default] + [default]
    results = []
    for step_ms, reject, chunk in sweep:
        for mode in ("old", "stream"):
            r = measure(mode, step_ms, reject, chunk, args)
            results.append(r)
            print(f"{step_ms:g} ms, {reject:.0%} rejects, chunk {chunk}: {line(r)}", file=sys.stderr)
    cpu = cpu_model()
    md = table(results, cpu)
    old, new = results[-2], results[-1]
    last = f"{line(old)} {line(new)}"
    print(md)
    print(last)
    out = Path(args.out_json) if args.out_json else HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-scheduler.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu, "args": vars(args), "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(md + "\n\n" + last + "\n")


if __name__ == "__main__":
    main()
