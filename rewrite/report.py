"""A quality report over a work dir's rewrites, per meta set: how many are valid and why the others were
rejected, how long, faithful and diverse they are, and the best and worst of them.

`collect` reads the done shards one at a time (the inputs' key and caption columns, the sidecar's
rewrite, status and reason columns) and keeps running sums and bounded samples only, so its memory is
that of one shard however large the work dir:
- lengths (words, CLIP tokens) are integers taking few values: their distributions are kept whole as
  counts, so their mean, median and p90 are exact;
- scores in [0, 1] (faithfulness, recall, novelty, word overlap) keep an exact sum, exact shares below
  THRESHOLDS and an exact BINS-bin histogram; their median and p90 come from a reservoir of RESERVOIR
  values (a uniform sample drawn with a fixed seed, so a report is reproducible), exact up to that many;
- distinct n-grams are counted with a K-minimum-values sketch of their 64-bit hashes: exact up to SKETCH
  distinct n-grams, within about 1/sqrt(SKETCH) beyond.
Quantiles interpolate linearly between order statistics (numpy's default). Words are whitespace-separated
and lower-cased, as meta.word_overlap counts them; CLIP tokens include the start and end tokens
(clip_tokens.count). With several rewrites per row each rewrite counts once (ok, failed and skipped too),
paired with its row's caption.

`write` turns the summary into report.json, PNG plots and one self-contained report.html.
"""
from __future__ import annotations

import base64
import hashlib
import heapq
import html
import math
import random
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from . import __version__, atomic, clip_tokens, done, faithful, layout, meta, plan, runner, settings
from .inputs import PlanError

RESERVOIR = 100_000  # scores kept per figure for its median and p90
SKETCH = 65_536  # smallest n-gram hashes kept for a distinct count
SEED = 0  # the reservoirs' sampling seed
THRESHOLDS = (0.2, 0.3, 0.5)  # shares of scores below these are reported
BINS = 20  # histogram bins over [0, 1]
EXAMPLES = 5  # best and worst rows shown per set
SHOWN_CHARS = 500  # an example's caption or rewrite is cut to this many characters
STATES = (done.DONE, done.PARTIAL, done.MISSING, done.DAMAGED)


class ReportError(ValueError):
    pass


# ---------------------------------------------------------------- running figures


def quantile(counts: Counter, q: float) -> float | None:
    """The q-quantile of the values counted in `counts`, interpolated between order statistics."""
    n = sum(counts.values())
    if not n:
        return None
    position = (n - 1) * q
    low, high = _nth(counts, math.floor(position)), _nth(counts, math.ceil(position))
    return low + (high - low) * (position - math.floor(position))


def _nth(counts: Counter, k: int) -> float:
    """The k-th smallest value (from 0) of those counted."""
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if k < seen:
            return value
    raise IndexError(k)


