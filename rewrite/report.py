"""A quality report over a work dir's rewrites, per meta set: how many are valid and why the others were
rejected, how long, faithful and diverse they are, and the best and worst of them; or over an export's
rewrites (`collect_export`), with the figures only a run records (shard states, requests, retries, reject
reasons, the set's example targets) left null or empty.

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

`collect_export` reads an export (hf, csv, laclip or wds) one file at a time (a CSV a block at a time),
only its caption and rewrite columns, and tallies its rows as `collect` does. An export keeps no status: a
rewrite it lacks counts as failed (it failed, or its shard was exported missing; see EXPORT_NOTE), one whose
caption is blank as skipped. What the export holds is read from its record (publish.MARKER: the files it
published) and from those files' own columns; the record names no format, so the files tell it.

`write` turns the summary into report.json, PNG plots and one self-contained report.html.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import heapq
import html
import itertools
import json
import math
import random
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterable, Iterator, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from . import __version__, meta, defaults, tars
from .workdir import atomic, done, layout, outputs
from .workdir.manifest import Manifest, load_manifest
from .rewriting import clip_tokens, faithful
from .inputs import plan
from .exports import publish
from .exports import hf, laclip, openclip_csv, wds
from .workdir.manifest import PlanError
from .run.config import RunError
from .workdir.record import recorded_settings

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

    def __init__(self, name: str, num_rewrites: int, embedder=None) -> None:
        self.name, self.n, self.embedder = name, num_rewrites, embedder
        self.shards: Counter = Counter()  # shard state -> shards
        self.left_out: dict[int, str] = {}  # shard not counted (not done) -> its state, or what is damaged
        self.rows = self.requests = self.retries = 0
        self.statuses: Counter = Counter()  # ok / failed / skipped rewrites
        self.rejected: Counter = Counter()
        self.failed_reasons: Counter = Counter()
        self.words = {"rewrite": Lengths(), "original": Lengths()}
        self.tokens = {"rewrite": Lengths(), "original": Lengths()}
        self.scores = {name: Scores() for name in ("faithfulness", "recall", "novelty", "word_overlap")}
        if embedder is not None:  # cosine of caption and rewrite embeddings, clamped at 0
            self.scores["embedding_similarity"] = Scores()
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

    def add_rows(self, shard: int | None, keys: list, captions: list[str | None], sidecar: list[tuple]) -> list[set[str]]:
        """A done shard's rows (or an export's: their reasons None, unknown); returns each row's ok rewrites
        (for Agreement)."""
        self.rows += len(keys)
        ok_texts, words, pairs = [], [], []
        for row, (key, caption) in enumerate(zip(keys, captions)):
            texts: set[str] = set()
            original = None
            for rewrites, statuses, reasons in sidecar:
                self.statuses[statuses[row]] += 1
                if statuses[row] == layout.STATUS_FAILED and reasons is not None:
                    self.failed_reasons[reasons[row]] += 1
                if statuses[row] != layout.STATUS_OK:
                    continue
                original = original or (len(caption.split()), clip_tokens.count(caption))
                self._add_rewrite(shard, key, caption, rewrites[row], original)
                texts.add(rewrites[row])
                words.append(rewrites[row].lower().split())
                pairs.append((caption, rewrites[row]))
            ok_texts.append(texts)
        for distinct in self.distinct.values():
            distinct.add(words)
        if self.embedder is not None and pairs:
            for similarity in self.embedder.similarity(pairs):
                self.scores["embedding_similarity"].add(min(1.0, max(0.0, similarity)))
        return ok_texts

    def _add_rewrite(self, shard: int | None, key, caption: str, rewrite: str, original: tuple[int, int]) -> None:
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
            "shards_left_out": {str(shard): why for shard, why in sorted(self.left_out.items())},
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


def _manifest(w: layout.Work) -> Manifest:
    try:
        return load_manifest(w)
    except PlanError as e:
        raise ReportError(str(e)) from None


def set_names(w: layout.Work, sources: Sequence[str] | None) -> list[str]:
    """The sets asked for (a name, an alias or a custom set's file) as the work dir names them; None: all."""
    present = w.sources_present()
    if not present:
        raise ReportError(f"{w.root} has no rewrites yet: run `rewrite run` first")
    return _chosen(w.root, present, sources, "run")


def _chosen(where: Path, present: list[str], sources: Sequence[str] | None, verb: str) -> list[str]:
    try:
        return meta.chosen(where, present, sources, verb)
    except meta.MetaSetError as e:
        raise ReportError(str(e)) from None


def _settings(w: layout.Work, name: str) -> dict:
    try:
        return recorded_settings(w, name)
    except RunError as e:
        raise ReportError(str(e)) from None


def example_targets(name: str, meta_file: str | None, digest: str) -> tuple[list[str] | None, dict]:
    """The example targets of the set the run used, found by its recorded digest: the file the run read
    (a custom set, --meta-dir), else the shipped set of that name; None, and why, when neither is it
    any more (moved, deleted or edited since the run)."""
    for candidate in [c for c in (meta_file, name if name in defaults.SOURCES else None) if c]:
        try:
            found = meta.load(candidate)
        except (meta.MetaSetError, OSError):
            continue
        if found.digest() == digest:
            targets = [t for _, t in found.pairs] or [c for g in found.groups for c in g]
            return targets, {"digest": digest, "file": str(found.path), "note": None}
    places = [f"its file {meta_file}"] if meta_file else []
    places += [f"the shipped set {name}"] if name in defaults.SOURCES else []
    where = f"not found as {' or '.join(places)} (missing, or changed since the run)" if places else "no file recorded"
    return None, {"digest": digest, "file": None, "note": f"the set the run used (sha256 {digest[:12]}): {where}"}


def _captions(manifest: Manifest, shard: int) -> tuple[list[str], list[str | None]]:
    """A shard's keys and captions (only those columns are read; never an image)."""
    keys: list[str] = []
    captions: list[str | None] = []
    for table in plan.iter_shard(manifest, shard, max(1, manifest.shard_rows(shard))):  # none: a shard of no rows
        keys += table.column(layout.KEY).to_pylist()
        captions += table.column(layout.CAPTION).to_pylist()
    return keys, captions


def _sidecar(path: Path, num_rewrites: int, keys: list[str]) -> list[tuple[list, list, list]]:
    """(rewrites, statuses, reasons) per rewrite index of a done shard's file, checked to be the shard's rows."""
    groups = [[layout.rewrite_column(i, num_rewrites), layout.suffixed(layout.STATUS, i, num_rewrites),
               layout.suffixed(layout.REASON, i, num_rewrites)] for i in range(num_rewrites)]
    table = pq.read_table(path, columns=[layout.KEY] + [c for group in groups for c in group])
    if table.column(layout.KEY).to_pylist() != keys:
        raise ReportError(f"{path} does not hold the rows of its shard in the plan (keys differ)")
    return [tuple(table.column(c).to_pylist() for c in group) for group in groups]


def _add_shard(w: layout.Work, manifest: Manifest, shard: int, tallies: dict[str, SetTally],
               agreement: Agreement) -> None:
    """Feed one shard to every set that has it done; its captions are read once for all of them."""
    stats = {}
    for name, tally in tallies.items():
        found = done.check(w, name, shard)
        tally.shards[found.state] += 1
        if found.state == done.DONE:
            stats[name] = found.stats
        else:
            tally.left_out[shard] = found.problem or found.state
    if not stats:
        return
    keys, captions = _captions(manifest, shard)
    for name, shard_stats in stats.items():
        tallies[name].add_stats(shard_stats)
    _add_rows(tallies, agreement, shard, keys, captions,
              {name: _sidecar(w.rewrite_file(name, shard), tallies[name].n, keys) for name in stats})


def _add_rows(tallies: dict[str, SetTally], agreement: Agreement, shard: int | None, keys: list,
              captions: list[str | None], sidecars: dict[str, list[tuple]]) -> None:
    """Rows read together (a shard, a part of an export), to each set of `sidecars` and to the agreement."""
    agreement.add({name: tallies[name].add_rows(shard, keys, captions, sidecar) for name, sidecar in sidecars.items()})


def _summary(path: Path, rows: dict, sets: dict, agreement: Agreement, source: str, fmt: str | None,
             note: str | None) -> dict:
    """The summary's frame, the same for a work dir and an export (so that `write` renders either)."""
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "work": str(path.resolve()),  # the folder read: a work dir, or an export (see "source")
        "source": source,  # "work" or "export"
        "format": fmt,  # an export's format
        "note": note,  # what the figures leave out
        "version": __version__,
        "plan": rows,
        "sets": sets,
        "across_sets": agreement.summary(list(sets)),
    }


