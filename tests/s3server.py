"""A real local S3 server for tests and the benchmark: moto's server mode on 127.0.0.1, with a WSGI
middleware in front that counts every request and injects faults (throttling, connections dropped mid-
upload or mid-read, a server that is down, wrong credentials), so the real boto3/s3fs clients meet
real HTTP failures. Also a small read-only HTTP server with Range support for http(s)://-style inputs."""
from __future__ import annotations

import re
import socket
import struct
import threading
import urllib.request
from urllib.parse import parse_qs

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.utils import send_from_directory

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INVALID_KEY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
    b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)
CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


class _Quiet(WSGIRequestHandler):
    """No access log line per request: the benchmark makes thousands."""

    def log_request(self, *args) -> None:
        pass


def _rst(sock: socket.socket) -> None:
    """Reset the client's connection (SO_LINGER 0 makes the close send RST, not FIN) and end the handler
    thread: SystemExit gets past werkzeug's `except Exception`, which would otherwise answer a 500."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    raise SystemExit


def _content_length(environ) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _drain(environ) -> None:
    """Read the request body we are not going to use, so the client gets our answer, not a reset."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):  # chunked upload: read to the end
        while stream.read(65536):
            pass
        return
    left = _content_length(environ)
    while left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            break
        left -= len(chunk)


class _Rule:
    """One injected fault: the next `times` requests whose method and path match get `kind`."""

    def __init__(self, kind: str, times: int, method: str | None, path: str, after_bytes: int = 0):
        self.kind, self.times, self.method, self.path, self.after_bytes = kind, times, method, path, after_bytes

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and (self.method is None or self.method == method) and self.path in path


class _CountingInput:
    """For a chunked upload (no Content-Length) the bytes in are counted as the body is read."""

    def __init__(self, stream, server: "S3Server"):
        self.stream, self.server = stream, server

    def _add(self, data: bytes) -> bytes:
        with self.server._lock:
            self.server._bytes_in += len(data)
        return data

    def read(self, *args) -> bytes:
        return self._add(self.stream.read(*args))

    def readline(self, *args) -> bytes:
        return self._add(self.stream.readline(*args))

    def __iter__(self):
        return iter(self.readline, b"")


class _CountingBody:
    """Wraps moto's response iterable to count the bytes actually handed to the server, keeping close()."""

    def __init__(self, body, server: "S3Server"):
        self.body, self.server = body, server

    def __iter__(self):
        for chunk in self.body:
            with self.server._lock:
                self.server._bytes_out += len(chunk)
            yield chunk

    def close(self) -> None:
        if hasattr(self.body, "close"):
            self.body.close()


class _Served:
    """A WSGI app served on 127.0.0.1 (a random free port) from a daemon thread: started, stopped, and a
    context manager; what S3Server and RangeHTTPServer share."""

    _server = None
    _thread: threading.Thread | None = None

    def _serve(self, app, name: str):
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_port