class Lengths:
    """An integer distribution kept whole: lengths take few values, so its figures are exact."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def add(self, value: int) -> None:
        self.counts[value] += 1

    def extend(self, values: Iterable[int]) -> "Lengths":
        self.counts.update(values)
        return self

    def summary(self) -> dict:
        n = sum(self.counts.values())
        return {"n": n, "mean": sum(v * c for v, c in self.counts.items()) / n if n else None,
                "median": quantile(self.counts, 0.5), "p90": quantile(self.counts, 0.9),
                "histogram": sorted(self.counts.items())}


class Scores:
    """Scores in [0, 1]: exact mean, shares below THRESHOLDS and histogram; median and p90 from a
    seeded reservoir (exact up to RESERVOIR scores)."""

    def __init__(self) -> None:
        self.n, self.total = 0, 0.0
        self.below: Counter = Counter()
        self.bins = [0] * BINS
        self.sample: list[float] = []
        self.rng = random.Random(SEED)

    def add(self, score: float) -> None:
        self.n += 1
        self.total += score
        self.below.update(t for t in THRESHOLDS if score < t)
        self.bins[min(int(score * BINS), BINS - 1)] += 1
        if len(self.sample) < RESERVOIR:
            self.sample.append(score)
        elif (j := self.rng.randrange(self.n)) < RESERVOIR:
            self.sample[j] = score

    def summary(self) -> dict:
        sample = Counter(self.sample)
        return {"n": self.n, "mean": self.total / self.n if self.n else None, "median": quantile(sample, 0.5),
                "p90": quantile(sample, 0.9),
                "below": {str(t): self.below[t] / self.n if self.n else None for t in THRESHOLDS},
                "histogram": list(self.bins)}


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Distinct:
    """Distinct n-grams over all n-grams of the rewrites, the distinct ones counted with a K-minimum-values
    sketch (bounded memory; exact up to SKETCH of them)."""

    def __init__(self, n: int) -> None:
        self.n, self.total = n, 0
        self.heap: list[int] = []  # the SKETCH smallest hashes, negated (a max-heap)
        self.kept: set[int] = set()

    def add(self, texts: Iterable[Sequence[str]]) -> None:
        """A shard's rewrites (as word lists); its distinct n-grams are hashed once each."""
        grams = set()
        for words in texts:
            found = list(zip(*(words[i:] for i in range(self.n))))
            self.total += len(found)
            grams.update(found)
        for gram in grams:
            self._keep(_hash64(" ".join(gram)))

    def _keep(self, h: int) -> None:
        if h in self.kept:
            return
        if len(self.heap) < SKETCH:
            heapq.heappush(self.heap, -h)
            self.kept.add(h)
        elif h < -self.heap[0]:
            self.kept.discard(-heapq.heapreplace(self.heap, -h))
            self.kept.add(h)

    def distinct(self) -> float:
        if len(self.heap) < SKETCH:
            return len(self.heap)
        return (SKETCH - 1) * 2 ** 64 / (-self.heap[0] + 1)

    def ratio(self) -> float | None:
        return min(1.0, self.distinct() / self.total) if self.total else None


class Extremes:
    """The EXAMPLES highest and lowest scoring rows; among equal scores, the first seen."""

    def __init__(self) -> None:
        self.best: list = []
        self.worst: list = []
        self.seen = 0

    def add(self, score: float, example: dict) -> None:
        self.seen += 1
        for heap, entry in ((self.best, (score, -self.seen, example)), (self.worst, (-score, -self.seen, example))):
            if len(heap) < EXAMPLES:
                heapq.heappush(heap, entry)
            else:
                heapq.heappushpop(heap, entry)

    def summary(self) -> dict:
        return {"best": [{**e, "faithfulness": s} for s, _, e in sorted(self.best, reverse=True)],
                "worst": [{**e, "faithfulness": -s} for s, _, e in sorted(self.worst, reverse=True)]}


class Agreement:
    """Rows whose rewrites are identical in two or more sets (rows with an ok rewrite in at least two)."""

    def __init__(self) -> None:
        self.compared = self.identical = 0

    def add(self, ok_texts: dict[str, list[set[str]]]) -> None:
        """One shard: each set's ok rewrites of each row (only sets that have the shard done)."""
        for row in zip(*ok_texts.values()):
            present = [texts for texts in row if texts]
            if len(present) < 2:
                continue
            self.compared += 1
            self.identical += any(n > 1 for n in Counter(t for texts in present for t in texts).values())

    def summary(self, names: list[str]) -> dict:
        return {"sets": names, "rows_compared": self.compared, "rows_identical": self.identical,
                "identical_share": self.identical / self.compared if self.compared else None}


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


