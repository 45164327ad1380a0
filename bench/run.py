"""Throughput benchmark: the reference method against the pipeline, same captions, model and machine.

    python bench/run.py [--captions 240] [--methods reference,transformers,vllm] [--model DIR]
    python bench/run.py --levers transformers      # each throughput lever switched off in turn

(a) reference: LaCLIP's way (transformers, static batches of 32, fresh random examples per caption,
    every batch decodes all 77 new tokens, no dedup, the rewrite cut at the first line break after);
(b) transformers: `rewrite run` with the transformers engine; (c) vllm: `rewrite run` with vLLM.
A pipeline method may carry modifiers after a colon: `vllm:sets=16,no-stop` (sets=K: K shared example
sets; no-stop, no-dedup, no-group, no-sort: that lever off; no-prefix: no shared-prefix reuse (vLLM: no
prefix caching); block=N: vLLM's KV cache block length in tokens).
Each method runs in its own subprocess; its peak memory is the largest summed RSS of that process
tree, sampled every 0.2 s (the JSON keeps each second's largest, to see whether it levels off). Results go to bench/results/<time>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # machine.py, also when a test loads this file by its path
    sys.path.insert(0, str(HERE))
BATCH = 32  # the reference code's max_batch_size


LEVERS = ("no-stop", "no-dedup", "no-group", "no-sort", "no-prefix")
ENGINES = ("reference", "transformers", "vllm", "openai")


def captions(n: int, duplicates: float = 0.0) -> list[str]:
    """n distinct demo captions, except that a `duplicates` share of them repeats an earlier one (web
    alt-text repeats)."""
    from rewrite.launch.demo import demo_captions

    base = demo_captions().read_text(encoding="utf-8").splitlines()
    rng = random.Random(1)
    out: list[str] = []
    fresh = 0
    for _ in range(n):
        if out and rng.random() < duplicates:
            out.append(rng.choice(out))
        else:  # past the demo file's end, marked so they stay distinct
            cycle, line = divmod(fresh, len(base))
            out.append(base[line] if not cycle else f"{base[line]}, take {cycle + 1}")
            fresh += 1
    return out


def split_methods(spec: str) -> list[str]:
    """`reference,vllm:sets=16,no-stop,transformers` -> its methods: a part naming an engine starts a
    method, any other part is a modifier of the method before it."""
    methods: list[str] = []
    for part in filter(None, spec.split(",")):
        if part.partition(":")[0] in ENGINES or not methods:
            methods.append(part)
        else:
            methods[-1] += ("," if ":" in methods[-1] else ":") + part
    return methods


def parse_method(method: str) -> tuple[str, dict, dict, dict]:
    """`engine:mod,mod` -> (engine, engine options, run config options, schedule options)."""
    engine, _, mods = method.partition(":")
    engine_opts: dict = {}
    config: dict = {}
    schedule: dict = {}
    for mod in filter(None, mods.split(",")):
        if mod.startswith("sets="):
            config["example_sets"] = int(mod.split("=", 1)[1])
        elif mod == "no-stop":
            engine_opts["stop_at_newline"] = False
        elif mod == "no-prefix" and engine == "vllm":
            engine_opts.setdefault("engine_args", []).append("enable_prefix_caching=false")
        elif mod == "no-prefix":
            engine_opts["prefix_reuse"] = False
        elif mod.startswith("block=") and engine == "vllm":
            engine_opts.setdefault("engine_args", []).append(f"block_size={mod.split('=', 1)[1]}")
        elif mod == "no-dedup":
            config["dedup"] = False
        elif mod == "no-group":
            schedule["group_by_examples"] = False
        elif mod == "no-sort":
            schedule["sort_by_length"] = False
        elif mod in ("chunked", "stream"):  # --scheduler chunked (a chunk at a time, retry rounds) or stream
            schedule["streaming"] = mod == "stream"
        elif mod.startswith("dtype="):
            engine_opts["dtype"] = mod.split("=", 1)[1]
        elif mod == "unseeded" and engine == "vllm":  # no per-request seeds: vLLM's faster sampling path
            engine_opts["per_request_seeds"] = False
        elif mod.startswith("ngram=") and engine == "vllm":  # n-gram speculative decoding, K tokens proposed
            k = int(mod.split("=", 1)[1])
            engine_opts.setdefault("engine_args", []).append(
                'speculative_config={"method": "ngram", "num_speculative_tokens": %d, "prompt_lookup_max": 4, '
                '"prompt_lookup_min": 2}' % k)
        elif mod.startswith("arg=") and engine == "vllm":  # any LLM(...) argument, e.g. arg=max_num_seqs=64
            engine_opts.setdefault("engine_args", []).append(mod.split("=", 1)[1])
        else:
            raise SystemExit(f"unknown modifier {mod!r} in {method!r}")
    return engine, engine_opts, config, schedule


def run_reference(caps: list[str], model: str | None, source: str) -> dict:
    """The reference method, with the embedded model through transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewrite import meta
    from rewrite.engines import model as model_lib
    from rewrite.rewriting import prompt
    from rewrite.run import rows
    from rewrite.engines.base import Completion

    path = model_lib.resolve(model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # as the transformers engine picks
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    m, tpl = meta.load(source), prompt.load_template()
    rng = random.Random(0)  # the reference is unseeded; seeded here only so runs compare
    started = time.perf_counter()
    prompt_tokens = generated = ok = 0
    for b in range(0, len(caps), BATCH):
        batch = caps[b : b + BATCH]
        examples = [meta.sample_examples(m, rng, 3) for _ in batch]
        prompts = [tpl.render(ex, c) for ex, c in zip(examples, batch)]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            out = lm.generate(**enc, do_sample=True, temperature=0.9, top_p=0.95, max_new_tokens=77,
                              min_new_tokens=77, pad_token_id=tok.pad_token_id)
        prompt_tokens += int(enc["attention_mask"].sum())
        new = out[:, enc["input_ids"].shape[1]:]
        generated += new.numel()  # every row decodes all 77 steps
        for row, cap, ex in zip(new.tolist(), batch, examples):
            text = tok.decode(row, skip_special_tokens=True)
            comp = Completion(text, 0, 0, "stop" if "\n" in text else "length")
            ok += rows.judge(comp, cap, [t for _, t in ex])[1] is None  # the pipeline's checks, CLIP's count included
    seconds = time.perf_counter() - started
    return {"rows": len(caps), "ok": ok, "seconds": seconds, "prompt_tokens": prompt_tokens,
            "generated_tokens": generated, "params": sum(p.numel() for p in lm.parameters())}


def run_pipeline(caps: list[str], model: str | None, source: str, method: str) -> dict:
    from rewrite import engines, defaults
    from rewrite.inputs import plan
    from rewrite.run import runner
    from rewrite.run.config import RunConfig

    engine_name, engine_opts, config, schedule = parse_method(method)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text("\n".join(caps) + "\n", encoding="utf-8")
        plan.plan([str(src)], Path(tmp) / "work", num_shards=1)
        eng = engines.load(engine_name, model, **engine_opts)
        params = _params(eng)
        started = time.perf_counter()
        stats = runner.run(Path(tmp) / "work", RunConfig(source=source, **config), [0], eng, progress=False,
                           schedule=defaults.Schedule(**schedule))[0]
        seconds = time.perf_counter() - started
        eng.close()
    return {"rows": stats["rows"], "ok": stats["ok"], "seconds": seconds, "prompt_tokens": stats["prompt_tokens"],
            "cached_prompt_tokens": stats["cached_prompt_tokens"], "generated_tokens": stats["generated_tokens"],
            "params": params,
            "unique_captions": stats["unique_captions"], "requests": stats["requests"]}


def _params(eng) -> int:
    lm = getattr(eng, "lm", None)
    if lm is not None:
        return sum(p.numel() for p in lm.parameters())
    import json as _json

    cfg = _json.loads((Path(eng.model) / "config.json").read_text())
    h, layers, vocab, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * h // cfg["num_attention_heads"]
    return vocab * h + layers * (2 * h * h + 2 * h * kv + 3 * h * inter)  # tied embeddings (SmolLM2)


def cpu_peak_flops() -> tuple[float, str]:
    """Cores x clock x fp32 FLOPs per cycle per core (2 FMA units x SIMD lanes x 2)."""
    from machine import cpu_flags, cpu_mhz

    mhz, flags = cpu_mhz(), cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * lanes * 2
    cores = os.cpu_count() or 1
    how = f"{cores} cores x {mhz:.0f} MHz x {per_cycle} fp32 FLOP/cycle (2 FMA units x {lanes} lanes x 2)"
    return cores * mhz * 1e6 * per_cycle, how


def measure(method: str, args) -> dict:
    """Run one method in a subprocess and sample the RSS of its whole process tree."""
    import psutil

    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, __file__, "--one", method, "--captions", str(args.captions), "--source", args.source,
           "--duplicates", str(args.duplicates), "--out", str(out)] + (["--model", args.model] if args.model else [])
    proc = subprocess.Popen(cmd)
    peak = 0
    per_second: list[int] = []  # the largest summed RSS (MB) in each second of the run
    ps = psutil.Process(proc.pid)
    started = time.monotonic()
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        second = int(time.monotonic() - started)
        per_second += [0] * (second + 1 - len(per_second))
        per_second[second] = max(per_second[second], round(rss / 2**20))
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed with exit code {proc.returncode}")
    result = json.loads(out.read_text())
    out.unlink()
    result["peak_rss_mb"] = round(peak / 2**20)
    result["rss_mb_per_second"] = per_second
    return result


