"""Scheduler benchmark: a chunk at a time with retry rounds (the old way, `Schedule(streaming=False)`)
against the streaming scheduler, both driving a simulated GPU through the real runner.

    python bench/scheduler.py [--quick] [--captions 8192] [--shards 1]

The simulated GPU (`SimulatedGPU`, defined here; never a default, never used by a test of the pipeline)
is a step loop like vLLM's: each step every running sequence makes one token and takes
`t0 + t1 * running` seconds of sleep (t0 the step's fixed share: at a full batch 40% of it), plus each
joining prompt's prefill (--prefill-ratio of a sequence's share per prompt token), with at most
--max-running sequences (vLLM's max_num_seqs, 256); new requests join at any step. Each request's output
length (10-40 tokens) and whether its rewrite is rejected (an empty completion) are drawn from a hash
of its own seed, so both schedulers see the same work.

Where the step loop runs (--core):
- `process` (the default): in a process of its own, as vLLM V1 runs its engine core
  (EngineCoreProc, VLLM_ENABLE_V1_MULTIPROCESSING=1, its default). The core takes requests as they are
  sent, keeps the ones it cannot run yet waiting (our engine keeps twice max_num_seqs in flight, as
  VLLMEngine does), and sends each step's outputs; its clock never waits for our process. Our
  process does what vLLM's front end does in it, holding our GIL: --front-end-us per request added,
  per running sequence per step, and per step (measured on vLLM's CPU build: bench/vllm_overhead.py).
  The core's own loop between steps (taking messages, sending outputs) is counted inside the next
  step's modelled time, and its sleeps are shortened by the timer's slack, measured in it first.
- `thread`: in the stream's engine thread, under our GIL (the transformers engine's way, or vLLM with
  VLLM_ENABLE_V1_MULTIPROCESSING=0): the front end's Python runs in the step, and a step ends late
  when the thread waits for the GIL after its sleep.
The simulator's own bookkeeping is O(1) per request taken or finished, and its CPU time in our
process (the front end's modelled Python, and the pipe to and from the core, whose real counterpart the
modelled per-step cost includes) is not counted in CPU ms per caption. Which rows of
the last batch are rejected, and so how long the run's end takes, depends on the seeds: over run seeds
0-3 the default configuration's occupancy ranged 0.916-0.936. Everything else is the real runner: plan
(`rewrite shard`, in a process of its own as a user runs it), chunks, prompts tokenized with the
packaged model's tokenizer, validation with CLIP's tokenizer, commits, stats. The rewrites are plain
English words of the demo captions, ~3/4 of a word a token.

Per configuration (in a subprocess of its own, for its peak RSS): engine-busy share (modelled step time
/ wall time of `runner.run`; the measured step time beside it), mean batch occupancy (running / max per
step), useful share (their product), captions/s and its ratio to the ideal (the steps the run needed,
each full: total sequence-steps / max-running x the full-batch step time, plus prefill), busy share in
steady state (from the first step's start to the last one's end: without the run's start-up and final
assembly, both also given in seconds), the core's idle time between its first and last step, chunk
commit latency p50/p99 (from the chunk's rows being read to its part being committed), CPU ms per
caption (process CPU time, sleeping and the simulator excluded) and peak RSS. Beside them, the zero-CPU
bound (`zero_cpu_bound`): the same simulated GPU given the run's own requests (each rewrite's attempts, as
the run asked for them) with a CPU side that costs nothing: its occupancy and captions/s, the run's share of
its throughput, and the load the front end's modelled Python would put on one thread at its pace (above 1,
vLLM's front end alone could not keep up in one process).

Sweep: full-batch step time 2 / 10 / 20 ms x rejects 0 / 3 / 20% x chunk 512 / 4,096 (--quick: 10 ms,
3%, chunk 512 and a smaller input). --shards N plans the captions into N shards run by one task (as an
array task runs its share): streaming, they are one engine stream. The last line is the default configuration (10 ms, 3%, chunk 512).
Results go to bench/results/<time>-scheduler.json and .md (or --out-json PATH).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import queue
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Iterable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
if str(HERE) not in sys.path:  # machine.py, also when a test loads this file by its path
    sys.path.insert(0, str(HERE))

from machine import cpu_model
from rewrite.engines.base import Completion, Intake, Request, TokenizerEngine, in_order
from rewrite.engines.vllm import IN_FLIGHT_BATCHES
from rewrite.defaults import Sampling
from rewrite.run.config import prepare
from rewrite.run.shardwork import ChunksToDo

SOURCE = "coco"
# A prompt token's prefill, as a share of a running sequence's part of a full-batch decode step (a model
# setting, --prefill-ratio: prefill is compute-bound and batches far better than decode).
PREFILL_RATIO = 0.1
# vLLM's front end, the Python of its engine in our process (holding our GIL), in microseconds: per request
# added, per running sequence per step (its output taken in, detokenized, checked for the stop), and per
# step (the step call's fixed part, 156-225 us, and vLLM's thread that receives and decodes the core's
# outputs, 290-400 us). Measured on vLLM's CPU build (bench/vllm_overhead.py; see the module docstring).
FRONT_END_US = (250.0, 15.0, 450.0)
CORES = ("process", "thread")  # where the simulated engine core's step loop runs (--core)
ADD_GROUP = 8  # requests sent to the simulated core together (vLLM sends each as it is added; this is cheaper),
# but for the first one while the core is idle: it starts stepping on it, as vLLM's would


def _length(seed: int) -> int:
    """A request's output tokens, 10-40, from a hash of its seed."""
    return 10 + _mix(seed) % 31