def collect(work: str | Path, sources: Sequence[str] | None = None, progress: bool = True, embedder=None) -> dict:
    """The report's figures for each set run in `work` (or those of `sources`), over its done shards; with
    an `embedder` (embedding.Embedder), the embedding similarity of each rewrite to its caption too."""
    w = layout.Work(work)
    manifest = _manifest(w)
    names = set_names(w, sources)
    recorded = {name: _settings(w, name) for name in names}
    tallies = {name: SetTally(name, recorded[name]["num_rewrites"], embedder) for name in names}
    agreement = Agreement()
    for shard in tqdm(range(manifest.num_shards), desc="report", unit="shard", disable=not progress,
                      file=sys.stderr, dynamic_ncols=True):
        _add_shard(w, manifest, shard, tallies, agreement)
    if not any(t.shards[done.DONE] for t in tallies.values()):
        raise ReportError(f"{w.root}: no shard of {', '.join(names)} is done yet (see `rewrite status`)")
    sets = {name: t.summary(*example_targets(name, t.meta_file, recorded[name]["meta_digest"]))
            for name, t in tallies.items()}
    return _summary(w.root, {"shards": manifest.num_shards, "rows": manifest.total_rows}, sets, agreement,
                    "work", None, None)


# ---------------------------------------------------------------- reading an export

