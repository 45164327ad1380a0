"""What every `rewrite` command shares: the Typer app, the exit codes, one line per error (`fail`,
`reported`), the helpers several commands print with, and the entry point `main`."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .. import remote

from ..exports import publish
from .. import exports
from .. import meta as meta_lib
from ..inputs import plan
from ..launch import slurm as slurm_lib
from ..rewriting.clip_tokens import ClipTokenizerError
from ..engines import EngineError
from ..engines.model import ModelError
from ..rewriting.prompt import TemplateError
from ..stop import EXIT_CODE as STOPPED
from ..run.config import RunError
from ..workdir.record import RecordError


app = typer.Typer(help="Rewrite image captions with an LLM, LaCLIP-style, for CLIP training.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


USER_ERRORS = (plan.PlanError, meta_lib.MetaSetError, RunError, RecordError, exports.ExportError, publish.PublishError,
               EngineError, ModelError, TemplateError, ClipTokenizerError, slurm_lib.SlurmError,
               ValueError)
EXIT_BAD_INPUT = 2  # bad input or options: the message names the file, row or option
EXIT_IO = 1  # a file could not be read or written (read-only or full disk, permissions): the message names it
EXIT_INTERRUPTED = 130
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the engine's server could not serve requests; their rows wait for a rerun


StorageOptions = Annotated[Optional[List[str]], typer.Option(
    "--storage-option", help="key=value for the remote store of URL inputs and exports (s3fs, gcsfs, ...), e.g. "
    "endpoint_url=http://host:9000, anon=true, profile=NAME (repeatable; a JSON value is parsed). Credentials are "
    "best left to the environment or ~/.aws: values given here are never written or printed.")]


def use_storage_options(pairs: list[str] | None) -> None:
    """Open remote stores with these options from now on (a bad pair is refused, naming its key)."""
    remote.configure(remote.parse_options(list(pairs or [])))


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def describe_os_error(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {e.strerror or e}" if where else str(e)


@contextmanager
def reported():
    """One line and a documented exit code for every error a user can cause or meet, never a traceback.
    Everything committed before it stays (commits are atomic)."""
    try:
        yield
    except USER_ERRORS as e:
        fail(str(e))
    except OSError as e:
        fail(describe_os_error(e), EXIT_IO)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


def report_export(summary: dict, out: Path) -> None:
    """What the export did; exits 75 when a whole export (all shards) could not be published."""
    if summary.get("up_to_date"):
        typer.echo(f"{out} holds this export already ({summary['rows']} rows in {len(summary['files'])} files)")
    elif summary["published"]:
        typer.echo(f"wrote {summary['rows']} rows in {len(summary['files'])} files to {out} "
                   f"(columns: {', '.join(summary.get('columns', []))})")
        if summary.get("dropped_rows"):
            typer.echo(f"left out {summary['dropped_rows']} rows without a caption or an image path", err=True)
        if summary.get("note"):
            typer.echo(f"note: {summary['note']}", err=True)
    else:
        waiting = summary.get("unwritten") and f"shards {summary['unwritten']} are still to export" or summary.get("waiting")
        typer.echo(f"exported shards {summary['written'] or 'none (written already)'} into {out}; not published yet: "
                   f"{waiting}")
    for src, spec in summary["missing"].items():
        typer.echo(f"warning: {src} has no rewrites for shards {spec} (null in the export)", err=True)
    for problem in summary["damaged"]:
        typer.echo(f"warning: damaged, exported as null: {problem}", err=True)
    if not summary["published"] and summary.get("whole"):
        typer.echo(f"error: {out} is not published: run the same command again to finish it", err=True)
        raise typer.Exit(STOPPED)


def _share(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


# The command-line layer's usage error (typer vendors click in newer releases, so it is found by name).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """The `rewrite` command. A usage error (an unknown option, a value of the wrong type) is one line and
    exit 2, like every other bad option, not click's usage box."""
    try:
        code = typer.main.get_command(app).main(prog_name="rewrite", standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except _ClickException as e:
        message = " ".join(e.format_message().split())
        if message:  # (no arguments at all: the help was shown)
            typer.echo(f"error: {message}", err=True)
        code = e.exit_code
    sys.exit(code or 0)
