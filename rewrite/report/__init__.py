"""A quality report over a work dir's rewrites, per meta set: how many are valid and why the others were
rejected (counted from every done shard's stats), how long, faithful and diverse they are, and the best
and worst of them (from every row, or a seeded sample of whole shards, with each figure's margin of
error); or over an export's rewrites (`collect_export`), with the figures only a run records (shard
states, requests, retries, reject reasons, the set's example targets) left null or empty.

Its modules, one concern each: tallies (the running figures, in bounded memory), from_work (`collect`,
over a work dir's done shards), from_export (`collect_export`, over an export's files), render (the plots
and the HTML page), writing (`report` and `write`: the report folder), errors (ReportError). The names
other code uses are re-exported here.
"""
from __future__ import annotations

from .. import __version__
from . import from_export, from_work, render, tallies, writing
from .errors import ReportError
from .tallies import Distinct, Scores
from .from_work import collect
from .from_export import RUN_ONLY, collect_export
from .writing import MARKER, report

__all__ = ["__version__", "ReportError", "Distinct", "Scores", "collect", "RUN_ONLY", "collect_export", "MARKER",
           "report", "from_export", "from_work", "render", "tallies", "writing"]
