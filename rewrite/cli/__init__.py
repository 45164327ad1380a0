"""The `rewrite` command: a thin shell over the library (parse options, call one function, print), one
module per command group. Importing them registers their commands on `app`, in the order `rewrite --help`
lists them."""
from .shared import app, main
from . import run, export, report, demo, meta, slurm  # registration order = help order

__all__ = ["app", "main", "run", "export", "report", "demo", "meta", "slurm"]