class SetTally:
    """One meta set's running figures, fed a done shard at a time."""

    def __init__(self, name: str, num_rewrites: int) -> None:
        self.name, self.n = name, num_rewrites
        self.shards: Counter = Counter()  # shard state -> shards
        self.rows = self.requests = self.retries = 0
        self.statuses: Counter = Counter()  # ok / failed / skipped rewrites
        self.rejected: Counter = Counter()
        self.failed_reasons: Counter = Counter()
        self.words = {"rewrite": Lengths(), "original": Lengths()}
        self.tokens = {"rewrite": Lengths(), "original": Lengths()}
        self.scores = {name: Scores() for name in ("faithfulness", "recall", "novelty", "word_overlap")}
        self.unscored = 0  # ok rewrites faithfulness cannot judge (no content word on a side)
        self.distinct = {1: Distinct(1), 2: Distinct(2)}
        self.examples = Extremes()
        self.meta_file: str | None = None  # the set's file as the run recorded it

    def add_stats(self, stats: dict) -> None:
        """A done shard's stats. Every rejected attempt is either retried or was a failed rewrite's last
        one, so retries = rejected attempts - failed rewrites (each failed (caption, index) once)."""
        self.requests += stats["requests"]
        self.rejected.update(stats["rejected"])
        self.retries += sum(stats["rejected"].values()) - sum(stats["failed_reasons"].values())
        self.meta_file = self.meta_file or stats.get("settings", {}).get("meta_file")

    def add_rows(self, shard: int, keys: list[str], captions: list[str | None], sidecar: list[tuple]) -> list[set[str]]:
        """A done shard's rows; returns each row's ok rewrites (for Agreement)."""
        self.rows += len(keys)
        ok_texts, words = [], []
        for row, (key, caption) in enumerate(zip(keys, captions)):
            texts: set[str] = set()
            original = None
            for rewrites, statuses, reasons in sidecar:
                self.statuses[statuses[row]] += 1
                if statuses[row] == layout.STATUS_FAILED:
                    self.failed_reasons[reasons[row]] += 1
                if statuses[row] != layout.STATUS_OK:
                    continue
                original = original or (len(caption.split()), clip_tokens.count(caption))
                self._add_rewrite(shard, key, caption, rewrites[row], original)
                texts.add(rewrites[row])
                words.append(rewrites[row].lower().split())
            ok_texts.append(texts)
        for distinct in self.distinct.values():
            distinct.add(words)
        return ok_texts

    def _add_rewrite(self, shard: int, key: str, caption: str, rewrite: str, original: tuple[int, int]) -> None:
        self.words["rewrite"].add(len(rewrite.split()))
        self.words["original"].add(original[0])
        self.tokens["rewrite"].add(clip_tokens.count(rewrite))
        self.tokens["original"].add(original[1])
        self.scores["word_overlap"].add(meta.word_overlap(caption, rewrite))
        for name, measure in (("recall", faithful.recall), ("novelty", faithful.novelty)):
            value = measure(caption, rewrite)
            if value is not None:
                self.scores[name].add(value)
        score = faithful.faithfulness(caption, rewrite)
        if score is None:
            self.unscored += 1
            return
        self.scores["faithfulness"].add(score)
        self.examples.add(score, {"shard": shard, "key": key, "caption": _clip(caption), "rewrite": _clip(rewrite)})

    def summary(self, targets: list[str] | None, meta_set: dict) -> dict:
        ok, failed = self.statuses[layout.STATUS_OK], self.statuses[layout.STATUS_FAILED]
        scores = {name: s.summary() for name, s in self.scores.items()}
        return {
            "shards": {state: self.shards[state] for state in STATES},
            "rows": self.rows,
            "rewrites_per_row": self.n,
            "ok": ok,
            "failed": failed,
            "skipped": self.statuses[layout.STATUS_SKIPPED],
            "valid_rate": ok / (ok + failed) if ok + failed else None,
            "requests": self.requests,
            "first_attempts": self.requests - self.retries,
            "retries": self.retries,
            "rejected": dict(sorted(self.rejected.items())),
            "failed_reasons": dict(sorted(self.failed_reasons.items())),
            "length": {
                "words": {**{k: v.summary() for k, v in self.words.items()},
                          "targets": Lengths().extend(len(t.split()) for t in targets).summary() if targets else None},
                "clip_tokens": {k: v.summary() for k, v in self.tokens.items()},
            },
            **scores,
            "faithfulness": {**scores["faithfulness"], "unscored": self.unscored},
            "diversity": {"distinct_1": self.distinct[1].ratio(), "distinct_2": self.distinct[2].ratio(),
                          "unigrams": self.distinct[1].total, "bigrams": self.distinct[2].total},
            "meta_set": meta_set,
            "examples": self.examples.summary(),
        }


# ---------------------------------------------------------------- reading the work dir


def _manifest(w: layout.Work) -> plan.Manifest:
    try:
        return plan.load_manifest(w)
    except PlanError as e:
        raise ReportError(str(e)) from None


def set_names(w: layout.Work, sources: Sequence[str] | None) -> list[str]:
    """The sets asked for (a name, an alias or a custom set's file) as the work dir names them; None: all."""
    present = w.sources_present()
    if not present:
        raise ReportError(f"{w.root} has no rewrites yet: run `rewrite run` first")
    if not sources:
        return present
    names = []
    for source in sources:
        name = source if source in present else _name(source)
        if name not in present:
            raise ReportError(f"{w.root} has no rewrites of {source} (sets run there: {', '.join(present)})")
        names.append(name)
    return list(dict.fromkeys(names))