class SimulatedGPU(TokenizerEngine):
    """A vLLM-like engine that sleeps instead of computing (see the module docstring).

    core "process": the step loop runs in a process of its own (`run_core`), as vLLM V1's engine core
    does, and this process does the front end's part: add requests, take each step's outputs. core
    "thread": the step loop runs in the stream's own thread, under our GIL (the transformers engine's
    way, or vLLM with VLLM_ENABLE_V1_MULTIPROCESSING=0)."""

    name = "simulated-gpu"

    def __init__(self, tokenizer, step_full: float, reject: float, max_running: int = 256, fixed_share: float = 0.4,
                 prefill_ratio: float = PREFILL_RATIO, front_end_us: tuple[float, float, float] = FRONT_END_US,
                 core: str = "process"):
        self.tokenizer, self.reject, self.max_running, self.core = tokenizer, reject, max_running, core
        self.t0 = step_full * fixed_share
        self.t1 = step_full * (1 - fixed_share) / max_running
        self.t_prompt = prefill_ratio * step_full / max_running  # a prompt token's prefill
        self.per_request, self.per_sequence, self.per_step = (us / 1e6 for us in front_end_us)
        self.model = "simulated"
        self.totals = _new_totals()  # of the thread core; the process core's come back at a stream's end
        self.own_cpu = 0.0  # the stream thread's CPU time in the simulator's own code (its front-end model included)
        self.taken: dict[int, int] = {}  # seed -> prompt tokens of each request taken: the run's work, for `zero_cpu_bound`
        if core == "process":
            self.in_flight = IN_FLIGHT_BATCHES * max_running  # as VLLMEngine: the core has the next ones waiting
            context = multiprocessing.get_context("spawn")
            self._conn, theirs = context.Pipe()
            self._core = context.Process(target=run_core, daemon=True,
                                         args=(theirs, self.t0, self.t1, self.t_prompt, max_running, step_full))
            self._core.start()
            self.slack = self._conn.recv()
        else:
            self.in_flight = max_running
            self.slack = timer_slack(step_full)  # what a sleep overruns on this machine: the simulator's, not the code's

    _context = 2048

    def _prompt_tokens(self, request: Request) -> int:
        return len(request.prompt_ids) if request.prompt_ids is not None else len(self.encode(request.prompt))

    def _completion(self, request: Request) -> Completion:
        """The request's completion, from a hash of its seed (cheap: see the stream)."""
        h = _mix(request.seed)
        length = _length(request.seed)
        start = (h >> 32) % (len(_OUTPUT_WORDS) - 30)
        rejected = (h >> 8) % 1_000_000 < self.reject * 1_000_000
        text = "" if rejected else " ".join(_OUTPUT_WORDS[start:start + length * 3 // 4])
        return Completion(text=text, prompt_tokens=self._prompt_tokens(request), generated_tokens=length,
                          finish_reason="stop")

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        return in_order(self.stream(requests, sampling), len(requests))

    def stream(self, requests: Iterable[Request | None], sampling: Sampling) -> Iterator[tuple[int, Completion]]:
        return self._stream_to_core(requests) if self.core == "process" else self._stream_in_thread(requests)

    def _stream_to_core(self, requests: Iterable[Request | None]) -> Iterator[tuple[int, Completion]]:
        """vLLM V1's front end (`LLMEngine.add_request` / `step`, as VLLMEngine drives it): requests go to
        the core while it holds fewer than `in_flight`, and each step's outputs are taken in as they come.
        The front end's Python is charged here, in the stream's thread, holding our GIL (`_spin`); the
        core's clock does not wait for it."""
        intake = Intake(requests)
        held: dict[int, Request] = {}
        try:
            while True:
                joining = intake.take(self.in_flight - len(held), holding=bool(held))
                own = time.thread_time()
                first = 0 if held else 1  # the core takes each request as it is added: an idle one starts on the first
                bounds = sorted({0, *range(first, len(joining), ADD_GROUP), len(joining)})
                for at, end in zip(bounds, bounds[1:]):
                    group = joining[at:end]
                    _spin(self.per_request * len(group))
                    sent = [(position, request.seed, self._prompt_tokens(request)) for position, request in group]
                    self.taken.update((seed, tokens) for _, seed, tokens in sent)
                    self._conn.send(sent)
                held.update(joining)
                self.own_cpu += time.thread_time() - own
                if not held:
                    if intake.ended:
                        return
                    continue
                own = time.thread_time()  # (the transport's CPU is the simulator's: vLLM's is in its modelled step cost)
                running, done = self._conn.recv()  # the next step's outputs (waiting for them releases the GIL)
                _spin(self.per_step + self.per_sequence * running)
                finished = [(position, self._completion(held.pop(position))) for position in done]
                self.own_cpu += time.thread_time() - own
                yield from finished
        finally:
            self._conn.send(None)  # the stream's end: the core drops what it holds and sends its totals
            while not isinstance(message := self._conn.recv(), dict):
                pass
            self.totals = message

    def _stream_in_thread(self, requests: Iterable[Request | None]) -> Iterator[tuple[int, Completion]]:
        """The step loop in this thread. A step's modelled time is t0 + t1 x running + its joining prompts'
        prefill; the thread sleeps what is left of it after the front end's Python (`_spin`), which runs
        while the GPU computes. The simulator's own bookkeeping is O(1) per request taken or finished
        (finishing steps kept in a table, outputs drawn from a hash of the seed), so that what falls
        between steps is the scheduler's Python."""
        intake = Intake(requests)
        finishing: dict[int, list] = defaultdict(list)  # step at whose end they finish -> [(position, completion)]
        totals = self.totals
        running = 0
        while True:
            joining = intake.take(self.max_running - running, holding=bool(running))  # at any step
            running += len(joining)
            if not running:
                if intake.ended:
                    return
                continue
            started, own = time.perf_counter(), time.thread_time()
            prompt_tokens = 0
            for position, request in joining:  # what the GPU computes for them: drawn inside the step
                completion = self._completion(request)
                prompt_tokens += completion.prompt_tokens
                self.taken[request.seed] = completion.prompt_tokens
                finishing[totals["steps"] + completion.generated_tokens].append((position, completion))
            modelled = self.t0 + self.t1 * running + self.t_prompt * prompt_tokens
            _spin(self.per_step + self.per_request * len(joining) + self.per_sequence * running)
            self.own_cpu += time.thread_time() - own
            _sleep_step(totals, started, modelled, self.t_prompt * prompt_tokens, running, self.max_running, self.slack)
            done = finishing.pop(totals["steps"], [])
            running -= len(done)
            yield from done

    def close(self) -> None:
        if self.core == "process" and self._core.is_alive():
            self._conn.send("exit")
            self._core.join(10)


def run_core(conn, t0: float, t1: float, t_prompt: float, max_running: int, step_full: float) -> None:
    """The simulated engine core, in a process of its own, as vLLM V1's (`EngineCoreProc.run_busy_loop`):
    it takes the requests sent while it has work, steps while it holds any (up to `max_running` running,
    the rest waiting), and sends each step's running count and finished positions. Its steps sleep
    t0 + t1 x running + the joining prompts' prefill, less the timer's slack, measured here first. A None
    ends a stream: it drops what it holds and sends its totals so far; "exit" ends it."""
    slack = timer_slack(step_full)
    conn.send(slack)
    outputs: queue.SimpleQueue = queue.SimpleQueue()  # sent by a thread, so a step never waits for a slow reader
    threading.Thread(target=lambda: [conn.send(o) for o in iter(outputs.get, "exit")], daemon=True).start()
    waiting: deque = deque()  # (position, seed, prompt tokens)
    finishing: dict[int, list[int]] = defaultdict(list)  # step at whose end they finish -> positions
    totals = _new_totals()
    running, started = 0, None  # started: when the next step began (the last one's end, unless idle since)
    idle = 0.0  # since the last step, with nothing to run: counted once a step follows
    while True:
        while not (running or waiting) or conn.poll(0):
            started = started if running or waiting else None
            waited = time.perf_counter()
            message = conn.recv()
            if totals["first_step"] is not None and not (running or waiting):
                idle += time.perf_counter() - waited
            if message == "exit":
                outputs.put("exit")
                return
            if message is None:
                waiting.clear()
                finishing.clear()
                running, idle = 0, 0.0
                outputs.put(dict(totals))
            else:
                waiting.extend(message)
        started = started or time.perf_counter()
        totals["idle"], idle = totals["idle"] + idle, 0.0
        prompt_tokens = 0
        while waiting and running < max_running:
            position, seed, tokens = waiting.popleft()
            finishing[totals["steps"] + _length(seed)].append(position)
            prompt_tokens += tokens
            running += 1
        modelled = t0 + t1 * running + t_prompt * prompt_tokens
        _sleep_step(totals, started, modelled, t_prompt * prompt_tokens, running, max_running, slack)
        done = finishing.pop(totals["steps"], [])
        outputs.put((running, done))
        running -= len(done)
        started = totals["last_step"]  # this loop's own work between steps falls in the next step's time


def _new_totals() -> dict:
    return {"busy": 0.0,  # modelled step time, summed: what the GPU computes
            "slept": 0.0,  # measured step time: the modelled time, plus whatever kept the loop from its next step
            "prefill": 0.0,  # of `busy`
            "steps": 0, "occupied": 0,  # steps; sequence-steps
            "first_step": None, "last_step": None,  # perf_counter at the first step's start, the last one's end
            "idle": 0.0,  # the process core's time with nothing to run, between its first and last step
            "short_steps": 0}  # steps with fewer than max-running sequences


def _sleep_step(totals: dict, started: float, modelled: float, prefill: float, running: int, max_running: int,
                slack: float) -> None:
    """Sleep out what is left of a step begun at `started` (its modelled time, less the timer's slack) and
    count it in `totals`."""
    time.sleep(max(0.0, modelled - (time.perf_counter() - started) - slack))
    totals["last_step"] = time.perf_counter()
    totals["first_step"] = totals["first_step"] or started
    totals["busy"] += modelled
    totals["prefill"] += prefill
    totals["slept"] += totals["last_step"] - started
    totals["steps"] += 1
    totals["occupied"] += running
    totals["short_steps"] += running < max_running


def zero_cpu_bound(chains: Sequence[Sequence[tuple[int, int]]], max_running: int, t0: float, t1: float,
                   t_prompt: float) -> dict:
    """What the simulated GPU does with a run's work when the CPU side costs nothing: each rewrite's first
    attempt waiting from the start, in order, and each later attempt waiting from the step its predecessor
    ends, ahead of the rest (the stream sends retries first). `chains`: per rewrite, its attempts'
    (output tokens, prompt tokens). Steps as the core models them. What no scheduler of ours can pass
    without knowing output lengths beforehand: the share the run's end (its last batch draining, the
    retries of its last rows) costs at a given size."""
    waiting = deque((chain, 0) for chain in chains if chain)
    finishing: dict[int, list] = defaultdict(list)
    steps = occupied = running = 0
    seconds = 0.0
    while waiting or running:
        prompt_tokens = 0
        while waiting and running < max_running:
            chain, attempt = waiting.popleft()
            length, tokens = chain[attempt]
            finishing[steps + length].append((chain, attempt))
            prompt_tokens += tokens
            running += 1
        seconds += t0 + t1 * running + t_prompt * prompt_tokens
        occupied += running
        steps += 1
        for chain, attempt in finishing.pop(steps, ()):
            running -= 1
            if attempt + 1 < len(chain):
                waiting.appendleft((chain, attempt + 1))
    return {"steps": steps, "occupied": occupied, "seconds": seconds,
            "occupancy": occupied / steps / max_running if steps else 0.0}


def run_chains(engine: SimulatedGPU, configs, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """The run's work as `zero_cpu_bound` takes it: per rewrite (set, caption, index), the attempts the
    engine was asked for (their seeds are the runner's, so a chain ends where no request came)."""
    from rewrite.rewriting import seeds
    from rewrite.run import rows

    identities = list(rows.unique_captions(rows.identities(texts, texts, True), texts))  # deduplicated, as the run
    chains = []
    for config in configs:
        for ident in identities:
            for index in range(config.num_rewrites):
                chain, attempt = [], 0
                while (seed := seeds.generation_seed(config.seed, config.source, ident, index, attempt)) in engine.taken:
                    chain.append((_length(seed), engine.taken[seed]))
                    attempt += 1
                chains.append(chain)
    return chains


def timer_slack(seconds: float, times: int = 25) -> float:
    """The median time a sleep of `seconds` overruns by with nothing else running (~0.1 ms on a KVM
    guest): a step sleeps that much less, so that it ends when modelled unless the code held it up."""
    over = []
    for _ in range(times):
        started = time.perf_counter()
        time.sleep(seconds)
        over.append(time.perf_counter() - started - seconds)
    return statistics.median(over)


def _spin(seconds: float) -> None:
    """Hold the GIL for `seconds` of this thread's CPU time, as Python work does (a sleep would not)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


_MASK = (1 << 64) - 1
def _output_words(count: int = 4096, seed: int = 7) -> list[str]:
    """Plain English words of the demo captions: a rewrite's text as CLIP's tokenizer and the checks see
    it (a piece a word, mostly; made-up words with digits were four, and 2% of outputs too long)."""
    from rewrite.launch.demo import demo_captions

    words = demo_captions().read_text(encoding="utf-8").lower().split()
    vocabulary = sorted({w for w in words if w.isascii() and w.isalpha()})
    rng = random.Random(seed)
    return [rng.choice(vocabulary) for _ in range(count)]


_OUTPUT_WORDS = _output_words()  # a request's output is a slice of these, ~3/4 of a word a token


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


def plan_apart(src: Path, work: Path, shards: int) -> None:
    """`rewrite shard`, in a process of its own as a user runs it: what planning does the first time in
    a process (pyarrow's first conversion of a list imports pandas, 0.3 s) is not done for the run."""
    subprocess.run([sys.executable, "-m", "rewrite.cli", "shard", str(src), "--out", str(work),
                    "--num-shards", str(shards)], check=True, cwd=HERE.parent, stdout=subprocess.DEVNULL)


def one(args) -> dict:
    """One configuration, in this process: plan, run, measure."""
    from transformers import AutoTokenizer

    from rewrite import defaults
    from rewrite.engines import model as model_lib
    from rewrite.run import runner
    from rewrite.run.config import set_configs

    sources = defaults.source_list(args.source)
    builders = {} if args.builders is None else {"builders": args.builders}  # (code before --builders: none)
    texts = captions(args.captions)
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text("\n".join(texts) + "\n", encoding="utf-8")
        plan_apart(src, Path(tmp) / "work", args.shards)
        getattr(runner, "warm_up", lambda: None)()  # as `rewrite run` does before its engine loads (code before it: none)
        tokenizer = AutoTokenizer.from_pretrained(model_lib.resolve(None))
        engine = SimulatedGPU(tokenizer, args.step_ms / 1000, args.reject, args.max_running,
                              prefill_ratio=args.prefill_ratio, front_end_us=tuple(args.front_end_us), core=args.core)
        configs = set_configs(sources, chunk_rows=args.chunk, min_faithfulness=args.min_faithfulness)
        shards = list(range(args.shards))
        jobs = [prepare(Path(tmp) / "work", config, shards) for config in configs]  # as `rewrite run` does first
        latencies: dict[tuple[int, int], float] = {}
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with commit_latencies(latencies):
            finished = runner.run_prepared(jobs, shards, engine, progress=False,
                                           schedule=defaults.Schedule(streaming=args.mode == "stream", **builders))
        stats = {k: sum(shard[k] for shard in finished) for k in ("rows", "requests", "ok", "failed")}
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0 - engine.own_cpu
    engine.close()
    gpu = engine.totals
    full_step = engine.t0 + engine.t1 * engine.max_running
    ideal = gpu["occupied"] / engine.max_running * full_step + gpu["prefill"]
    lat = sorted(latencies.values())
    occupancy = gpu["occupied"] / gpu["steps"] / engine.max_running
    chains = run_chains(engine, configs, texts)
    bound = zero_cpu_bound(chains, engine.max_running, engine.t0, engine.t1, engine.t_prompt)
    front_end = (engine.per_request * stats["requests"] + engine.per_sequence * bound["occupied"]
                 + engine.per_step * bound["steps"])  # its Python at the bound's pace, in one thread
    return {"mode": args.mode, "source": args.source, "step_ms": args.step_ms, "reject": args.reject,
            "chunk": args.chunk, "shards": args.shards, "min_faithfulness": args.min_faithfulness,
            "builders": args.builders, "core": args.core,
            "prefill_ratio": args.prefill_ratio, "front_end_us": list(args.front_end_us), "timer_slack_ms": engine.slack * 1000,
            "captions": stats["rows"], "requests": stats["requests"], "ok": stats["ok"], "failed": stats["failed"],
            "seconds": wall, "busy": gpu["busy"] / wall, "busy_measured": gpu["slept"] / wall,
            "prefill_share": gpu["prefill"] / gpu["busy"],
            "busy_steady": gpu["busy"] / (gpu["last_step"] - gpu["first_step"]), "occupancy": occupancy,
            "useful": gpu["busy"] / wall * occupancy, "idle_s": gpu["idle"] if args.core == "process" else None,
            "short_steps": gpu["short_steps"],
            "steps": gpu["steps"], "before_first_step_s": gpu["first_step"] - wall0,
            "after_last_step_s": wall0 + wall - gpu["last_step"],
            "captions_per_s": stats["rows"] / wall, "ideal_share": ideal / wall,
            "bound_requests": sum(map(len, chains)), "bound_occupancy": bound["occupancy"], "bound_captions_per_s": stats["rows"] / bound["seconds"],
            "bound_share": bound["seconds"] / wall, "bound_front_end_load": front_end / bound["seconds"],
            "commit_p50_s": statistics.median(lat) if lat else None,
            "commit_p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "chunks": len(lat), "cpu_ms_per_caption": cpu * 1000 / stats["rows"],
            "engine_cpu_ms_per_caption": engine.own_cpu * 1000 / stats["rows"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def profile(args) -> list[tuple[str, float]]:
    """The stream's CPU work per caption by stage, each timed alone in one thread over the bench's
    captions with the real functions the stream calls (first attempts; one completion each, judged)."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from rewrite import meta
    from rewrite.engines import model as model_lib
    from rewrite.rewriting import clip_tokens, faithful, prompt, seeds, validate
    from rewrite.run import rows, runner, scheduler, shardwork
    from rewrite.run.config import RunConfig

    runner.warm_up()  # as `rewrite run` before its stream: else the first commit pays pandas' import
    engine = SimulatedGPU(AutoTokenizer.from_pretrained(model_lib.resolve(None)), 0.01, 0.0, core="thread")
    config = RunConfig(source=args.source if args.source != "all" else SOURCE, chunk_rows=args.chunk)
    meta_set = meta.load_usable(config.source)
    ask = shardwork.prompting(config, meta_set, prompt.load_template(config.template), engine)
    texts = captions(args.captions)
    n, out = len(texts), []

    def timed(stage: str, work):
        with scheduler._threads_kept_moving():  # as in the stream: else a full collection lands in a stage
            started = time.process_time()
            result = work()
            out.append((stage, (time.process_time() - started) * 1e6 / n))
        return result

    keys = [f"k{i}" for i in range(n)]
    ids = timed("identity (dedup)", lambda: rows.identities(keys, texts, True))
    fitted = timed("caption fitting (tokenized in batches)",
                   lambda: [f for i in range(0, n, 256) for f in ask.captions(texts[i:i + 256])])
    drawn = timed("example draw", lambda: [meta.sample_examples(meta_set, seeds.example_rng(
        config.seed, config.source, ident, 0, 0, config.example_sets), config.num_examples) for ident in ids])
    timed("prompt text", lambda: [ask.template.render(e, f[0]) for e, f in zip(drawn, fitted)])
    timed("prompt ids (from pieces)" if ask.ids else "prompt ids (tokenized whole)",
          lambda: [ask._prompt(e, f)[1] for e, f in zip(drawn, fitted)])
    made = timed("request (all of the above but fitting, and its seed)",
                 lambda: [ask.request(ident, f, 0, 0) for ident, f in zip(ids, fitted)])
    completions = [engine._completion(request) for request, _, _ in made]
    parsed = timed("parse", lambda: [prompt.parse_completion(c.text) for c in completions])
    timed("checks (echo, copy, arrow, characters)", lambda: [validate.check(t, f[0], c, targets) for t, f, c, (_, targets, _)
                                                          in zip(parsed, fitted, completions, made)])
    timed("CLIP token count (in batches)", lambda: [c for i in range(0, n, 256) for c in clip_tokens.count_many(parsed[i:i + 256])])
    timed("faithfulness (the gate, when on)", lambda: [faithful.faithfulness(f[0], t) for f, t in zip(fitted, parsed)])
    judged = [(c, f[0], targets, None) for c, f, (_, targets, _) in zip(completions, fitted, made)]
    verdicts = timed("judging in all (parse, checks, CLIP count)",
                     lambda: [v for i in range(0, n, 256) for v in rows.judge_many(judged[i:i + 256])])
    results = {(ident, 0): rows.final(t, r, 0, 1, False) for ident, (t, r) in zip(ids, verdicts)}
    schema = shardwork.schema(1)

    def commit():
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(0, n, args.chunk):
                table, _, _ = rows.columns(keys[i:i + args.chunk], ids[i:i + args.chunk], results, 1, schema, {})
                pq.write_table(table, f"{tmp}/{i}.parquet")

    timed("bookkeeping and commit (columns, parquet part)", commit)
    return out


CONFIG_FLAGS = ("step_ms", "reject", "chunk", "captions", "max_running", "shards", "source", "min_faithfulness",
                "prefill_ratio", "builders", "core")


def measure(mode: str, step_ms: float, reject: float, chunk: int, args) -> dict:
    """One configuration in a subprocess of its own (its peak RSS is its own), with every other flag as given."""
    settings = {**{k: getattr(args, k) for k in CONFIG_FLAGS}, "step_ms": step_ms, "reject": reject, "chunk": chunk}
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--one", mode, "--out-json", f.name,
               "--front-end-us", *map(str, args.front_end_us)]
        for key, value in settings.items():
            if value is not None:
                cmd += [f"--{key.replace('_', '-')}", str(value)]
        subprocess.run(cmd, check=True)
        return json.loads(Path(f.name).read_text())


def line(r: dict) -> str:
    return (f"{r['mode']}: busy={r['busy']:.3f} busy_measured={r['busy_measured']:.3f} busy_steady={r['busy_steady']:.3f} "
            f"occupancy={r['occupancy']:.2f} useful={r['useful']:.2f} "
            f"captions/s={r['captions_per_s']:.0f} ideal={r['ideal_share']:.2f} "
            f"bound_occupancy={r['bound_occupancy']:.2f} bound_captions/s={r['bound_captions_per_s']:.0f} "
            f"bound_share={r['bound_share']:.2f} bound_front_end_load={r['bound_front_end_load']:.2f} "
            f"commit_p50={r['commit_p50_s']:.2f}s commit_p99={r['commit_p99_s']:.2f}s "
            f"cpu_ms/caption={r['cpu_ms_per_caption']:.3f} rss={r['peak_rss_mb']:.0f}MB")


def table(results: list[dict], cpu: str) -> str:
    first = results[0]
    rows = [f"CPU: {cpu}; simulated GPU: max {first.get('max_running', 256)} running, step = 40% fixed + 60% per "
            f"running sequence at a full batch, + prefill at {first['prefill_ratio']:g} of a sequence's share per "
            f"prompt token; engine core in {'a process of its own' if first.get('core', 'thread') == 'process' else 'the stream thread'}; "
            "vLLM's front end in our process {:g} us per request + {:g} us per running sequence per step + "
            "{:g} us per step; outputs 10-40 tokens".format(*first['front_end_us'], *[0.0] * (3 - len(first['front_end_us']))), "",
            "| step | rejects | chunk | sets | mode | busy (modelled) | busy (measured) | busy, steady | occupancy | "
            "useful | captions/s | vs ideal | zero-CPU bound: occupancy | captions/s | run's share | front-end load | "
            "commit p50 / p99 | CPU ms/caption | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['step_ms']:g} ms | {r['reject']:.0%} | {r['chunk']} | {r['source']} | {r['mode']} | "
                    f"{r['busy']:.3f} | {r['busy_measured']:.3f} | {r['busy_steady']:.3f} | "
                    f"{r['occupancy']:.2f} | {r['useful']:.2f} | {r['captions_per_s']:,.0f} | {r['ideal_share']:.2f} | "
                    f"{r['bound_occupancy']:.2f} | {r['bound_captions_per_s']:,.0f} | {r['bound_share']:.2f} | "
                    f"{r['bound_front_end_load']:.2f} | "
                    f"{r['commit_p50_s']:.2f} / {r['commit_p99_s']:.2f} s | {r['cpu_ms_per_caption']:.3f} | "
                    f"{r['peak_rss_mb']:,.0f} MB |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the default configuration only, on fewer captions")
    ap.add_argument("--captions", type=int, help="captions per run (default 8192; --quick 2048)")
    ap.add_argument("--max-running", type=int, default=256, help="the simulated GPU's max running sequences")
    ap.add_argument("--shards", type=int, default=1,
                    help="shards the captions are planned into, all run by one task (default 1)")
    ap.add_argument("--step-ms", type=float, help="full-batch step time (default: the sweep's 2/10/20; --quick 10)")
    ap.add_argument("--reject", type=float, help="share of rewrites rejected (default: the sweep's 0/0.03/0.2; --quick 0.03)")
    ap.add_argument("--chunk", type=int, help="chunk rows (default: the sweep's 512/4096; --quick 512)")
    ap.add_argument("--source", default=SOURCE,
                    help=f"meta set, or `all` for the four in one stream (default {SOURCE})")
    ap.add_argument("--min-faithfulness", type=float, help="the faithfulness gate (default off)")
    ap.add_argument("--prefill-ratio", type=float, default=PREFILL_RATIO,
                    help=f"a prompt token's prefill / a running sequence's share of a full step (default {PREFILL_RATIO})")
    ap.add_argument("--front-end-us", type=float, nargs=3, default=list(FRONT_END_US),
                    metavar=("PER_REQUEST", "PER_SEQUENCE_STEP", "PER_STEP"),
                    help="vLLM's front-end Python in our process, in us (default {:g} {:g} {:g}: measured)".format(*FRONT_END_US))
    ap.add_argument("--core", choices=CORES, default=CORES[0],
                    help="where the simulated engine core steps: a process of its own, as vLLM V1's (default), "
                         "or the stream's thread, under our GIL")
    ap.add_argument("--builders", type=int, help="stream: worker processes building requests and judging "
                    "(rewrite run --builders; default: the run's, from the cores)")
    ap.add_argument("--profile", action="store_true",
                    help="instead: the stream's CPU work per caption by stage (each timed alone, one thread)")
    ap.add_argument("--out-json", help="result file (default bench/results/<time>-scheduler.json)")
    ap.add_argument("--one", choices=("old", "stream"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile:
        args.captions = args.captions or 8192
        args.chunk = args.chunk or 512
        stages = profile(args)
        print(f"CPU: {cpu_model()}; {args.captions} captions, set {args.source}; microseconds per caption, each stage alone")
        print("| stage | us/caption |\n|---|---|")
        for stage, us in stages:
            print(f"| {stage} | {us:.1f} |")
        return
    if args.one:
        args.mode = args.one
        args.captions = args.captions or 8192
        Path(args.out_json).write_text(json.dumps(one(args)))
        return
    args.captions = args.captions or (2048 if args.quick else 8192)
    default = (10.0, 0.03, 512)
    given = (args.step_ms, args.reject, args.chunk)
    if args.quick:
        sweep = [tuple(g if g is not None else d for g, d in zip(given, default))]
    else:
        axes = [[g] if g is not None else values for g, values in zip(given, ((2.0, 10.0, 20.0), (0.0, 0.03, 0.2), (512, 4096)))]
        last = tuple(g if g is not None else d for g, d in zip(given, default))
        sweep = [(s, r, c) for s in axes[0] for r in axes[1] for c in axes[2] if (s, r, c) != last] + [last]
    results = []
    for step_ms, reject, chunk in sweep:
        for mode in ("old", "stream"):
            r = measure(mode, step_ms, reject, chunk, args)
            results.append(r)
            print(f"{step_ms:g} ms, {reject:.0%} rejects, chunk {chunk}: {line(r)}", file=sys.stderr)
    cpu = cpu_model()
    md = table(results, cpu)
    old, new = results[-2], results[-1]
    last_line = f"{line(old)} {line(new)}"
    print(md)
    print(last_line)
    out = Path(args.out_json) if args.out_json else HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-scheduler.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu, "args": vars(args), "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(md + "\n\n" + last_line + "\n")


if __name__ == "__main__":
    main()