EXPORT_NOTE = ("From an export: no shard, request, retry or reject figures and no example targets (only a work "
               "dir records them). A rewrite the export lacks (null, empty, or in a csv export the caption, which "
               "it fills in) counts as failed: it failed, or its shard was exported without rewrites "
               "(--allow-missing). Rows a csv or laclip export leaves out (no caption, no image path) are not "
               "counted")
RUN_ONLY = ("shards", "shards_left_out", "requests", "first_attempts", "retries")  # figures only a run's stats give: null from an export
EXPORT_META_SET = {"digest": None, "file": None, "note": "an export does not record the set it was rewritten with"}
PREFIX = "caption_"  # of every rewrite column an export writes (layout.export_column)


class Rows(NamedTuple):
    """Rows of an export read together: keys, captions and each rewrite column's texts (None: no rewrite)."""
    shard: int | None  # the plan's shard, where the export keeps it (hf)
    keys: list
    captions: list[str | None]
    rewrites: dict[str, list[str | None]]


def kind(path: str | Path) -> str:
    """What `path` is: "export" (a folder `rewrite export` published into holds its record) or "work" (a
    work dir holds its plan)."""
    path = Path(path)
    if (path / publish.MARKER).is_file():
        return "export"
    if layout.Work(path).manifest.is_file():
        return "work"
    raise ReportError(f"{path} is neither a work dir (no {layout.Work(path).manifest.name}, which `rewrite shard` "
                      f"writes) nor an export (no {publish.MARKER}, which `rewrite export` writes)")


def exported_files(folder: Path) -> list[str]:
    """The files of the export published in `folder`, from its record, each checked to be as published."""
    record = folder / publish.MARKER
    try:
        marker = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"{record}: cannot read the export's record ({e})") from None
    if not marker.get("published"):
        raise ReportError(f"{folder} holds no finished export (one is being written, or was cut short): "
                          "run `rewrite export` to the end first")
    files = marker.get("files", [])
    for name in files:
        path = folder / name
        if not path.is_file() or path.stat().st_size != marker.get("sizes", {}).get(name):
            raise ReportError(f"{path} is missing or changed since it was exported: export again")
    return files