def _name(source: str) -> str:
    try:
        return meta.source_name(source)
    except meta.MetaSetError:
        return source


def _settings(w: layout.Work, name: str) -> dict:
    try:
        return runner.recorded_settings(w, name)
    except runner.RunError as e:
        raise ReportError(str(e)) from None


def example_targets(name: str, meta_file: str | None, digest: str) -> tuple[list[str] | None, dict]:
    """The example targets of the set the run used, found by its recorded digest: the file the run read
    (a custom set, --meta-dir), else the shipped set of that name; None, and why, when neither is it
    any more (moved, deleted or edited since the run)."""
    for candidate in [c for c in (meta_file, name if name in settings.SOURCES else None) if c]:
        try:
            found = meta.load(candidate)
        except (meta.MetaSetError, OSError):
            continue
        if found.digest() == digest:
            targets = [t for _, t in found.pairs] or [c for g in found.groups for c in g]
            return targets, {"digest": digest, "file": str(found.path), "note": None}
    places = [f"its file {meta_file}"] if meta_file else []
    places += [f"the shipped set {name}"] if name in settings.SOURCES else []
    where = f"not found as {' or '.join(places)} (missing, or changed since the run)" if places else "no file recorded"
    return None, {"digest": digest, "file": None, "note": f"the set the run used (sha256 {digest[:12]}): {where}"}


def _captions(manifest: plan.Manifest, shard: int) -> tuple[list[str], list[str | None]]:
    """A shard's keys and captions (only those columns are read; never an image)."""
    table = pa.concat_tables(plan.iter_shard(manifest, shard, manifest.shard_rows(shard)))
    return table.column(layout.KEY).to_pylist(), table.column(layout.CAPTION).to_pylist()


def _sidecar(path: Path, num_rewrites: int, keys: list[str]) -> list[tuple[list, list, list]]:
    """(rewrites, statuses, reasons) per rewrite index of a done shard's file, checked to be the shard's rows."""
    groups = [[layout.rewrite_column(i, num_rewrites), layout.suffixed(layout.STATUS, i, num_rewrites),
               layout.suffixed(layout.REASON, i, num_rewrites)] for i in range(num_rewrites)]
    table = pq.read_table(path, columns=[layout.KEY] + [c for group in groups for c in group])
    if table.column(layout.KEY).to_pylist() != keys:
        raise ReportError(f"{path} does not hold the rows of its shard in the plan (keys differ)")
    return [tuple(table.column(c).to_pylist() for c in group) for group in groups]


def _add_shard(w: layout.Work, manifest: plan.Manifest, shard: int, tallies: dict[str, SetTally],
               agreement: Agreement) -> None:
    """Feed one shard to every set that has it done; its captions are read once for all of them."""
    stats = {}
    for name, tally in tallies.items():
        found = done.check(w, name, shard)
        tally.shards[found.state] += 1
        if found.state == done.DONE:
            stats[name] = found.stats
    if not stats:
        return
    keys, captions = _captions(manifest, shard)
    ok_texts = {}
    for name, shard_stats in stats.items():
        tally = tallies[name]
        sidecar = _sidecar(w.rewrite_file(name, shard), tally.n, keys)
        tally.add_stats(shard_stats)
        ok_texts[name] = tally.add_rows(shard, keys, captions, sidecar)
    agreement.add(ok_texts)


def collect(work: str | Path, sources: Sequence[str] | None = None, progress: bool = True) -> dict:
    """The report's figures for each set run in `work` (or those of `sources`), over its done shards."""
    w = layout.Work(work)
    manifest = _manifest(w)
    names = set_names(w, sources)
    recorded = {name: _settings(w, name) for name in names}
    tallies = {name: SetTally(name, recorded[name]["num_rewrites"]) for name in names}
    agreement = Agreement()
    for shard in tqdm(range(manifest.num_shards), desc="report", unit="shard", disable=not progress,
                      file=sys.stderr, dynamic_ncols=True):
        _add_shard(w, manifest, shard, tallies, agreement)
    if not any(t.shards[done.DONE] for t in tallies.values()):
        raise ReportError(f"{w.root}: no shard of {', '.join(names)} is done yet (see `rewrite status`)")
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "work": str(w.root.resolve()),
        "version": __version__,
        "plan": {"shards": manifest.num_shards, "rows": manifest.total_rows},
        "sets": {name: t.summary(*example_targets(name, t.meta_file, recorded[name]["meta_digest"]))
                 for name, t in tallies.items()},
        "across_sets": agreement.summary(names),
    }


