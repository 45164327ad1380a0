"""Object storage and other fsspec stores (s3://, gs://, hf://, https://) behind storage.py: inputs read
and exports written where the data lives, the work dir staying on a filesystem.

A location is remote when it is a URL whose protocol is not `file`; it is then a `UPath` (path arithmetic:
`.name`, `/`, `.parent`), never a `Path` (which turns `s3://b` into `s3:/b`). Each store is opened with
fsspec's usual credential chain (environment, ~/.aws, fsspec config) plus the options given with
`--storage-option key=value`; an S3-compatible endpoint comes from AWS_ENDPOINT_URL, as boto3 reads it,
or from the option `endpoint_url`. Option values are never written or printed: only their names.

Writes are whole-or-nothing per object: an upload is completed when its file is closed without an error
and aborted otherwise (fsspec's own files would complete a half-written upload on an exception).
Throttling, timeouts and dropped connections are retried with backoff by botocore and s3fs; what still
fails raises RemoteError naming the URL.

One concern: what the tool does on a remote store (open, upload, list, remove, name its errors), so that
storage.py stays a dispatch and nothing else imports fsspec.
"""
from __future__ import annotations

import io
import json
import os
import re
from contextlib import contextmanager
from typing import IO, Iterator

from upath import UPath

READ_BLOCK = 8 << 20  # a sequential read fetches this much per request (and holds it)
RANGE_BLOCK = 1 << 10  # a read here and there (a tar header, a parquet footer) fetches what it asks plus this
WRITE_BLOCK = 8 << 20  # an upload goes up in parts of this much (S3's smallest part is 5 MiB)
S3FS_RETRIES = 3  # s3fs's attempts around each botocore call (whose own attempts handle throttling)
LOCAL_PROTOCOLS = ("", "file", "local")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_SECRET_QUERY = re.compile(r"(?i)(sig|signature|credential|token|key|secret|password)")
SAFE_OPTIONS = ("endpoint_url", "region_name", "anon", "requester_pays", "profile")  # may be printed

_options: dict[str, object] = {}  # --storage-option values, for every protocol (see configure)


class RemoteError(OSError):
    """A remote read or write that failed for good (after retries): one line naming the URL."""


def protocol(location) -> str:
    if isinstance(location, UPath):
        found = location.protocol
        return found if isinstance(found, str) else found[0]
    match = _URL.match(str(location)) if isinstance(location, str) else None
    return match.group(1).lower() if match else ""


def is_remote(location) -> bool:
    return protocol(location) not in LOCAL_PROTOCOLS


def configure(options: dict[str, object]) -> None:
    """The storage options every store is opened with (from `--storage-option key=value`); a value that
    parses as JSON is taken as that (`anon=true`, `config_kwargs={"retries": ...}`)."""
    _options.clear()
    for name, value in options.items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        _options[name] = value


def parse_options(pairs: list[str]) -> dict[str, str]:
    """`key=value` strings as a dict; a pair without `=` is refused naming it (but not its value)."""
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--storage-option {name.strip() or pair[:1] + '...'}: give it as key=value")
        options[name.strip()] = value
    return options


def described_options() -> str:
    """The options in use, for messages: the names, and the values of those that are no secret."""
    return ", ".join(f"{k}={_options[k]}" if k in SAFE_OPTIONS else k for k in sorted(_options)) or "none"


def filesystem(location):
    """The fsspec filesystem of a remote location, with the configured options (one per process and
    protocol: fsspec caches instances, and drops them in a forked child)."""
    import fsspec
    name = protocol(location)
    options = dict(_options)
    if name in ("s3", "s3a"):
        options = _s3_defaults(options)
    fs = fsspec.filesystem(name, **options)
    if hasattr(fs, "retries"):  # s3fs's own retries, around botocore's: a dead endpoint fails in seconds, not minutes
        fs.retries = S3FS_RETRIES
    return fs


def _s3_defaults(options: dict) -> dict:
    """Retries in botocore's standard mode (throttling and 5xx with backoff), unless the user or the
    environment chose; an endpoint only when given (else boto3's own AWS_ENDPOINT_URL applies)."""
    config = dict(options.get("config_kwargs") or {})
    if "retries" not in config and not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
        config["retries"] = {"mode": "standard", "max_attempts": 8}
    config.setdefault("connect_timeout", 10)
    config.setdefault("read_timeout", 60)
    return {**options, "config_kwargs": config}