def report(results: dict, peak_flops: float, how: str, args) -> str:
    base_name = "reference" if "reference" in results else next(iter(results))
    base = results[base_name]
    lines = [f"{args.captions} captions ({args.duplicates:.0%} repeats), source {args.source}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores; compute bound: {how} = {peak_flops / 1e9:.0f} GFLOP/s", "",
             f"| method | captions/s | x {base_name} | prompt tok/s | prompt cached | generated tok/s | valid rewrites "
             "| peak RSS MB | share of compute bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        cps = r["rows"] / r["seconds"]
        ratio = f"{cps / (base['rows'] / base['seconds']):.2f}"
        # Tokens computed: a prompt token taken from a shared prefix's cache costs no forward pass.
        computed = r["prompt_tokens"] - r.get("cached_prompt_tokens", 0) + r["generated_tokens"]
        flops = 2 * r["params"] * computed / r["seconds"]
        lines.append(f"| {name} | {cps:.2f} | {ratio} | {r['prompt_tokens'] / r['seconds']:.0f} | "
                     f"{r.get('cached_prompt_tokens', 0) / r['prompt_tokens']:.0%} | "
                     f"{r['generated_tokens'] / r['seconds']:.0f} | {r['ok'] / r['rows']:.1%} | {r['peak_rss_mb']} | "
                     f"{flops / peak_flops:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=240)
    ap.add_argument("--methods", default="reference,transformers,vllm")
    ap.add_argument("--source", default="chatgpt")
    ap.add_argument("--model", default=None)
    ap.add_argument("--peak-flops", type=float, help="the machine's peak FLOP/s (on a GPU node: the GPU's, "
                    "e.g. 989e12 for an H100's dense bf16); default: the CPU's, from /proc/cpuinfo")
    ap.add_argument("--duplicates", type=float, default=0.0, help="share of captions repeating an earlier one")
    ap.add_argument("--levers", metavar="METHOD", help="METHOD with all levers on, then each lever off in turn")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        caps = captions(args.captions, args.duplicates)
        if args.one == "reference":
            r = run_reference(caps, args.model, args.source)
        else:
            r = run_pipeline(caps, args.model, args.source, args.one)
        Path(args.out).write_text(json.dumps(r))
        return
    if args.levers:
        sep = "," if ":" in args.levers else ":"
        methods = [args.levers] + [args.levers + sep + lever for lever in LEVERS]
    else:
        methods = split_methods(args.methods)
    results = {}
    for m in methods:
        results[m] = measure(m, args)
        print(f"{m}: {results[m]['rows'] / results[m]['seconds']:.2f} captions/s", file=sys.stderr)
    peak, how = (args.peak_flops, "given with --peak-flops") if args.peak_flops else cpu_peak_flops()
    table = report(results, peak, how, args)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}.json").write_text(json.dumps({"args": vars(args), "results": results, "peak_flops": peak,
                                                    "peak_flops_derivation": how}, indent=2))
    (out / f"{stamp}.md").write_text(table + "\n")
    print(f"\nwritten: {out / stamp}.json and .md")


if __name__ == "__main__":
    main()