def export_format(folder: Path, files: list[str]) -> str:
    """An export's format, from the files it published (its record names none)."""
    names = set(files)
    if hf.CARD in names and any(f.startswith("data/") and f.endswith(".parquet") for f in files):
        return "hf"
    if wds.SIZES in names and any(f.endswith(".tar") for f in files):
        return "wds"
    if laclip.CSV_FILE in names and any(f.endswith(".txt") for f in files):
        return "laclip"
    if names & {"train.tsv", "train.csv"}:
        return "csv"
    raise ReportError(f"{folder}: an export of no format the report reads ({', '.join(files[:5])}): it reads "
                      f"{', '.join(READERS)} exports")


def rewrite_columns(names: Sequence[str], where: Path) -> list[str]:
    """The rewrite columns of an export: the `caption_<set>` ones every format writes after the input's own."""
    columns = list(itertools.takewhile(lambda n: n.startswith(PREFIX), reversed(names)))[::-1]
    if not columns:
        raise ReportError(f"{where}: no rewrite column ({PREFIX}<set>) after the input's columns")
    return columns


def export_sets(columns: list[str]) -> dict[str, list[str]]:
    """Each set's rewrite columns: `caption_<set>`, or `caption_<set>_0`, `caption_<set>_1`, ... for a set
    with several rewrites a row (as layout.export_column names them)."""
    sets, rest = {}, list(columns)
    while rest:
        name = rest[0][len(PREFIX):]
        base = name.removesuffix("_0")
        n = 0
        while base != name and n < len(rest) and rest[n] == layout.export_column(base, n, 2):  # 2: any n > 1
            n += 1
        if n < 2:
            base, n = name, 1
        sets[base], rest = rest[:n], rest[n:]
    return sets


def _csv_blocks(path: Path, delimiter: str, columns: list[str], names: list[str] | None = None) -> Iterator[dict]:
    """`columns` of a CSV a block at a time, every cell the text written (none read as missing)."""
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(column_names=names),
                                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                                convert_options=pacsv.ConvertOptions(include_columns=columns,
                                                                     column_types=dict.fromkeys(columns, pa.string())))
        for batch in reader:
            yield {c: batch.column(c).to_pylist() for c in columns}
    except (pa.ArrowException, OSError) as e:
        raise ReportError(f"{path}: cannot read it as the export wrote it ({e})") from None


class HfReader:
    """data/train-*.parquet, one file a shard: `key`, `caption` (the input's, kept as stored) and the rewrite
    columns, nulls where there is no rewrite."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.paths = [folder / f for f in sorted(files) if f.startswith("data/") and f.endswith(".parquet")]
        self.total = len(self.paths)
        names = pq.read_schema(self.paths[0]).names
        if layout.CAPTION not in names:
            raise ReportError(f"{self.paths[0]} has no {layout.CAPTION!r} column: the export does not record which "
                              "column holds the captions (planned with --caption-column?)")
        self.key = layout.KEY if layout.KEY in names else None
        self.columns = rewrite_columns(names, self.paths[0])

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for shard, path in enumerate(self.paths):
            try:
                table = pq.read_table(path, columns=[c for c in (self.key, layout.CAPTION) if c] + wanted)
            except (pa.ArrowException, OSError) as e:
                raise ReportError(f"{path}: cannot read its caption columns ({e})") from None
            keys = table.column(self.key).to_pylist() if self.key else [None] * table.num_rows
            yield Rows(shard, keys, table.column(layout.CAPTION).to_pylist(),
                       {c: table.column(c).to_pylist() for c in wanted})


class CsvReader:
    """open_clip's train.tsv (train.csv with another separator): image path, `title`, the rewrite columns.
    A failed rewrite was filled with the caption, which an ok rewrite never equals (validate: echo)."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.path, self.total = folder / next(f for f in files if f in ("train.tsv", "train.csv")), None
        with open(self.path, encoding="utf-8", newline="") as f:
            line = f.readline()
        found = re.search(rf"(.){openclip_csv.TITLE}\1{PREFIX}", line)  # the separator around `title`
        if not found:
            raise ReportError(f"{self.path}: its header has no {openclip_csv.TITLE!r} column before the rewrite columns")
        self.separator = found.group(1)
        header = next(csv.reader([line], delimiter=self.separator))
        self.image, self.columns = header[0], rewrite_columns(header, self.path)

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for block in _csv_blocks(self.path, self.separator, [self.image, openclip_csv.TITLE] + wanted):
            captions = block[openclip_csv.TITLE]
            yield Rows(None, block[self.image], captions,
                       {c: [None if r == caption else r for r, caption in zip(block[c], captions)] for c in wanted})


