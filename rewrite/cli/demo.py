"""`rewrite demo`: the shipped demo captions rewritten end to end, with what, and the first few shown."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import meta as meta_lib
from .. import defaults, stop
from ..stop import StopRequested, EXIT_CODE as STOPPED
from .shared import _number, _share, app, reported


@app.command()
def demo(
    out: Path = typer.Option(Path("rewrite-demo"), "--out", help="Where the demo writes: OUT/work, OUT/dataset and OUT/report."),
    source: str = typer.Option("chatgpt", help="The meta set whose pairs are the in-context examples."),
    template: Optional[str] = typer.Option(None, help="Prompt template name or .toml path (default: the demo's own, named on its `used:` line)."),
    min_faithfulness: Optional[float] = typer.Option(None, help="The faithfulness gate, as `rewrite run --min-faithfulness` (default: the demo's own; 0: none)."),
    engine: str = typer.Option(defaults.ENGINE),
    model: Optional[str] = typer.Option(None),
):
    """Rewrite the shipped demo captions end to end, say with what, and show the first few."""
    from ..launch.demo import run_demo

    chosen = {k: v for k, v in dict(template=template, min_faithfulness=min_faithfulness).items() if v is not None}
    try:
        with reported(), stop.handling():
            summary = run_demo(out, source=source, engine_name=engine, model=model, **chosen)
    except StopRequested as e:
        typer.echo(f"{e}: the chunks rewritten so far are kept; run the same command again to go on", err=True)
        raise typer.Exit(STOPPED)
    used = summary["used"]
    gate = (f"faithfulness gate {used['min_faithfulness']} (a rewrite scoring below it is tried again, up to "
            f"{used['max_attempts']} attempts)" if used.get("min_faithfulness") is not None else "no faithfulness gate")
    typer.echo(f"used: {Path(used['model']).name} ({used['engine']}), {used['template']} template, "
               f"{used['num_examples']} examples per caption from the {used['source']} set, {gate}")
    col = f"caption_{meta_lib.source_name(source)}"
    for row in summary["examples"]:
        shown = row[col] if row[col] is not None else "(none: every attempt was rejected)"
        typer.echo(f"  {row['caption']}\n    -> {shown}")
    typer.echo(f"\ndataset: {Path(summary['out']).resolve()}  ({summary['rows']} rows; "
               f"with `datasets` installed, load it with datasets.load_dataset({str(Path(summary['out']).resolve())!r}))")
    made = summary["report"]
    figures = made["summary"]["sets"][meta_lib.source_name(source)]
    typer.echo(f"quality report: {made['paths']['html'].resolve()}  (valid {_share(figures['valid_rate'])}, "
               f"faithfulness to the captions {_number(figures['faithfulness']['mean'])}; see `rewrite report`)")