# ---------------------------------------------------------------- plots


def faithfulness_plot(name: str, figures: dict) -> Figure:
    """Where a set's rewrites fall between a paraphrase (1) and another picture (0); thresholds dotted."""
    fig = Figure(figsize=(6, 3.2))
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
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    for label, dist in figures["length"]["words"].items():
        if dist and dist["n"]:
            ax.step(*_shares(dist["histogram"]), where="mid", label=f"{label} (mean {dist['mean']:.1f})")
    ax.set(xlabel="words", ylabel="share", title=f"{name}: length in words")
    ax.legend()
    return fig


def reasons_plot(sets: dict) -> Figure:
    """Rejected attempts by reason and set: what the retries were spent on."""
    reasons = sorted({r for figures in sets.values() for r in figures["rejected"]})
    fig = Figure(figsize=(7, 1 + 0.45 * max(1, len(reasons)) * max(1, len(sets)) ** 0.5))
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
    FigureCanvasAgg(fig)  # Agg: renders to a file, never to a window
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def plots(summary: dict, out: Path) -> dict[str, Path]:
    """Every plot as a PNG in `out`, by name."""
    paths = {"reject_reasons": _save(reasons_plot(summary["sets"]), out / "reject_reasons.png")}
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
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


OVERVIEW = (("rows", "rows"), ("ok", "ok"), ("failed", "failed"), ("skipped", "skipped"),
            ("valid rate", "valid_rate"), ("retries", "retries"), ("words (rewrite)", "length.words.rewrite.mean"),
            ("words (original)", "length.words.original.mean"), ("faithfulness", "faithfulness.mean"),
            ("distinct-1", "diversity.distinct_1"), ("distinct-2", "diversity.distinct_2"))

STYLE = """body{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}img{max-width:100%;margin:.5em 1em .5em 0}"""


def _set_section(name: str, figures: dict, paths: dict[str, Path]) -> str:
    parts = [f"<h2>{html.escape(name)}</h2>"]
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
    across = summary["across_sets"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rewrite report</title><style>{STYLE}</style>"
        "</head><body><h1>rewrite report</h1>",
        f"<p>Work dir {html.escape(summary['work'])}, generated {html.escape(summary['generated_at'])} by rewrite "
        f"{html.escape(summary['version'])}: {summary['plan']['rows']} rows in {summary['plan']['shards']} shards.</p>",
        _table(["set"] + [label for label, _ in OVERVIEW],
               [[name] + [figures[name].get(key) for _, key in OVERVIEW] for name in figures]),
        _image(paths["reject_reasons"], "reject reasons"),
    ]
    if len(across["sets"]) > 1:
        parts.insert(-1, f"<p>Rows with identical rewrites in two or more sets: {_format(across['identical_share'])} "
                     f"({across['rows_identical']} of the {across['rows_compared']} rows with an ok rewrite in two "
                     "or more).</p>")
    parts += [_set_section(name, f, paths) for name, f in summary["sets"].items()]
    return "".join(parts) + "</body></html>\n"


# ---------------------------------------------------------------- writing


def check_out(work: str | Path, out: str | Path) -> Path:
    """The report folder, refused inside the work dir's rewrites (which only runs write)."""
    out, rewrites = Path(out).resolve(), (Path(work) / "rewrites").resolve()
    if out.is_relative_to(rewrites):
        raise ReportError(f"--out {out} lies inside {rewrites}, which only runs write: choose another folder")
    return out


def write(summary: dict, out_dir: str | Path) -> dict[str, Path]:
    """report.json, the plots and report.html in `out_dir` (made if missing); returns their paths by name."""
    out = check_out(summary["work"], out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json"}
    atomic.write_json(paths["json"], summary)
    paths.update(plots(summary, out))
    paths["html"] = out / "report.html"
    atomic.write_text(paths["html"], render_html(summary, paths))
    return paths


def report(work: str | Path, out: str | Path, sources: Sequence[str] | None = None, progress: bool = True) -> dict:
    """collect, then write: {"summary": ..., "paths": ...}. The folder is checked before the reading."""
    check_out(work, out)
    summary = collect(work, sources, progress)
    return {"summary": summary, "paths": write(summary, out)}
