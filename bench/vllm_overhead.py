"""vLLM front-end overhead: the CPU time vLLM spends in OUR process per request added and per running
sequence per step, as figures for a simulated GPU (bench/scheduler.py).

    python bench/vllm_overhead.py [--runs 64,64:string,64:final,128:final] [--profile 64] [--kv-gb 4]

Our engine (`VLLMEngine.stream`) drives vLLM's `LLMEngine` from one thread: `add_request` per request,
`step()` per step. In vLLM V1 the model runs in an engine-core process, but input processing and output
handling (taking the core's outputs, incremental detokenization, stop strings, a RequestOutput per running
sequence) run in ours and hold our GIL, as does vLLM's thread that receives and decodes the core's outputs.
With the packaged model, the engine's CPU settings, LaCLIP prompts as the runner builds them (3 fresh
chatgpt examples per caption of demo/captions.txt), default sampling and per-request seeds, measured as
thread CPU time (`time.thread_time`: no waiting for the core, whose compute runs in another process):
add_request per call (making the SamplingParams apart); step() per sequence output (one per sequence that
made a token that step, counted from the core's outputs), and split by a least-squares fit of a step's CPU
time on that count into a fixed part and a part per sequence; our other threads (process minus main thread
CPU time) per step; the wall time per step, and its wait for the core (in get_output); the engine's own
making of each finished request's Completion (its text, where the engine detokenizes it).
A run adds N requests at once (all run together: max_num_seqs is 256) and steps until all finish. N alone
asks for vLLM's default outputs (CUMULATIVE: one per running sequence per step) with the stop string "\n"
(checked by the front end, which detokenizes every sequence at every step); N:string for final outputs
only (FINAL_ONLY) with the stop string: the engine's way where the tokenizer does not allow the next;
N:final for the engine's own params: final outputs only, stopping at the tokens whose text holds a line
break (`stop_token_ids`, checked by the core: `vllm.CoreNewlineStop`), each finished request's text made
once (one decode of a byte-level tokenizer's output, else vLLM's incremental detokenizer).
bench/scheduler.py's front-end model takes its figures from here: per request, add_request; per running
sequence per step, the fit's per-sequence part; per step, the fit's fixed part plus our other threads. Runs share one engine
and take the first N of one prompt list, so later runs hit the prefix cache (the core's work, not the front
end's). --profile N: one more run of N under cProfile timed by thread CPU time (add_request and step only;
it inflates their CPU time ~7x: read it for shares).
--kv-gb: the KV cache (the engine's CPU default, 2 GiB, holds ~180 sequences of these). Other load on the
machine shows in wall times, not in CPU times. Results: bench/results/<time>-vllm_overhead.json.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
SOURCE = "chatgpt"

from machine import cpu_model  # noqa: E402 - bench/, this script's folder


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each Python thread but the main one, by name (vLLM's output thread among them)."""
    return {t.name: time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()}


def build(engine, n: int) -> list:
    from rewrite import meta
    from rewrite.defaults import Sampling
    from rewrite.engines import Request
    from rewrite.rewriting import prompt, seeds

    captions = (HERE.parent / "demo" / "captions.txt").read_text(encoding="utf-8").splitlines()
    meta_set, template = meta.load(SOURCE), prompt.load_template()
    requests = []
    for i in range(n):
        caption = captions[i % len(captions)]
        ident = prompt.normalise_caption(caption) + (f"#{i}" if i >= len(captions) else "")
        examples = meta.sample_examples(meta_set, seeds.example_rng(0, SOURCE, ident, 0, 0), 3)
        text, ids, _ = prompt.fit_prompt(template, examples, caption, engine.encode, engine.decode,
                                         engine.context_length - Sampling().max_new_tokens)
        requests.append(Request(text, seeds.generation_seed(0, SOURCE, ident, 0, 0), prompt_ids=tuple(ids)))
    return requests


def params_for(e, request, sampling, mode: str):
    """The engine's SamplingParams for `request`, in a run's output mode (see the module docstring; for the
    stop string's modes, `run` has taken the engine's CoreNewlineStop away)."""
    from vllm.sampling_params import RequestOutputKind

    params = e._params(request, sampling)
    if mode != "final":
        params.output_kind = RequestOutputKind.FINAL_ONLY if mode == "string" else RequestOutputKind.CUMULATIVE
    return params