class LaclipReader:
    """LaCLIP's train.csv (image path, caption; no header) and a text file per rewrite column, a line per
    CSV row, empty where there is no rewrite."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.path, self.folder, self.total = folder / laclip.CSV_FILE, folder, None
        self.columns = rewrite_columns([f.removesuffix(".txt") for f in files if f.endswith(".txt")], folder)

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        with contextlib.ExitStack() as stack:
            texts = {c: stack.enter_context(open(self.folder / f"{c}.txt", encoding="utf-8", newline="\n"))
                     for c in wanted}
            for block in _csv_blocks(self.path, ",", ["path", "caption"], names=["path", "caption"]):
                n = len(block["path"])
                yield Rows(None, block["path"], block["caption"],
                           {c: [self._line(f) or None for _ in range(n)] for c, f in texts.items()})
            longer = [f.name for f in texts.values() if f.readline()]
            if longer:
                raise ReportError(f"{longer[0]} has more lines than {self.path} has rows: the export is damaged")

    def _line(self, f: IO[str]) -> str:
        line = f.readline()
        if not line:
            raise ReportError(f"{f.name} has fewer lines than {self.path} has rows: the export is damaged")
        return line.removesuffix("\n")


class WdsReader:
    """Webdataset tars: KEY.txt the caption, KEY.json the rewrite fields ("" where there is no rewrite) after
    the input's own. Only the text members are read; the views/ tars repeat the same rewrites. (For tar input
    whose captions came from a KEY.json field, KEY.txt is not the caption: the export does not record that.)"""

    def __init__(self, folder: Path, files: list[str]) -> None:
        self.paths = [folder / f for f in files if f.endswith(".tar") and "/" not in f]
        self.total = len(self.paths)
        first = next((s for path in self.paths for s in self._samples(path)), None)
        self.columns = rewrite_columns(list((first and first.json) or {}), folder)

    def _samples(self, path: Path) -> Iterator[tars.Sample]:
        try:
            yield from tars.iter_samples(path)
        except tars.TarError as e:
            raise ReportError(str(e)) from None

    def rows(self, wanted: list[str]) -> Iterator[Rows]:
        for path in self.paths:
            samples = list(self._samples(path))
            yield Rows(None, [s.key for s in samples], [s.caption for s in samples],
                       {c: [(s.json or {}).get(c) or None for s in samples] for c in wanted})


READERS = {"hf": HfReader, "csv": CsvReader, "laclip": LaclipReader, "wds": WdsReader}


def _export_sidecar(texts: list[str | None], captions: list[str | None]) -> tuple[list, list, None]:
    """(rewrites, statuses, reasons) of a rewrite column, as a sidecar would hold them: no text is a skip
    where the caption is blank (nothing was rewritten), else a failure; the reasons are unknown."""
    statuses = [layout.STATUS_OK if text is not None else
                layout.STATUS_SKIPPED if caption is None or not caption.strip() else layout.STATUS_FAILED
                for text, caption in zip(texts, captions)]
    return texts, statuses, None


def collect_export(folder: str | Path, sources: Sequence[str] | None = None, progress: bool = True,
                   embedder=None) -> dict:
    """The report's figures for each set in the export published in `folder` (or those of `sources`), as
    `collect` gives them; RUN_ONLY figures are null (see EXPORT_NOTE)."""
    folder = Path(folder)
    if kind(folder) != "export":
        raise ReportError(f"{folder} is a work dir, not an export: use collect")
    files = exported_files(folder)
    fmt = export_format(folder, files)
    reader = READERS[fmt](folder, files)
    sets = export_sets(reader.columns)
    names = _chosen(folder, list(sets), sources, "exported")
    tallies = {name: SetTally(name, len(sets[name]), embedder) for name in names}
    agreement, rows = Agreement(), 0
    for part in tqdm(reader.rows([c for name in names for c in sets[name]]), total=reader.total, desc="report",
                     unit="part", disable=not progress, file=sys.stderr, dynamic_ncols=True):
        rows += len(part.keys)
        _add_rows(tallies, agreement, part.shard, part.keys, part.captions,
                  {name: [_export_sidecar(part.rewrites[c], part.captions) for c in sets[name]] for name in names})
    figures = {name: {**t.summary(None, EXPORT_META_SET), **dict.fromkeys(RUN_ONLY)} for name, t in tallies.items()}
    return _summary(folder, {"shards": None, "rows": rows}, figures, agreement, "export", fmt, EXPORT_NOTE)


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
        parts.insert(3, f"<p>Rows with identical rewrites in two or more sets: {_format(across['identical_share'])} "
                     f"({across['rows_identical']} of the {across['rows_compared']} rows with an ok rewrite in two "
                     "or more).</p>")
    parts += [_set_section(name, f, paths) for name, f in summary["sets"].items()]
    return "".join(parts) + "</body></html>\n"


# ---------------------------------------------------------------- writing


MARKER = ".rewrite-report.json"  # in a report folder: the files the report wrote there


def check_out(path: str | Path, out: str | Path, source: str = "work", overwrite: bool = False) -> Path:
    """The report folder: a folder of its own (never the folder read, inside it or holding it, nor one
    of the work dir's inputs), new or empty, or holding an earlier report (replaced only with
    `overwrite`); a folder with anything a report did not write is refused."""
    out, path = Path(out).resolve(), Path(path).resolve()
    read = outputs.read_by(layout.Work(path), _manifest(layout.Work(path))) if source == "work" else [("the export", path)]
    problem = outputs.overlap(out, read, "--out", "a report")
    if problem:
        raise ReportError(problem)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    ours = _written_before(out)
    foreign = [name for name in entries if name != MARKER and name not in ours]
    if foreign:
        raise ReportError(f"--out {out} holds files a report did not write ({', '.join(foreign[:5])}): choose a new "
                          "or empty folder; nothing there is removed or replaced")
    if ours and not overwrite:
        raise ReportError(f"--out {out} holds an earlier report: pass --overwrite to replace it, or choose another folder")
    return out


def _written_before(out: Path) -> list[str]:
    """The files an earlier report wrote in `out` (its record), [] when there is none."""
    try:
        record = json.loads((out / MARKER).read_text(encoding="utf-8"))
        files = record["files"]
        if not (isinstance(files, list) and all(isinstance(f, str) and "/" not in f for f in files)):
            raise ValueError
        return files
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ReportError(f"{out / MARKER} is damaged: remove {out} yourself, or choose another --out") from None


def write(summary: dict, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """report.json, the plots and report.html in `out_dir` (made if missing; see check_out), then the
    record of what it wrote; the files of an earlier report there that this one does not write go."""
    out = check_out(summary["work"], out_dir, summary["source"], overwrite)
    before = _written_before(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json"}
    atomic.write_json(paths["json"], summary)
    paths.update(plots(summary, out))
    paths["html"] = out / "report.html"
    atomic.write_text(paths["html"], render_html(summary, paths))
    names = sorted(p.name for p in paths.values())
    atomic.write_json(out / MARKER, {"made_by": "rewrite report", "files": names})
    for name in set(before) - set(names):
        (out / name).unlink(missing_ok=True)
    return paths


def report(path: str | Path, out: str | Path, sources: Sequence[str] | None = None, progress: bool = True,
           embedding_model: str | Path | None = None, overwrite: bool = False) -> dict:
    """collect (`path` a work dir) or collect_export (an export), then write: {"summary": ..., "paths": ...}.
    The report folder is checked (and the embedding model loaded) before the reading."""
    source = kind(path)
    check_out(path, out, source, overwrite)
    embedder = None
    if embedding_model is not None:
        from .rewriting.embedding import Embedder

        embedder = Embedder(embedding_model)
    summary = (collect if source == "work" else collect_export)(path, sources, progress, embedder)
    summary["embedding_model"] = embedder.name if embedder else None
    return {"summary": summary, "paths": write(summary, out, overwrite)}
