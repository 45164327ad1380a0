"""Request building and judging in worker processes beside the engine's (`rewrite run --builders N`).

The Python work per caption (fitting it, drawing its examples, putting its prompt together, judging the
completion, counting its CLIP tokens) holds the GIL of the process it runs in. In the engine's process
that is the GIL vLLM's front end needs at every step (bench/vllm_overhead.py) and the engine's thread
needs back after each step; in worker processes it takes none of it. A worker loads the engine's
tokenizer from the same folder, checked to tokenize as the engine does, and rebuilds each set's
`rows.Prompting` from a copy without its functions: a request or a verdict is what the engine's process
would have made (rows.first_requests, rows.requests_again, rows.judge_many), so the output does not
depend on where it was made.

A worker is `python -m rewrite.run.builders`, fed pickled calls on its stdin and answering on its
stdout, one at a time; a thread of ours per worker hands it the calls. (Not multiprocessing: its spawn
runs the caller's main script again in each worker, which a script without a main guard does not
survive; forking would copy vLLM's threads' locks.) Workers die with the process that started them
(children.die_with_parent), leave Ctrl-C to it, and are ended with the stream however it ends.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import concurrent.futures
from concurrent.futures import Future
from typing import BinaryIO, Callable, Sequence

from .. import children
from ..engines.base import BATCH_PROBES, TokenizerEngine
from ..rewriting import prompt
from . import rows

MAX_DEFAULT = 8  # workers by default at most (each holds a tokenizer: ~100-300 MB)


class BuildersUnavailable(RuntimeError):
    pass


def default_count(cores: int | None = None) -> int:
    """Workers when --builders is not given: a quarter of the cores this task may use (its Slurm
    allocation), up to MAX_DEFAULT; the engine's process, vLLM's and the stream's threads need the rest.
    None below 4 cores, where a worker would take a core the engine needs."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_DEFAULT, cores // 4)


class Builders:
    """`count` worker processes holding the engine's tokenizer: `first_requests`, `requests_again` and
    `judge` as futures, once `ready()`. They start in the background (a worker loads transformers and the
    tokenizer: seconds), checked to tokenize as the engine does; until then, and for good where they
    cannot start or do not agree (said once on stderr), `ready()` is False and the stream works in its own
    process, with the same output."""

    def __init__(self, count: int, engine):
        folder = engine.tokenizer_folder() if hasattr(engine, "tokenizer_folder") else None  # (a test's wrapper)
        if folder is None:
            raise BuildersUnavailable(f"the {engine.name} engine has no tokenizer folder a worker could load")
        self.folder, self.count = folder, count
        self.calls: queue.Queue = queue.Queue()  # (future, function name, arguments); None ends a worker's thread
        self.workers = [_Worker(folder, self.calls) for _ in range(count)]
        self.expected = [engine.encode(p) for p in BATCH_PROBES]
        self.checked = self._call("encode", list(BATCH_PROBES))
        self.state: bool | None = None  # None: not known yet

    def wait_ready(self) -> bool:
        """`ready()`, once the workers have started (or failed to)."""
        concurrent.futures.wait([self.checked])
        return self.ready()

    def ready(self) -> bool:
        if self.state is None and self.checked.done():
            error = self.checked.exception()
            self.state = error is None and self.checked.result() == self.expected
            if not self.state:
                why = f"could not start ({error})" if error else f"tokenize unlike the engine (from {self.folder})"
                print(f"--builders {self.count}: the worker processes {why}; requests are built in the engine's "
                      "process", file=sys.stderr)
            else:
                print(f"building requests and judging in {self.count} worker processes", file=sys.stderr)
        return bool(self.state)

    def _call(self, name: str, *args) -> Future:
        future: Future = Future()
        self.calls.put((future, name, args))
        return future

    def first_requests(self, ask: rows.Prompting, jobs: Sequence[tuple]) -> Future:
        return self._call("first_requests", _portable(ask), jobs)

    def requests_again(self, ask: rows.Prompting, jobs: Sequence[tuple]) -> Future:
        return self._call("requests_again", _portable(ask), jobs)

    def judge(self, judged: Sequence[tuple]) -> Future:
        return self._call("judge", judged)

    def close(self) -> None:
        """End the workers: a call under way finishes (a slice: milliseconds), calls not started fail, and
        workers still starting are killed (`_Worker.close`)."""
        for _ in self.workers:
            self.calls.put(None)
        for worker in self.workers:
            worker.close()
        while True:
            try:
                call = self.calls.get_nowait()
            except queue.Empty:
                return
            if call is not None:
                call[0].set_exception(BuildersUnavailable("the builders were closed"))


