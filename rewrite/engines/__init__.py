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

__all__ = ["Completion", "Engine", "EngineError", "Request", "available", "check", "load", "opened"]


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
    from . import model as model_lib

    module = importlib.import_module(f"{__name__}.{resolve_name(name)}")
    return getattr(module, "model_name", model_lib.resolve)(model)


_FLAGS = {"engine_args": "--engine-arg"}  # engine keywords the CLI spells otherwise than --<keyword>


def given(**options) -> dict:
    """The engine options a command was given, as `check`, `load` and `opened` take them: one left unset
    (None, or no --engine-arg) is left to the engine's default."""
    return {k: v for k, v in options.items() if v is not None and v != []}


def check(name: str, model: str | None, options: dict) -> str:
    """Refuse, before anything loads, what would only fail once engine `name` loads: an option it does
    not take, a bad value (its module's `check_options`), a --model that is no model (local engines);
    returns the engine's name (`auto` resolved)."""
    import inspect

    name = resolve_name(name)
    module = importlib.import_module(f"{__name__}.{name}")
    engine_class = inspect.signature(module.create, eval_str=True).return_annotation
    try:
        bound = inspect.signature(engine_class.__init__).bind(None, model, **options)
    except TypeError:
        taken = inspect.signature(engine_class.__init__).parameters
        unknown = next(k for k in options if k not in taken)
        flag = _FLAGS.get(unknown, "--" + unknown.replace("_", "-"))
        raise EngineError(f"{flag} does not apply to the {name} engine") from None
    bound.apply_defaults()
    checks = inspect.signature(module.check_options).parameters
    module.check_options(**{k: v for k, v in bound.arguments.items() if k in checks})
    model_name(name, model)  # a local engine's model directory (a missing one is refused)
    return name


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
