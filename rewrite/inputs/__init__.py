"""Input formats, one module each, behind the interface in base.py. Adding a format: write its module
and add an instance to FORMATS."""
from __future__ import annotations

from pathlib import Path

from ..workdir.manifest import Captions, Planned, PlanError
from .base import InputFormat
from .delimited import DelimitedInput
from .parquet import ParquetInput
from .text import TextInput
from .wds import WebdatasetInput

FORMATS: tuple[InputFormat, ...] = (
    ParquetInput(),
    DelimitedInput("csv", ".csv", ","),
    DelimitedInput("tsv", ".tsv", "\t"),
    TextInput(),
    WebdatasetInput(),
)
SUFFIXES = tuple(s for f in FORMATS for s in f.suffixes)


def for_path(path: Path) -> InputFormat | None:
    """The format that reads `path`, by its suffix; None when no format does."""
    suffix = path.suffix.lower()
    return next((f for f in FORMATS if suffix in f.suffixes), None)


def named(name: str) -> InputFormat:
    """The format recorded in a plan under `name`."""
    for f in FORMATS:
        if f.name == name:
            return f
    raise PlanError(f"unknown input format {name!r} in the plan: plan again with this version of rewrite")


__all__ = ["Captions", "FORMATS", "InputFormat", "Planned", "PlanError", "SUFFIXES", "for_path", "named"]