class _Worker:
    """One worker process and the thread of ours that hands it calls from the shared queue."""

    def __init__(self, folder: str, calls: queue.Queue):
        self.process = subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), folder],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.answered = False  # whether it has answered a call: started, tokenizer loaded
        self.thread = threading.Thread(target=self._serve, args=(calls,), name="rewrite-builder-call", daemon=True)
        self.thread.start()

    def _serve(self, calls: queue.Queue) -> None:
        while (call := calls.get()) is not None:
            future, name, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                _send(self.process.stdin, (name, args))
                ok, answer = _receive(self.process.stdout)
                self.answered = True
            except (OSError, EOFError, struct.error) as e:  # the worker died
                future.set_exception(BuildersUnavailable(f"a builder process ended ({e or 'no answer'})"))
                return
            future.set_result(answer) if ok else future.set_exception(answer)

    def close(self) -> None:
        """After the caller queued its None. A worker that has answered nothing yet is killed: it is still
        loading transformers and the tokenizer (seconds), or was never used; a stream shorter than that
        start would otherwise end only with it."""
        if not self.answered:
            self.process.kill()
        self.thread.join()
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _send(pipe: BinaryIO, value) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(struct.pack("<Q", len(data)) + data)
    pipe.flush()


def _receive(pipe: BinaryIO):
    head = pipe.read(8)
    if len(head) < 8:
        raise EOFError
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(pipe.read(size))


def _portable(ask: rows.Prompting) -> tuple[rows.Prompting, bool]:
    """`ask` without its functions (the engine's tokenizer and chat template), for a worker to rebuild,
    and whether it had a chat template (an engine without one refuses a chat prompt template there too)."""
    return dataclasses.replace(ask, encode=None, decode=None, encode_many=None, chat=None, ids=None), ask.chat is not None


# -- in a worker ------------------------------------------------------------------------------------------

class _Tokenizer(TokenizerEngine):
    """The engine's tokenizer in a worker: encode, decode, encode_many and chat_prompt as the engine has them."""

    name = "builder"
    _context = 0

    def __init__(self, folder: str):
        from transformers import AutoTokenizer

        self.model = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def generate(self, requests, sampling):
        raise NotImplementedError("a builder's tokenizer generates nothing")


_TOKENIZER: _Tokenizer | None = None
_ASKS: dict[tuple, rows.Prompting] = {}  # (portable, chat) -> rebuilt with this worker's tokenizer


def _rebuilt(sent: tuple[rows.Prompting, bool]) -> rows.Prompting:
    ask = _ASKS.get(sent)
    if ask is None:
        (portable, chat), t = sent, _TOKENIZER
        meta_set = portable.meta_set
        ask = _ASKS[sent] = dataclasses.replace(
            portable, encode=t.encode, decode=t.decode, encode_many=t.encode_many,
            chat=t.chat_prompt if chat else None,
            ids=prompt.assemble(portable.template, t.encode, meta_set.examples(), portable.num_examples, meta_set,
                                t.encode_many))
    return ask


CALLS: dict[str, Callable] = {
    "encode": lambda texts: [_TOKENIZER.encode(text) for text in texts],
    "first_requests": lambda portable, jobs: rows.first_requests(_rebuilt(portable), jobs),
    "requests_again": lambda portable, jobs: rows.requests_again(_rebuilt(portable), jobs),
    "judge": rows.judge_many,
}


def serve(parent: int, folder: str) -> None:
    """A worker's life: its calls, one at a time, until its stdin closes."""
    children.die_with_parent(parent)
    children.worker_signals()
    global _TOKENIZER
    _TOKENIZER = _Tokenizer(folder)
    calls, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a library's print must not break the answers
    while True:
        try:
            name, args = _receive(calls)
        except EOFError:
            return
        try:
            answer = (True, CALLS[name](*args))
        except Exception as e:  # noqa: BLE001 - the caller's future raises it (a TemplateError, say)
            answer = (False, e)
        try:
            _send(answers, answer)
        except (pickle.PicklingError, TypeError, AttributeError):
            _send(answers, (False, RuntimeError(f"in a builder process: {type(answer[1]).__name__}: {answer[1]}")))


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
    os._exit(0)  # nothing left to flush or close: skip an interpreter shutdown of seconds (torch is loaded)
