"""The report's summary rendered: its plots as PNGs (matplotlib's Agg, never a window) and one
self-contained HTML page, the plots embedded in it. matplotlib is imported when a plot is drawn, not with
the package: the CLI imports the report's defaults at every start.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from .. import storage
from ..workdir import atomic
from .tallies import BINS, EXAMPLES, THRESHOLDS

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    """A figure of this size in inches (matplotlib loaded here, on the first plot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


# ---------------------------------------------------------------- plots


def faithfulness_plot(name: str, figures: dict) -> Figure:
    """Where a set's rewrites fall between a paraphrase (1) and another picture (0); thresholds dotted."""
    fig = _figure(6, 3.2)
    ax = fig.add_subplot()
    ax.bar([i / BINS for i in range(BINS)], figures["faithfulness"]["histogram"], width=1 / BINS, align="edge",
           edgecolor="white")
    for t in THRESHOLDS:
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), xlabel="faithfulness (content-word F1 with the caption)", ylabel="rewrites",
           title=f"{name}: faithfulness")
    return fig


def _shares(histogram: list) -> tuple[list[int], list[float]]:
    """Every length from the shortest to the longest, and the share of each."""
    counts = dict(histogram)
    total = sum(counts.values())
    lengths = list(range(min(counts), max(counts) + 1))
    return lengths, [counts.get(n, 0) / total for n in lengths]


def length_plot(name: str, figures: dict) -> Figure:
    """Rewrites against their captions (and the set's example targets): LaCLIP's rewrites run about twice as long."""
    fig = _figure(6, 3.2)
    ax = fig.add_subplot()
    for label, dist in figures["length"]["words"].items():
        if dist and dist["n"]:
            ax.step(*_shares(dist["histogram"]), where="mid", label=f"{label} (mean {dist['mean']:.1f})")
    ax.set(xlabel="words", ylabel="share", title=f"{name}: length in words")
    ax.legend()
    return fig


def reasons_plot(sets: dict) -> Figure:
    """Rejected attempts by reason and set: what the retries were spent on."""
    from matplotlib.ticker import MaxNLocator

    reasons = sorted({r for figures in sets.values() for r in figures["rejected"]})
    fig = _figure(7, 1 + 0.45 * max(1, len(reasons)) * max(1, len(sets)) ** 0.5)
    ax = fig.add_subplot()
    if not reasons:
        ax.text(0.5, 0.5, "no attempt was rejected", ha="center", va="center")
        ax.set_axis_off()
        return fig
    height = 0.8 / len(sets)
    for j, (name, figures) in enumerate(sets.items()):
        ax.barh([i + j * height for i in range(len(reasons))], [figures["rejected"].get(r, 0) for r in reasons],
                height=height, label=name)
    ax.set_yticks([i + height * (len(sets) - 1) / 2 for i in range(len(reasons))], reasons)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="rejected attempts", title="rejected attempts by reason")
    ax.legend()
    return fig


