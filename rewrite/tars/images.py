"""Image extraction: each sample's first image member, read in place from the tar."""
from __future__ import annotations

from pathlib import Path
from typing import IO, Callable, Iterator

from .keys import name_ext
from .. import storage
from .grouping import _groups
from .walk import Headers, _open_tar


def sample_images(path: str | Path, exts: tuple[str, ...],
                  check_headers: Callable[[str], None] | None = None) -> Iterator[tuple[str, str, IO[bytes]] | None]:
    """Each sample of a shard in the order the reader gives them (one per row): (where it is, extension in
    lower case, a reader of its data) of its first member with an extension in `exts`, or None when it
    has none. A reader is valid until the next sample is asked for. After the last sample, the digest
    of the member headers walked goes to `check_headers` (see Headers), which refuses a changed tar."""
    headers = Headers()
    with storage.open_file(path, "rb") as fileobj:
        tar = _open_tar(path, fileobj)
        for _, members, _ in _groups(tar, path, read_exts=(), headers=headers):
            image = next((m for m in members if name_ext(m.name).lower() in exts), None)
            if image is None:
                yield None
                continue
            yield f"{path}: member {image.name!r}", name_ext(image.name).lower(), tar.extractfile(image.info)
    if check_headers is not None:
        check_headers(headers.hexdigest())
