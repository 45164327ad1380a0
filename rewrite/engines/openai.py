"""Any OpenAI-compatible server (vLLM's `vllm serve`, TGI, llama.cpp's server, a hosted API).

The completions endpoint suits base models and takes the LaCLIP prompt as it is; the chat endpoint
sends it as one user message for chat-only models. The API key is read from $OPENAI_API_KEY only and is
never written anywhere. Requests run with bounded concurrency; the client retries rate limits, server
errors, timeouts and dropped connections with exponential backoff. A request that still fails becomes a
completion that says why: UNAVAILABLE when the server could not serve it (no connection, a timeout, 429,
5xx, or an answer that refuses every request: 401, 403, 404 for the model), so a later run sends it again;
"error" when the server refused this request (400, 422: it would never work), a final failure. After
`unavailable_after` requests in a row it could not serve, the engine gives up on the server (base.Outage)
and the run stops.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterable, Iterator, Sequence
from urllib.parse import urlsplit

from .. import storage
from . import model as model_lib
from ..defaults import Sampling
from .base import UNAVAILABLE, Completion, Engine, EngineError, Intake, Outage, Request, hf_tokenizer_folder, in_order

API_KEY_ENV = "OPENAI_API_KEY"
REQUEST_RETRIES = 5  # the client's retries of a request it may retry, with exponential backoff
# HTTP answers about the server or the run rather than the request: authentication, permission, an unknown
# model or path, a timeout, a lock, a rate limit (and every 5xx). The same request may work later.
SERVER_WIDE = (401, 403, 404, 408, 409, 429)


def default_unavailable_after(concurrency: int) -> int:
    """Requests in a row the server may fail before the engine gives up, by default: two rounds of the
    requests in flight, so one burst of failures (every request in flight at an outage's start) is not
    enough, and an outage costs two rounds of the client's retries before the run stops."""
    return 2 * concurrency


def model_name(model: str | None) -> str:
    """The served model's name: as given (a server's path or name, not a local one), else the embedded
    model's directory (what `vllm serve DIR` serves)."""
    return model or model_lib.resolve(None)


def check_options(base_url: str | None, api: str, concurrency: int, timeout: float, max_model_len: int | None,
                  request_retries: int = REQUEST_RETRIES, unavailable_after: int | None = None) -> None:
    """Refuse bad options before the client or a tokenizer loads, naming them as the CLI spells them. A
    wrong --base-url would otherwise only show as every request failing, and every row with it."""
    if not base_url:
        raise EngineError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
    try:
        url = urlsplit(base_url)
        well_formed = url.scheme in ("http", "https") and bool(url.hostname) and (url.port is None or url.port > 0)
    except ValueError:  # a port that is not a number up to 65535, a broken IPv6 address
        well_formed = False
    if not well_formed:
        raise EngineError(f"--base-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    if url.path.rstrip("/").endswith("/completions"):
        raise EngineError(f"--base-url is the API's root, such as http://127.0.0.1:8000/v1 (the client adds "
                          f"/completions or /chat/completions), got {base_url!r}")
    if api not in ("completions", "chat"):
        raise EngineError(f"--api must be completions or chat, got {api!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise EngineError(f"--concurrency must be >= 1, got {concurrency!r}")
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise EngineError(f"--timeout must be > 0 seconds, got {timeout!r}")
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
        raise EngineError(f"--max-model-len must be >= 1, got {max_model_len!r}")
    if not isinstance(request_retries, int) or request_retries < 0:
        raise EngineError(f"--request-retries must be >= 0, got {request_retries!r}")
    if unavailable_after is not None and (not isinstance(unavailable_after, int) or unavailable_after < 1):
        raise EngineError(f"--unavailable-after must be >= 1, got {unavailable_after!r}")


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, model: str | None, *, base_url: str | None = None, api: str = "completions",
                 concurrency: int = 16, timeout: float = 60.0, request_retries: int = REQUEST_RETRIES,
                 tokenizer: str | None = None, max_model_len: int | None = None,
                 unavailable_after: int | None = None):
        check_options(base_url, api, concurrency, timeout, max_model_len, request_retries, unavailable_after)
        try:
            import openai
        except ImportError:
            raise EngineError("the openai engine needs the openai package: pip install openai") from None
        self.model = model_name(model)
        self.api, self.concurrency, self.base_url = api, concurrency, base_url
        self.outage = Outage(unavailable_after or default_unavailable_after(concurrency))
        self._key = os.environ.get(API_KEY_ENV)
        self._first_lock, self._first_read = threading.Lock(), threading.Event()  # see _one
        self.client = openai.OpenAI(base_url=base_url, api_key=self._key or "EMPTY",
                                    max_retries=request_retries, timeout=timeout)
        self._tokenizer = self._load_tokenizer(tokenizer or self.model)
        self._context = max_model_len or (
            getattr(self._tokenizer, "model_max_length", None) if self._tokenizer else None)
        if not self._context or self._context > 1_000_000:
            self._context = 4096

    @staticmethod
    def _load_tokenizer(name: str):
        """A local tokenizer when the model is a local directory; else None (bytes stand in for tokens)."""
        if not storage.is_dir(Path(name)):
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)

    @property
    def context_length(self) -> int:
        return self._context

    def tokenizer_folder(self) -> str | None:
        return hf_tokenizer_folder(self._tokenizer) if self._tokenizer is not None else None

    def encode(self, text: str) -> list[int]:
        if self._tokenizer is None:
            return list(text.encode("utf-8"))  # a byte is never less than a token: cuts stay safe
        return self._tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        if self._tokenizer is None:
            return bytes(ids).decode("utf-8", errors="ignore")
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def _one(self, request: Request, sampling: Sampling) -> Completion:
        """A request; the first one alone: the client builds its response models (pydantic, deferred)
        on first use, and two threads doing that at once fail ("BaseModel cannot be instantiated
        directly"), seen once the stream's threads switched every 0.1 ms."""
        if self._first_read.is_set():
            return self._request(request, sampling)
        with self._first_lock:
            try:
                return self._request(request, sampling)
            finally:
                self._first_read.set()

    def _request(self, request: Request, sampling: Sampling) -> Completion:
        import openai

        common = dict(model=self.model, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                      top_p=sampling.top_p, stop=["\n"], seed=request.seed)
        try:
            if self.api == "chat":
                resp = self.client.chat.completions.create(
                    messages=[{"role": "user", "content": request.prompt}], **common)
                choice, text = resp.choices[0], resp.choices[0].message.content or ""
            else:
                resp = self.client.completions.create(prompt=request.prompt, **common)
                choice, text = resp.choices[0], resp.choices[0].text or ""
        except openai.OpenAIError as e:
            return Completion(text="", prompt_tokens=0, generated_tokens=0,
                              finish_reason=UNAVAILABLE if self._server_failed(e) else "error", error=self._message(e))
        usage = resp.usage
        return Completion(text=text, prompt_tokens=usage.prompt_tokens if usage else 0,
                          generated_tokens=usage.completion_tokens if usage else 0,
                          finish_reason="length" if choice.finish_reason == "length" else "stop")

    @staticmethod
    def _server_failed(e: Exception) -> bool:
        """Whether the server, not the request, failed (after the client's retries): see SERVER_WIDE."""
        import openai

        if isinstance(e, openai.APIConnectionError):  # refused, dropped, timed out
            return True
        return isinstance(e, openai.APIStatusError) and (e.status_code in SERVER_WIDE or e.status_code >= 500)

    def _message(self, e: Exception) -> str:
        """The error on one line, at most 500 characters, the API key never in it (a server may echo it)."""
        message = " ".join(f"{type(e).__name__}: {e}".split())
        return (message.replace(self._key, "***") if self._key else message)[:500]

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        return in_order(self.stream(requests, sampling), len(requests))

    def stream(self, requests: Iterable[Request | None], sampling: Sampling) -> Iterator[tuple[int, Completion]]:
        """One pool of `concurrency` threads for the whole stream: a request is sent as soon as a slot
        frees, and each completion is yielded as it comes. Once the engine gives up on its server
        (`self.outage`), the requests it takes are answered at once, unsent. Closing the stream waits for
        the requests already sent (a request cannot be taken back) but sends no more."""
        intake = Intake(requests)
        running: dict = {}  # future -> position
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            try:
                while True:
                    for position, request in intake.take(self.concurrency - len(running), holding=bool(running)):
                        if self.outage.gave_up:
                            yield position, self.outage.unsent()
                        else:
                            running[pool.submit(self._one, request, sampling)] = position
                    if not running:
                        if intake.ended:
                            return
                        continue
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        completion = future.result()
                        self.outage.note(completion)
                        yield running.pop(future), completion
            finally:
                for future in running:
                    future.cancel()

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model, "base_url": self.base_url, "api": self.api}

    def close(self) -> None:
        self.client.close()


def create(model: str | None, **options) -> OpenAIEngine:
    return OpenAIEngine(model, **options)

