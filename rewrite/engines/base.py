"""The engine interface: prompts and per-request seeds in, completions and token counts out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .. import storage
from . import piece_cache
from ..defaults import Sampling


class EngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class Request:
    prompt: str
    seed: int  # each request samples with its own seed: output does not depend on the batch it is in
    # Requests of one call with the same group start alike (instruction and examples): an engine
    # may compute that shared start once.
    group: str = ""
    prompt_ids: tuple[int, ...] | None = None  # the prompt as tokenized when it was fitted: not tokenized again

    def ids(self, encode: Callable[[str], list[int]]) -> list[int]:
        return list(self.prompt_ids) if self.prompt_ids is not None else encode(self.prompt)


UNAVAILABLE = "unavailable"  # a Completion's finish_reason when the engine could not serve its request


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    generated_tokens: int
    # "stop" (line break or end of text), "length" (hit max tokens), "error" (this request failed: the same
    # request would fail again) or UNAVAILABLE (the engine could not serve it: its server down, overloaded or
    # refusing every request; nothing is wrong with the request, and a later run sends it again)
    finish_reason: str
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens reused from a shared prefix rather than computed (0: not known)
    sent: bool = True  # False: answered UNAVAILABLE without being sent (the engine had given up: see Outage)


@dataclass
class Outage:
    """What an engine serving over a network saw of its server: after `bound` requests in a row it could
    not serve (after its client's own retries), it gives up: it sends no more requests and answers each
    at once as UNAVAILABLE, not sent. The count runs across streams and `generate` calls (a chunk at a
    time makes one per chunk); a run starts it again (`restart`), and stops taking work once the engine
    gave up."""

    bound: int
    in_a_row: int = 0
    last_error: str | None = None  # of the last request it could not serve

    def restart(self) -> None:
        self.in_a_row = 0

    def note(self, completion: Completion) -> None:
        if completion.finish_reason == UNAVAILABLE:
            self.in_a_row += 1
            self.last_error = completion.error
        else:
            self.in_a_row = 0

    @property
    def gave_up(self) -> bool:
        return self.in_a_row >= self.bound

    def unsent(self) -> Completion:
        return Completion(text="", prompt_tokens=0, generated_tokens=0, finish_reason=UNAVAILABLE,
                          error=self.last_error, sent=False)


def gave_up(engine) -> bool:
    """Whether `engine` gave up on its server (engines without a server never do: their failures raise)."""
    outage = getattr(engine, "outage", None)
    return outage is not None and outage.gave_up


class Engine(ABC):
    name: str
    model: str  # what was loaded: a directory or a served model name
    in_flight = 256  # requests a stream holds at once (an engine with a batch size holds that many)
    outage: Outage | None = None  # an engine that serves over a network: its server as it saw it (see Outage)
    # Whether runs stream by default (--scheduler auto). Streaming mixes chunks in a batch as they come,
    # so an engine whose text depends on its batch companions (float rounding) writes other bytes on
    # a rerun; such an engine runs a chunk at a time unless asked (--scheduler stream).
    streams_by_default = True

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens the model attends to: prompt plus completion."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of text, as the model counts them (for cutting over-long prompts)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text; an engine with a batch tokenizer does them in one call."""
        return [self.encode(text) for text in texts]

    def tokenizer_folder(self) -> str | None:
        """The local folder of a Hugging Face tokenizer that encodes and decodes as this engine does (a
        worker process loads it: run/builders.py); None when there is none."""
        return None

    @abstractmethod
    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        """One completion per request, in order; generation stops at the first line break."""

    def stream(self, requests: Iterable[Request | None], sampling: Sampling) -> Iterator[tuple[int, Completion]]:
        """Completions as they finish, each with its request's position in `requests`. See `stream`:
        this default gathers up to `in_flight` requests into one `generate` call at a time; an engine
        that can take requests while it decodes overrides it."""
        return generate_in_rounds(self, requests, sampling, self.in_flight)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text of `messages` in the model's own chat template (for chat prompt templates)."""
        raise EngineError(f"the {self.name} engine cannot apply a model's chat template: use a completion template "
                          "(--template laclip), or with a served chat model --api chat")

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

    def tokenizer_folder(self) -> str | None:
        return hf_tokenizer_folder(self.tokenizer)

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """In one call of the Rust tokenizer behind a fast Hugging Face tokenizer (no Python per text, and
        the GIL released while it works), where that gives what `encode` gives: checked once on probes."""
        batch = self._batch_encoder()
        return batch(list(texts)) if batch is not None else super().encode_many(texts)

    def _batch_encoder(self) -> Callable[[list[str]], list[list[int]]] | None:
        if not hasattr(self, "_batch"):
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            encode = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
            self._batch = None
            if encode is not None:
                def batch(texts: list[str]) -> list[list[int]]:
                    return [e.ids for e in encode(texts, add_special_tokens=False)]

                cached = piece_cache.PieceCache.of(backend, batch)
                probes = [*BATCH_PROBES, " ".join(BATCH_PROBES), *piece_cache.probes(backend)]
                expected = [self.encode(p) for p in probes]
                if batch(probes) == expected:
                    self._batch = cached.encode_many if cached is not None and cached.encode_many(probes) == expected else batch
        return self._batch

    def chat_prompt(self, messages: list[dict]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError(f"model {self.model} has no chat template: use a completion template (--template laclip)")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - jinja raises its own errors; some templates refuse a system turn
            if messages[0]["role"] != "system":
                raise EngineError(f"model {self.model}'s chat template failed: {e}") from None
            system, first, *rest = messages
            merged = {"role": "user", "content": system["content"] + "\n\n" + first["content"]}
            return self.chat_prompt([merged, *rest])


def hf_tokenizer_folder(tokenizer) -> str | None:
    """The local folder a Hugging Face tokenizer was loaded from, or None."""
    folder = getattr(tokenizer, "name_or_path", None)
    return folder if isinstance(folder, str) and storage.is_dir(Path(folder)) else None


# Texts a batch tokenizer is checked against `encode` with: spacing, case, digits, quotes, non-ASCII.
BATCH_PROBES = ("a dog", "  Two  CATS,\tsleeping ", "3.5 mm", "it's \"quoted\"", "café 日本 🐶", "", "x\ny => z")


def stream(engine, requests: Iterable[Request | None], sampling: Sampling) -> Iterator[tuple[int, Completion]]:
    """`engine`'s completions as they finish, each as (position of its request in `requests`, completion).

    `requests` is pulled lazily, only when the engine has room, so its producer can still add work (a
    retry of a rejected completion) while the stream runs. It yields None for "nothing to give yet": the
    engine then goes on with what it holds, and asks again later. An object that is not an Engine and
    whose class has no `stream`, only `generate` (a test's wrapper), is streamed in rounds of `generate`
    calls."""
    if isinstance(engine, Engine) or hasattr(type(engine), "stream"):
        return engine.stream(requests, sampling)
    return generate_in_rounds(engine, requests, sampling, Engine.in_flight)


class Intake:
    """The pulling side of a stream: requests taken from `requests` as the engine has room, numbered by
    position (the Nones of "nothing yet" not counted)."""

    def __init__(self, requests: Iterable[Request | None]):
        self.requests, self.position, self.ended = iter(requests), 0, False

    def take(self, room: int, holding: bool) -> list[tuple[int, Request]]:
        """Up to `room` requests. A None ends the take once there is work (held or taken); with none,
        the take asks again (a producer waits rather than give None to an engine holding nothing)."""
        taken: list[tuple[int, Request]] = []
        while not self.ended and len(taken) < room:
            request = next(self.requests, _END)
            if request is _END:
                self.ended = True
            elif request is None:
                if taken or holding:
                    break
            else:
                taken.append((self.position, request))
                self.position += 1
        return taken


def generate_in_rounds(engine, requests: Iterable[Request | None], sampling: Sampling,
                       size: int) -> Iterator[tuple[int, Completion]]:
    """A stream made of `generate` calls: each takes what `requests` gives, up to `size`, until it
    gives None (nothing yet) or ends."""
    intake = Intake(requests)
    while not intake.ended:
        batch = intake.take(size, holding=False)
        if batch:
            yield from zip((p for p, _ in batch), engine.generate([r for _, r in batch], sampling))


def in_order(completions: Iterable[tuple[int, Completion]], count: int) -> list[Completion]:
    """A stream's completions by request position, for a `generate` built on `stream`."""
    out: list[Completion | None] = [None] * count
    for position, completion in completions:
        out[position] = completion
    return out  # type: ignore[return-value]


_END = object()