def location(text: str) -> UPath:
    return UPath(text)


def redact(url) -> str:
    """A URL fit for a message or a record: no user:password@, no signed query parameters."""
    text = str(url)
    text = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", text)
    if "?" in text:
        base, _, query = text.partition("?")
        kept = [p for p in query.split("&") if not _SECRET_QUERY.search(p.split("=", 1)[0])]
        text = base + ("?" + "&".join(kept) if kept else "")
    return text


def _reason(e: BaseException) -> str:
    """Why a remote call failed, in a few words (botocore's text names the operation, never a secret)."""
    if isinstance(e, FileNotFoundError):
        return "no such object or bucket"
    if isinstance(e, PermissionError):
        return (f"access denied: wrong or missing credentials, or no permission ({_first_line(e)}; storage "
                f"options: {described_options()})")
    name = type(e).__name__
    if name == "NoCredentialsError":
        return ("no credentials found (environment, ~/.aws, or --storage-option key=... secret=...; storage "
                f"options: {described_options()})")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ClientPayloadError",
                "ResponseStreamingError", "IncompleteReadError"):
        return (f"the server could not be reached or dropped the connection, after retries ({name}; storage "
                f"options: {described_options()})")
    return f"{name}: {_first_line(e)}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


@contextmanager
def named(url, doing: str) -> Iterator[None]:
    """Errors of a remote call as one RemoteError naming the URL (and what was being done)."""
    try:
        yield
    except RemoteError:
        raise
    except Exception as e:  # botocore and aiohttp raise their own classes, not only OSError
        if isinstance(e, (ValueError, TypeError)) and not isinstance(e, OSError) and "http" not in type(e).__module__:
            raise
        raise RemoteError(f"{redact(url)}: cannot {doing}: {_reason(e)}") from e


# ---------------------------------------------------------------- reading


