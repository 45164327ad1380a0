"""The engine interface: prompts and per-request seeds in, completions and token counts out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

from ..settings import Sampling


class EngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class Request:
    prompt: str
    seed: int  # each request samples with its own seed: output does not depend on the batch it is in
    # Requests of one call with the same group start alike (instruction and examples): an engine
    # may compute that shared start once.
    group: str = ""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # "stop" (line break or end of text), "length" (hit max tokens) or "error"
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens reused from a shared prefix rather than computed (0: not known)


class Engine(ABC):
    name: str
    model: str  # what was loaded: a directory or a served model name

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens the model attends to: prompt plus completion."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of text, as the model counts them (for cutting over-long prompts)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        """One completion per request, in order; generation stops at the first line break."""

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model}

    def close(self) -> None:
        pass


class TokenizerEngine(Engine):
    """An engine holding a Hugging Face tokenizer (`self.tokenizer`) and its context (`self._context`)."""

    tokenizer: Any
    _context: int

    @property
    def context_length(self) -> int:
        return self._context

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
