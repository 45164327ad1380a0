"""Text-generation engines behind one small interface.

An engine is a module `rewrite/engines/<name>.py` with a `create(model, **options) -> Engine` function;
adding an engine touches that one file. `load("<name>", ...)` finds it by name.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sys
from typing import Iterator

from .base import Completion, Engine, EngineError, Request

__all__ = ["Completion", "Engine", "EngineError", "Request", "available", "load", "opened"]


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def pick_auto() -> str:
    """vLLM when a GPU and the vllm package are both present, else transformers."""
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "transformers"


def resolve_name(name: str) -> str:
    """The engine `name` stands for (`auto` picks one and says which)."""
    if name == "auto":
        name = pick_auto()
        print(f"--engine auto: using {name}", file=sys.stderr)
    if name not in available():
        raise EngineError(f"unknown engine {name!r}; engines: {', '.join(available())}")
    return name


def model_name(name: str, model: str | None) -> str:
    """What engine `name` would report as its model for --model `model`, without loading it: a local
    engine's resolved model directory, or an engine module's own `model_name(model)`."""
    from .. import model as model_lib

    module = importlib.import_module(f"{__name__}.{resolve_name(name)}")
    return getattr(module, "model_name", model_lib.resolve)(model)


def load(name: str, model: str | None = None, **options) -> Engine:
    """Engine `name` (or `auto`) on `model`; options are the engine's own keyword arguments."""
    name = resolve_name(name)
    module = importlib.import_module(f"{__name__}.{name}")
    try:
        return module.create(model, **options)
    except TypeError as e:
        raise EngineError(f"engine {name}: {e} (that option does not apply to this engine)") from None


@contextlib.contextmanager
def opened(name: str, model: str | None = None, **options) -> Iterator[Engine]:
    """`load`, closed again (its memory and processes freed) when the block ends, however it ends."""
    engine = load(name, model, **options)
    try:
        yield engine
    finally:
        engine.close()