def run(e, requests, sampling, mode: str, tag: str, prof: cProfile.Profile | None = None) -> dict:

    engine, p, cpu = e.llm.llm_engine, time.perf_counter, time.thread_time
    core, get_output, waits = engine.engine_core, engine.engine_core.get_output, []

    def timed_get_output():  # the wait for the core's outputs, and how many sequences they cover
        w, c = p(), cpu()
        out = get_output()
        waits.append((p() - w - (cpu() - c), len(out.outputs)))
        return out

    core.get_output, prof = timed_get_output, prof or contextlib.nullcontext()
    newline, e._newline = e._newline, e._newline if mode == "final" else None
    try:
        before, start, main0, process0 = thread_cpu(), p(), cpu(), time.process_time()
        params_cpu, add, steps, completions = [], [], [], []
        for i, r in enumerate(requests):
            c = cpu()
            params = params_for(e, r, sampling, mode)
            params_cpu.append(cpu() - c)
            c = cpu()
            with prof:
                engine.add_request(f"{tag}-{i}", {"prompt_token_ids": list(r.prompt_ids)}, params)
            add.append(cpu() - c)
        while engine.has_unfinished_requests():
            w, c = p(), cpu()
            with prof:
                outputs = engine.step()
            steps.append((p() - w, cpu() - c))
            c = cpu()
            for out in outputs:
                if out.finished:
                    e._completion(out)
            completions.append(cpu() - c)
        wall, after, main, process = p() - start, thread_cpu(), cpu() - main0, time.process_time() - process0
    finally:
        del core.get_output
        e._newline = newline
    seq, step_cpu = [n for _, n in waits], [c for _, c in steps]
    total, mean_n, mean_c = sum(seq), statistics.mean(seq), statistics.mean(step_cpu)
    slope = sum((n - mean_n) * (c - mean_c) for n, c in zip(seq, step_cpu)) / sum((n - mean_n) ** 2 for n in seq)
    us, ms = 1e6, 1e3
    return {
        "run": tag, "requests": len(requests),
        "output_kind": {"": "cumulative, stop string", "string": "final_only, stop string",
                        "final": "final_only, the engine's own stop"}[mode],
        "completion_cpu_us_per_request": round(sum(completions) / len(requests) * 1e6, 1),
        "prompt_tokens_mean": round(statistics.mean(len(r.prompt_ids) for r in requests), 1),
        "steps": len(steps), "sequence_outputs": total, "running_max": max(seq), "running_mean": round(mean_n, 1),
        "wall_s": round(wall, 2), "params_cpu_us": round(statistics.mean(params_cpu) * us, 1),
        "add_request_cpu_us": {"mean": round(statistics.mean(add) * us, 1), "median": round(statistics.median(add) * us, 1)},
        "step_cpu_us_per_sequence": round(sum(step_cpu) / total * us, 2),
        "step_cpu_fit_us": {"fixed": round((mean_c - slope * mean_n) * us, 1), "per_sequence": round(slope * us, 2)},
        "step_wall_ms": {"mean": round(statistics.mean(w for w, _ in steps) * ms, 2),
                         "median": round(statistics.median(w for w, _ in steps) * ms, 2),
                         "wait_core_mean": round(statistics.mean(w for w, _ in waits) * ms, 2),
                         "cpu_mean": round(mean_c * ms, 3)},
        "main_thread_cpu_s": {"total": round(main, 3), "add_request": round(sum(add), 3), "step": round(sum(step_cpu), 3)},
        "other_threads_cpu_us_per_step": round((process - main) / len(steps) * us, 1),
        "python_threads_cpu_s": {k: round(v - before.get(k, 0.0), 4) for k, v in after.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="64,64:string,64:final,128:string,128:final",
                    help="comma-separated N, N:string or N:final (see above)")
    ap.add_argument("--profile", type=int, default=64, help="requests of a last run under cProfile (0: none)")
    ap.add_argument("--warmup", type=int, default=8, help="requests run first, not measured")
    ap.add_argument("--kv-gb", type=float, default=None, help="KV cache GiB (default: the engine's own)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out-json", help="the JSON result file (default bench/results/<time>-vllm_overhead.json)")
    args = ap.parse_args()
    runs = [(int(n), mode) for n, _, mode in (r.partition(":") for r in args.runs.split(","))]
    if any(mode not in ("", "string", "final") for _, mode in runs):
        ap.error(f"--runs {args.runs!r}: each is N, N:string or N:final")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    t0 = time.perf_counter()

    import vllm
    from rewrite.defaults import Sampling
    from rewrite.engines.vllm import VLLMEngine

    e = VLLMEngine(args.model, max_model_len=1024,
                   engine_args=[f"kv_cache_memory_bytes={int(args.kv_gb * 2**30)}"] if args.kv_gb else [])
    prof, top = cProfile.Profile(time.thread_time), []
    try:
        loaded = time.perf_counter() - t0
        requests, sampling = build(e, max([n for n, _ in runs] + [args.profile]) + args.warmup), Sampling()
        run(e, requests[-args.warmup:], sampling, "", "warmup")
        results = [run(e, requests[:n], sampling, mode, f"{n}{':' + mode if mode else ''}") for n, mode in runs]
        if args.profile:
            results.append(run(e, requests[:args.profile], sampling, "final", f"{args.profile}:cProfile", prof))
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
            top = text.getvalue().strip().splitlines()
    finally:
        e.close()
    cpu = f"{cpu_model()}, {os.cpu_count()} cores"
    out = {"cpu": cpu, "vllm": vllm.__version__, "engine": e.describe(), "sampling": sampling.to_dict(),
           "load_s": round(loaded, 1), "script_s": round(time.perf_counter() - t0, 1), "runs": results,
           "profile_top_tottime": top}
    print("\n".join(top[-22:]))
    print(f"\n{cpu}; vllm {out['vllm']}; load {out['load_s']} s, script {out['script_s']} s; CPU times in µs")
    print(f"{'run':>11} {'running max/mean':>16} {'seq-steps':>9} {'add_req':>7} {'step/seq':>8} "
          f"{'fit: fixed + per seq':>20} {'other thr/step':>14} {'completion':>10} "
          f"{'step wall ms mean/median (wait)':>32} {'wall s':>6}")
    for r in results:
        fit, sw = r["step_cpu_fit_us"], r["step_wall_ms"]
        print(f"{r['run']:>11} {r['running_max']:>9}/{r['running_mean']:<6} {r['sequence_outputs']:>9} "
              f"{r['add_request_cpu_us']['mean']:>7} {r['step_cpu_us_per_sequence']:>8} {fit['fixed']:>11} + "
              f"{fit['per_sequence']:<6} {r['other_threads_cpu_us_per_step']:>14} "
              f"{r['completion_cpu_us_per_request']:>10} "
              f"{sw['mean']:>13} / {sw['median']:<7} ({sw['wait_core_mean']}) {r['wall_s']:>9}")
    path = Path(args.out_json or HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-vllm_overhead.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
