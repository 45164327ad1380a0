"""Text-generation engines behind one small interface.

An engine is a module `rewrite/engines/<name>.py` with a `create(model, **options) -> Engine` function;
adding an engine touches that one file. `load("<name>", ...)` finds it by name.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Completion, Engine, EngineError, Request

__all__ = ["Completion", "Engine", "EngineError", "Request", "available", "load"]


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def load(name: str, model: str | None = None, **options) -> Engine:
    if name not in available():
        raise EngineError(f"unknown engine {name!r}; engines: {', '.join(available())}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.create(model, **options)
