"""Export formats, one module each, behind the interface in base.py. Adding a format: write its module
and add an instance to FORMATS."""
from __future__ import annotations

from . import base, tables
from .base import ExportError, ExportFormat, ExportJob, ExportOptions
from .hf import HFExport
from .laclip import LaclipExport
from .openclip_csv import OpenClipCsvExport
from .wds import WebdatasetExport

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (HFExport(), WebdatasetExport(), OpenClipCsvExport(), LaclipExport())}
DEFAULT = "hf"


def named(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ExportError(f"--format {name!r}: choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


__all__ = ["DEFAULT", "ExportError", "ExportFormat", "ExportJob", "ExportOptions", "FORMATS", "named"]
