"""Webdataset tar I/O (img2dataset / LAION / DataComp shards), with the stdlib only.

A sample is the run of adjacent members sharing a key, grouped exactly as webdataset groups them, so
that what we read and write is what open_clip's loader sees. Reading touches only the text members;
writing (copy_with_fields) copies the source's bytes as they are and builds only the members it
changes. Every format problem raises `TarError` naming the tar file and the member.

The package's face: the names other modules use, re-exported from its modules, one concern each:
`braces.py` (shard patterns), `keys.py` (member names, sample keys, errors), `walk.py` (the one member
walker), `grouping.py` (the one sample grouper), `samples.py` (iter_samples, count_samples, stats_count, captions_beside,
text decoding), `output.py` and `copying.py` (copy_with_fields: its output, the copy), `images.py`
(sample_images). Reading, counting, copying and image extraction all walk and group the same way.
"""
from __future__ import annotations

from .braces import expand_braces
from .copying import copy_with_fields
from .images import sample_images
from .keys import TEXT_EXTS, FieldExists, TarError, check_key, name_ext, split_member
from .output import COPY_BUFFER, WRITEBACK_STEP
from .samples import Sample, captions_beside, count_samples, iter_samples, stats_count
from .walk import BLOCK, WINDOW, ByteCounter, Headers

__all__ = [
    "BLOCK", "COPY_BUFFER", "TEXT_EXTS", "WINDOW", "WRITEBACK_STEP",
    "ByteCounter", "FieldExists", "Headers", "Sample", "TarError",
    "check_key", "copy_with_fields", "count_samples", "expand_braces", "iter_samples", "name_ext",
    "captions_beside", "sample_images", "split_member", "stats_count",
]
