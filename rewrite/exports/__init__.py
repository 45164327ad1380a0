"""Export formats, one module each, behind the interface in base.py. Adding a format: write its module
and add an instance to FORMATS."""
from __future__ import annotations

from . import tables
from .base import ExportError, ExportFormat, ExportJob, ExportOptions
from .hf import HFExport
from .laclip import LaclipExport
from .openclip_csv import OpenClipCsvExport
from .wds import WebdatasetExport

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (HFExport(), WebdatasetExport(), OpenClipCsvExport(), LaclipExport())}
DEFAULT = "hf"


def named(name: str, option: str = "--format") -> ExportFormat:
    if name not in FORMATS:
        raise ExportError(f"{option} {name!r}: choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def check_options(export_format: ExportFormat, options: ExportOptions) -> None:
    """Refuse, before anything is read or written, an option value no reader could take and an option
    the format does not use (it would be ignored without a word)."""
    given = {name for name, value in vars(options).items() if value != getattr(ExportOptions(), name)}
    unused = sorted(given - set(export_format.options))
    if unused:
        used = ", ".join(f"--{o.replace('_', '-')}" for o in export_format.options) or "none"
        raise ExportError(f"--{unused[0].replace('_', '-')} does not apply to --format {export_format.name} "
                          f"(its options: {used})")
    if options.image_column is not None and options.extract_images is not None:
        raise ExportError("give --image-column (paths the input has) or --extract-images DIR (images written out), "
                          "not both")
    sep = options.separator
    if len(sep) != 1 or sep in tables.UNUSABLE_SEPARATORS:
        raise ExportError(f"--separator must be one character other than a quote or a line break (open_clip reads "
                          f"the file with pandas' --csv-separator), got {sep!r}")


__all__ = ["DEFAULT", "ExportError", "ExportFormat", "ExportJob", "ExportOptions", "FORMATS", "check_options", "named"]
