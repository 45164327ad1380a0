"""The engine and sampling options that `rewrite run` and `rewrite meta generate` share, declared once
(as Annotated types: a command names one as its parameter's type and gives its own default)."""
from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

from .. import defaults

Engine = Annotated[str, typer.Option(help="transformers, vllm, openai, or auto (vllm on a GPU when installed).")]
Model = Annotated[Optional[str], typer.Option(
    help="Local model dir (or hub id on your cluster; the served name with openai); default: the embedded SmolLM2-135M.")]
Dtype = Annotated[Optional[str], typer.Option(
    help="float32, bfloat16, float16 or auto (the checkpoint's own); default: on a CPU float32 (vllm: bfloat16 where "
         "the CPU has AVX-512 BF16 or AMX); on a GPU bfloat16 with transformers, the model's own with vllm.")]
MaxModelLen = Annotated[Optional[int], typer.Option(help="Cap on prompt + completion tokens.")]
EngineArg = Annotated[Optional[List[str]], typer.Option(help="vllm: extra LLM(...) argument as key=value (repeatable).")]
BaseUrl = Annotated[Optional[str], typer.Option(
    help="openai: server URL, e.g. http://127.0.0.1:8000/v1 (key from $OPENAI_API_KEY).")]
Api = Annotated[Optional[str], typer.Option(
    help="openai: completions (base models; the default of `run`) or chat (the default of `meta generate`, whose "
         "instruction is a user turn).")]
Concurrency = Annotated[Optional[int], typer.Option(help="openai: requests in flight (default 16).")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature.")]
TopP = Annotated[float, typer.Option(help="Nucleus sampling: the share of probability mass sampled from.")]

DEFAULT_TEMPERATURE, DEFAULT_TOP_P = defaults.Sampling.temperature, defaults.Sampling.top_p