def _save(fig: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg: renders to a file, never to a window
    with atomic.atomic_path(path) as tmp, storage.open_file(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    return path


def plots(summary: dict, out: Path) -> dict[str, Path]:
    """Every plot as a PNG in `out`, by name."""
    paths = {}
    if summary["source"] == "work":  # an export records no rejected attempt
        paths["reject_reasons"] = _save(reasons_plot(summary["sets"]), out / "reject_reasons.png")
    for name, figures in summary["sets"].items():
        if figures["faithfulness"]["n"]:
            paths[f"faithfulness_{name}"] = _save(faithfulness_plot(name, figures), out / f"faithfulness_{name}.png")
        if figures["length"]["words"]["rewrite"]["n"]:
            paths[f"length_words_{name}"] = _save(length_plot(name, figures), out / f"length_words_{name}.png")
    return paths


# ---------------------------------------------------------------- html


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flatten(figures: dict, prefix: str = "") -> Iterable[tuple[str, object]]:
    """(dotted key, value) of every figure, histograms and examples left out (they are drawn or listed)."""
    for key, value in figures.items():
        if key in ("histogram", "examples"):
            continue
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _cells(tag: str, row: Sequence) -> str:
    return "".join(f"<{tag}>{html.escape(_format(v))}</{tag}>" for v in row)


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    return ("<table><tr>" + _cells("th", header) + "</tr>"
            + "".join(f"<tr>{_cells('td', row)}</tr>" for row in rows) + "</table>")


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(storage.read_bytes(path)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


OVERVIEW = (("rows", "rows"), ("ok", "ok"), ("failed", "failed"), ("skipped", "skipped"),
            ("valid rate", "valid_rate"), ("retries", "retries"), ("rows read", "sample.rows"),
            ("words (rewrite)", "length.words.rewrite.mean"), ("words (original)", "length.words.original.mean"),
            ("faithfulness", "faithfulness.mean"), ("± (95%)", "sample.margin_95.faithfulness.mean"),
            ("distinct-1", "diversity.distinct_1"), ("distinct-2", "diversity.distinct_2"))
PER_ROW = "lengths, scores, diversity, best and worst rows"  # the figures a sample of rows gives

STYLE = """body{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}img{max-width:100%;margin:.5em 1em .5em 0}"""


def sample_note(sample: dict, seed: int | None) -> str:
    """Where a set's per-row figures come from, and how far they can be off."""
    if sample["exact"]:
        return f"Per-row figures ({PER_ROW}) from every row counted ({sample['rows']}): exact."
    drawn = (f"Per-row figures ({PER_ROW}) from {sample['rows']} of {sample['of_rows']} rows: {sample['shards']} of "
             f"{sample['of_shards']} done shards, each read whole, drawn at random (seed {seed})")
    if sample["shards"] < 2:
        return f"{drawn}; from one shard no margin of error can be estimated."
    return (f"{drawn}, a cluster sample: each mean and share is given ± its 95% margin of error (sample.margin_95: "
            "the ratio estimator's over the sampled shards, with the finite-population correction). Medians, p90s "
            "and distinct-n are those of the rows read. Counts (rows, ok, failed, skipped, reasons, requests, "
            "retries, tokens) are exact, from every done shard's stats.")


def _set_section(name: str, figures: dict, paths: dict[str, Path], seed: int | None) -> str:
    parts = [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(sample_note(figures['sample'], seed))}</p>"]
    note = figures["meta_set"]["note"]
    if note:
        parts.append(f"<p>Example targets: {html.escape(note)}.</p>")
    for key in (f"faithfulness_{name}", f"length_words_{name}"):
        if key in paths:
            parts.append(_image(paths[key], key))
    parts.append(_table(("figure", "value"), flatten(figures)))
    for which in ("best", "worst"):
        parts.append(f"<h3>{which} {EXAMPLES} by faithfulness</h3>")
        parts.append(_table(("faithfulness", "caption", "rewrite", "shard", "key"),
                            [(e["faithfulness"], e["caption"], e["rewrite"], e["shard"], e["key"])
                             for e in figures["examples"][which]]))
    return "".join(parts)


def render_html(summary: dict, paths: dict[str, Path]) -> str:
    """One page, its plots embedded (data URIs): it can be mailed or archived alone."""
    figures = {name: dict(flatten(f)) for name, f in summary["sets"].items()}
    across, rows = summary["across_sets"], summary["plan"]["rows"]
    made = f"generated {html.escape(summary['generated_at'])} by rewrite {html.escape(summary['version'])}"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rewrite report</title><style>{STYLE}</style>"
        "</head><body><h1>rewrite report</h1>",
        f"<p>Work dir {html.escape(summary['work'])}, {made}: {rows} rows in {summary['plan']['shards']} shards.</p>"
        if summary["source"] == "work" else
        f"<p>Export {html.escape(summary['work'])} ({html.escape(summary['format'])} format), {made}: {rows} rows.</p>"
        f"<p>{html.escape(summary['note'])}.</p>",
        _table(["set"] + [label for label, _ in OVERVIEW],
               [[name] + [figures[name].get(key) for _, key in OVERVIEW] for name in figures]),
    ]
    if "reject_reasons" in paths:
        parts.append(_image(paths["reject_reasons"], "reject reasons"))
    if len(across["sets"]) > 1:
        margin = "" if across["margin_95"] is None else f" ± {_format(across['margin_95'])}"
        parts.insert(3, f"<p>Rows with identical rewrites in two or more sets: {_format(across['identical_share'])}"
                     f"{margin} ({across['rows_identical']} of the {across['rows_compared']} rows with an ok rewrite "
                     f"in two or more, in {across['shards']} of the {across['of_shards']} shards two or more sets "
                     "have).</p>")
    parts += [_set_section(name, f, paths, summary["sampling"]["seed"]) for name, f in summary["sets"].items()]
    return "".join(parts) + "</body></html>\n"