class S3Server(_Served):
    """moto's S3 in server mode on 127.0.0.1 (a random free port), behind a counting, fault-injecting
    middleware. Faults are rules consumed by the requests they match (method None = any; `path` is a
    substring of the URL path, which for path-style S3 starts with /bucket/key). Requests to /moto-api/
    are never counted nor faulted. `accepted_key`: when set, a request signed with another access key id
    gets 403 InvalidAccessKeyId (and an unsigned one 403 AccessDenied), as real S3 does; None accepts all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted_key: str | None = None
        self._rules: list[_Rule] = []
        self._down = False
        self.zero_counts()

    # life cycle
    def start(self) -> "S3Server":
        """Bind 127.0.0.1:0 and serve in a daemon thread, as moto's ThreadedMotoServer does."""
        from moto.server import DomainDispatcherApplication, create_backend_app

        return self._serve(self._middleware(DomainDispatcherApplication(create_backend_app)), "s3server")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Fresh server between tests: moto's buckets wiped, faults cleared, accepted_key None, counts 0."""
        request = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=30).read()
        self.clear_faults()
        self.accepted_key = None
        self.zero_counts()

    # faults
    def throttle(self, times: int, method: str | None = None, path: str = "") -> None:
        """The next `times` matching requests get 503 SlowDown (botocore retries it)."""
        self._add(_Rule("throttle", times, method, path))

    def drop_upload(self, times: int, after_bytes: int = 1024, method: str = "PUT", path: str = "") -> None:
        """The next `times` matching requests: read `after_bytes` of the body, then reset the connection."""
        self._add(_Rule("drop_upload", times, method, path, after_bytes))

    def drop_read(self, times: int, after_bytes: int = 1024, path: str = "") -> None:
        """The next `times` matching GETs: send the headers and `after_bytes` of the body, then reset."""
        self._add(_Rule("drop_read", times, "GET", path, after_bytes))

    def go_down(self) -> None:
        """Every request is reset at once, as by a killed server; moto's state survives for go_up()."""
        self._down = True

    def go_up(self) -> None:
        self._down = False

    def clear_faults(self) -> None:
        """Forget every pending fault rule and come back up (accepted_key is left as set)."""
        with self._lock:
            self._rules.clear()
        self._down = False

    def faults_left(self) -> int:
        """How many injected faults no request has met yet (0: every one was hit)."""
        with self._lock:
            return sum(rule.times for rule in self._rules)

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _take(self, method: str, path: str) -> _Rule | None:
        """The first matching rule, one of its `times` used up."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    return rule
        return None

    # counting
    def counts(self) -> dict:
        """{"requests", "bytes_in" (request bodies), "bytes_out" (response bodies), "by_method"}."""
        with self._lock:
            return {
                "requests": len(self._requests),
                "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out,
                "by_method": dict(self._by_method),
            }

    def requests(self) -> list[tuple[str, str]]:
        """(method, path?query) of every request, faulted ones included, in arrival order."""
        with self._lock:
            return list(self._requests)

    def zero_counts(self) -> None:
        with self._lock:
            self._requests: list[tuple[str, str]] = []
            self._by_method: dict[str, int] = {}
            self._bytes_in = 0
            self._bytes_out = 0

    # the middleware
    def _middleware(self, app):
        def middleware(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path.startswith("/moto-api/"):
                return app(environ, start_response)
            method = environ["REQUEST_METHOD"]
            query = environ.get("QUERY_STRING", "")
            with self._lock:
                self._requests.append((method, path + ("?" + query if query else "")))
                self._by_method[method] = self._by_method.get(method, 0) + 1
            sock = environ["werkzeug.socket"]
            if self._down:
                _rst(sock)
            length = _content_length(environ)
            refusal = self._refusal(environ, query)
            if refusal is not None:
                return self._answer(environ, start_response, "403 Forbidden", refusal)
            rule = self._take(method, path)
            if rule is not None and rule.kind == "throttle":
                return self._answer(environ, start_response, "503 Slow Down", SLOW_DOWN)
            if rule is not None and rule.kind == "drop_upload":
                want = min(rule.after_bytes, length) if length else rule.after_bytes
                got = environ["wsgi.input"].read(want) if want else b""
                with self._lock:
                    self._bytes_in += len(got)
                _rst(sock)
            if length:
                with self._lock:
                    self._bytes_in += length
            elif environ.get("wsgi.input_terminated"):
                environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], self)
            if rule is not None and rule.kind == "drop_read":
                self._send_part_then_rst(app, environ, start_response, rule.after_bytes, sock)
            return _CountingBody(app(environ, start_response), self)

        return middleware

    def _refusal(self, environ, query: str) -> bytes | None:
        """The 403 body for a request not signed with `accepted_key`, else None."""
        if self.accepted_key is None:
            return None
        found = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        key = found.group(1) if found else None
        if key is None:  # a presigned URL carries the key id in the query
            cred = parse_qs(query).get("X-Amz-Credential", [""])[0]
            key = cred.split("/", 1)[0] or None
        if key is None:
            return ACCESS_DENIED
        return None if key == self.accepted_key else INVALID_KEY

    def _answer(self, environ, start_response, status: str, body: bytes):
        """An S3 XML error of our own; the unread request body is drained first."""
        _drain(environ)
        if environ["REQUEST_METHOD"] == "HEAD":
            body = b""
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        with self._lock:
            self._bytes_out += len(body)
        return [body]

    def _send_part_then_rst(self, app, environ, start_response, after_bytes: int, sock) -> None:
        """Run moto, send its status, headers (full Content-Length) and the first `after_bytes` of the body
        through the server's write(), then reset: all before returning, so werkzeug never sees the end."""
        captured = []
        body = app(environ, lambda status, headers, exc_info=None: captured.append((status, headers)))
        status, headers = captured[0]
        write = start_response(status, headers)
        left = after_bytes
        try:
            for chunk in body:
                if left <= 0:
                    break
                part = chunk[:left]
                write(part)
                left -= len(part)
                with self._lock:
                    self._bytes_out += len(part)
        finally:
            if hasattr(body, "close"):
                body.close()
        _rst(sock)


def s3_env(server: S3Server, key: str = "testing-key", secret: str = "testing-secret") -> dict:
    """The environment a subprocess (the CLI) needs to reach `server`: merge it over os.environ. Three
    attempts in standard retry mode keep retried faults to about a second or two."""
    return {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "3",
        "AWS_RETRY_MODE": "standard",
    }


def make_bucket(server: S3Server, name: str) -> None:
    """Create a bucket with boto3, signed with the server's accepted key if one is set."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.accepted_key or "testing-key",
        aws_secret_access_key="testing-secret",
    ).create_bucket(Bucket=name)


class RangeHTTPServer(_Served):
    """Serves a local folder read-only over http://127.0.0.1:PORT/, as a stand-in for https:// inputs:
    GET answers Range with 206 (werkzeug's send_file with conditional=True), HEAD gives Content-Length,
    missing files and paths outside the folder are 404, other methods 405. `requests()` lists
    (method, path, Range header) so tests can check that only ranges were fetched."""

    def __init__(self, folder) -> None:
        self.folder = str(folder)
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str, str]] = []

    def _app(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self._lock:
            self._requests.append((method, path, environ.get("HTTP_RANGE", "")))
        try:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
            response = send_from_directory(self.folder, path.lstrip("/"), environ)
        except HTTPException as e:
            response = e
        return response(environ, start_response)

    def start(self) -> "RangeHTTPServer":
        return self._serve(self._app, "rangehttp")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._requests)