class _Reading(io.RawIOBase):
    """A remote object read as a file: errors named by URL (a read that fails for good stops the shard)."""

    def __init__(self, url, raw) -> None:
        self.url, self.raw, self.name = url, raw, str(url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        with named(self.url, "read it"):
            return self.raw.read(size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def size(self) -> int:
        return self.raw.size

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


def open_read(url, *, ranges: bool = False, encoding: str | None = None, newline: str | None = None) -> IO:
    """A remote object to read: streamed in READ_BLOCK requests, or with `ranges` one request per read
    (tar headers, parquet footers: what planning reads of a file, and no more)."""
    fs = filesystem(url)
    with named(url, "open it"):
        if ranges:  # one request per header: tarfile's read of the byte before each one is served from it
            raw = fs.open(str(url), "rb", block_size=RANGE_BLOCK, cache_type="readahead")
        else:
            raw = fs.open(str(url), "rb", block_size=READ_BLOCK, cache_type="readahead")
    reading = _Reading(url, raw)
    if encoding is None:
        return reading
    return io.TextIOWrapper(io.BufferedReader(reading), encoding=encoding, newline=newline)


def arrow_file(url):
    """A pyarrow file over a remote object, each read one ranged request (parquet footers and row groups)."""
    import pyarrow as pa
    return pa.PythonFile(open_read(url, ranges=True), mode="r")


# ---------------------------------------------------------------- writing


class Upload(io.RawIOBase):
    """A remote object being written: it appears whole when closed, or not at all. Leaving its `with` on
    an exception aborts the upload (nothing appears); so does a process killed before close (S3 drops an
    upload never completed). `exclusive`: only if no object has the name yet (where the store checks).
    Memory: one part (WRITE_BLOCK), however big the object."""

    def __init__(self, url, exclusive: bool = False) -> None:
        self.url, self.name = url, str(url)
        fs = filesystem(url)
        with named(url, "start writing it"):
            self.raw = fs.open(str(url), "xb" if exclusive else "wb", block_size=WRITE_BLOCK, autocommit=False)
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        with named(self.url, "write it"):
            written = self.raw.write(data)
        self.size += written
        return written

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        """Complete the upload: the object appears, whole (or, when that fails, is aborted)."""
        if self.closed:
            return
        try:
            with named(self.url, "finish writing it"):
                self.raw.close()
                self.raw.commit()
        except BaseException:
            self.discard()
            raise
        super().close()

    def discard(self) -> None:
        """Abort the upload: nothing appears."""
        if self.closed:
            return
        try:
            self.raw.discard()
        except Exception:
            pass  # the upload dies with its server-side timeout: the error to report is the caller's
        self.raw.closed = True  # nor does fsspec's file upload its buffer when it is collected
        super().close()

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def __del__(self) -> None:
        """Dropped unclosed (an error on the way): never completed, and no request made from the garbage
        collector, which may run at exit with fsspec's event loop gone (the store drops the upload)."""
        if not self.closed:
            self.raw.closed = True
            io.RawIOBase.close(self)


class TextUpload:
    """An Upload written as text (utf-8 unless told), with the same whole-or-nothing exit."""

    def __init__(self, upload: Upload, encoding: str) -> None:
        self.upload, self.encoding = upload, encoding

    def write(self, text: str) -> int:
        self.upload.write(text.encode(self.encoding))
        return len(text)

    def close(self) -> None:
        self.upload.close()

    def __enter__(self) -> "TextUpload":
        return self

    def __exit__(self, *exc) -> None:
        self.upload.__exit__(*exc)


def parquet_writer(url, schema, **options):
    """A pyarrow ParquetWriter onto an Upload: the object appears when the writer's `with` ends without an
    error (footer written), and never without its footer."""
    import pyarrow.parquet as pq

    class _Writer(pq.ParquetWriter):
        def __exit__(self, exc_type, *rest):
            if exc_type is None:
                self.close()
                upload.close()
            else:
                self.is_open = False  # no footer is written later (by the garbage collector) either
                upload.discard()
            return False

    upload = Upload(url)
    try:
        return _Writer(upload, schema, **options)
    except BaseException:
        upload.discard()
        raise


# ---------------------------------------------------------------- listing and the rest


def info(url) -> dict:
    with named(url, "look it up"):
        return filesystem(url).info(str(url))


def exists(url) -> bool:
    with named(url, "look it up"):
        return filesystem(url).exists(str(url))


def is_file(url) -> bool:
    """One lookup (a HEAD): fsspec's own isfile GETs an http URL."""
    with named(url, "look it up"):
        try:
            return filesystem(url).info(str(url)).get("type") == "file"
        except FileNotFoundError:
            return False


def is_dir(url) -> bool:
    with named(url, "look it up"):
        return filesystem(url).isdir(str(url))


def _as_url(fs, path: str) -> UPath:
    """A path as a listing gives it (fsspec drops the protocol) as a location like `like`."""
    return UPath(path if _URL.match(path) else fs.unstrip_protocol(path))


def list_dir(url) -> list[str]:
    fs = filesystem(url)
    with named(url, "list it"):
        return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(str(url), detail=False))


def glob(url, pattern: str) -> list[UPath]:
    fs = filesystem(url)
    with named(url, "list it"):
        if pattern == "**/*":  # everything below: one listing, no pattern matching
            found = fs.find(str(url))
        else:
            found = fs.glob(str(url).rstrip("/") + "/" + pattern)
    return sorted(_as_url(fs, p) for p in found)


def glob_pattern(pattern: str) -> list[UPath]:
    fs = filesystem(pattern)
    with named(pattern, "list what matches it"):
        found = fs.glob(pattern)
    return sorted((_as_url(fs, p) for p in found), key=str)


def remove(url, missing_ok: bool = True) -> None:
    fs = filesystem(url)
    with named(url, "remove it"):
        try:
            fs.rm_file(str(url))
        except FileNotFoundError:
            if not missing_ok:
                raise


def remove_tree(url) -> None:
    fs = filesystem(url)
    with named(url, "remove it"):
        if fs.exists(str(url)):
            fs.rm(str(url), recursive=True)


def fingerprint(url) -> dict:
    """What identifies a remote object's content: its size and ETag (a checksum the store keeps)."""
    found = info(url)
    return {"size": found.get("size"), "etag": found.get("ETag") or found.get("etag")}
