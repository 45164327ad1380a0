"""One very long prompt among ordinary ones: what does it cost the batch?

    python bench/long_row.py [--prompts 64] [--long-tokens 2000] [--repeats 3] [--example-sets 0] [--model DIR]

With the transformers engine on the embedded model (or --model), times `generate` on N ordinary
LaCLIP-style prompts (the demo captions, examples and seeds drawn as the runner draws them, in the
runner's submission order) against the same N with the middle one's caption replaced by one long
enough to make a prompt of --long-tokens tokens. The two alternate, after a warm-up, --repeats times;
the ratio long / ordinary is printed per repeat and as the median, in wall-clock seconds and in the
process's CPU seconds (on a machine shared with other jobs the CPU seconds are the steadier measure;
--threads 1 steadies them further). A long row that costs what a row of its length costs keeps the ratio
near the printed ratio of prompt tokens (a little above: attention over 2,000 tokens costs more per token
than over 120); one that widens every row's prefill and KV cache multiplies it.

The process's address space is capped (--memory-gb, default half the machine's RAM) so that a run that
would take more fails here with the allocation that failed, instead of waking the OOM killer on a
shared machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

from machine import cpu_flags, cpu_model

SOURCE = "chatgpt"


def cpu_name() -> str:
    """The CPU's model name and its widest SIMD flags, as figures from this bench are quoted with."""
    flags = cpu_flags()
    simd = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags]
    return f"{cpu_model()}, {os.cpu_count()} cores, {'/'.join(simd) or 'no AVX2'}"


def build(engine, n: int, long_tokens: int, example_sets: int):
    """(ordinary requests, the same with the middle one's caption made long), in the runner's order."""
    from rewrite import meta
    from rewrite.rewriting import prompt, seeds
    from rewrite.launch.demo import demo_captions
    from rewrite.engines import Request
    from rewrite.defaults import Sampling

    captions = demo_captions().read_text(encoding="utf-8").splitlines()
    meta_set, template = meta.load(SOURCE), prompt.load_template()
    budget = engine.context_length - Sampling().max_new_tokens

    def request(ident: str, caption: str, examples) -> Request:
        text, _, _ = prompt.fit_prompt(template, examples, caption, engine.encode, engine.decode, budget)
        return Request(text, seeds.generation_seed(0, SOURCE, ident, 0, 0), group=template.head(examples))

    drawn = []
    for c in captions[:n]:
        ident = prompt.normalise_caption(c)
        rng = seeds.example_rng(0, SOURCE, ident, 0, 0, example_sets)
        drawn.append((ident, c, meta.sample_examples(meta_set, rng, 3)))
    # The runner's order: grouped by examples, then by length.
    drawn.sort(key=lambda d: (tuple(d[2]), len(template.render(d[2], d[1]))))
    ordinary = [request(*d) for d in drawn]
    ident, _, examples = drawn[n // 2]
    text = ", ".join(captions)
    room = long_tokens - len(engine.encode(template.render(examples, "")))
    ids = engine.encode(", ".join([text] * (room // len(engine.encode(text)) + 1)))
    long_caption = engine.decode(ids[:room])
    with_long = list(ordinary)
    with_long[n // 2] = request(ident, long_caption, examples)
    return ordinary, with_long


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--long-tokens", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--example-sets", type=int, default=0,
                    help="as `rewrite run --example-sets` (0: fresh examples per caption)")
    ap.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's own)")
    ap.add_argument("--batch-size", type=int, default=None, help="the engine's (default: its own)")
    ap.add_argument("--model", default=None)
    half_the_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**31
    ap.add_argument("--memory-gb", type=float, default=half_the_ram, help="address space cap (default: half the RAM)")
    args = ap.parse_args()
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    import inspect

    import torch

    from rewrite import engines
    from rewrite.defaults import Sampling

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = engines.load("transformers", args.model, **({"batch_size": args.batch_size} if args.batch_size else {}))
    ordinary, with_long = build(engine, args.prompts, args.long_tokens, args.example_sets)
    lengths = sorted(len(engine.encode(r.prompt)) for r in ordinary)
    long_length = len(engine.encode(with_long[args.prompts // 2].prompt))
    extra = (sum(lengths) - len(engine.encode(ordinary[args.prompts // 2].prompt)) + long_length) / sum(lengths)
    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{os.getloadavg()[0]:.1f}; engine code {inspect.getfile(type(engine))}; batch size {engine.batch_size}; "
          f"address space cap {args.memory_gb:.1f} GB")
    print(f"{args.prompts} ordinary prompts of {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}); "
          f"the long one {long_length} tokens; example sets {args.example_sets}; prompt tokens with long / "
          f"ordinary: {extra:.2f}")
    engine.generate(ordinary[:8], Sampling())  # warm-up
    ratios: dict[str, list[float]] = {"wall": [], "CPU": []}
    for r in range(args.repeats):
        seconds = {}
        for name, requests in (("ordinary", ordinary), ("with long", with_long)):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                engine.generate(requests, Sampling())
            except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as a RuntimeError
                sys.exit(f"repeat {r + 1}, {name}: did not complete within {args.memory_gb:.1f} GB: {str(e)[:300]}")
            seconds[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        for k, kind in enumerate(ratios):
            ratios[kind].append(seconds["with long"][k] / seconds["ordinary"][k])
        print(f"repeat {r + 1}: ordinary {seconds['ordinary'][0]:.1f} s ({seconds['ordinary'][1]:.1f} CPU s), "
              f"with long {seconds['with long'][0]:.1f} s ({seconds['with long'][1]:.1f} CPU s); ratio "
              f"{ratios['wall'][-1]:.2f} ({ratios['CPU'][-1]:.2f} in CPU s)", flush=True)
    print(f"median ratio with long / ordinary: {statistics.median(ratios['wall']):.2f} wall-clock, "
          f"{statistics.median(ratios['CPU']):.2f} CPU seconds; load average now {os.getloadavg()[0]:.1f}")
    engine.close()


if __name__ == "__main__":
    main()
