"""A deterministic OpenAI-compatible completions server on 127.0.0.1, a real peer for the real `openai`
client: it answers a rewrite made from the prompt's caption and the request's seed, and can be stopped,
started again, told to drop connections or to answer an HTTP error."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ["at dawn", "in soft light", "seen from afar", "up close", "on a grey day", "in summer", "at night"]


class FakeOpenAI:
    """A deterministic OpenAI-compatible completions server. `fail[caption] = status` answers that HTTP
    error to every prompt for that caption; `serve = N` answers N more requests, then drops the
    connection of every request (a server dying mid-run); `stop()` and `start()` take it down and bring it
    back on its port. `seen` holds the (caption, seed) of every request it answered."""

    def __init__(self) -> None:
        self.fail: dict[str, int] = {}
        self.serve: int | None = None
        self.seen: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAI":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.answer(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd = None

    @staticmethod
    def rewrite(caption: str, seed: int) -> str:
        """The answer to a prompt: empty (a rejected rewrite, so attempts matter) for a third of the seeds."""
        return "" if seed % 3 == 0 else f" {caption}, {WORDS[seed % len(WORDS)]}"

    def answer(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        caption = body["prompt"].rsplit("\n", 1)[-1].removesuffix(" =>")
        status = self.fail.get(caption)
        with self.lock:
            if self.serve is not None:
                if self.serve <= 0:
                    handler.close_connection = True  # no answer at all: the client sees the connection drop
                    return
                self.serve -= 1
            if status is None:
                self.seen.append((caption, body["seed"]))
        if status is not None:
            self.reply(handler, status, {"error": {"message": f"refused {handler.headers.get('Authorization')}",
                                                  "type": "invalid_request_error", "code": status}})
            return
        text = self.rewrite(caption, body["seed"])
        self.reply(handler, 200, {
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(text.split()),
                      "total_tokens": len(body["prompt"]) + len(text.split())}})

    @staticmethod
    def reply(handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
