"""The report's running figures, fed a shard (or a part of an export) at a time. They keep running sums
and bounded samples only, so their memory stays bounded however many rows they are fed:
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

A work dir's counts (rows, ok/failed/skipped, reject and failure reasons, requests, retries, tokens) come
from its done shards' stats (`SetTally.add_stats`), all of them, without a row read; the per-row figures
(lengths, scores, diversity, best and worst rows, agreement) from the rows fed to `add_rows`, which may be
a sample of whole shards. A mean or share over sampled shards is a ratio of sums (the rows' sum over
their count), so each shard's part of both is kept (`Clusters`) and gives the figure's margin of error
(`margin_95`): cluster sampling with the ratio estimator.
"""
from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from .. import meta
from ..workdir import done, layout
from ..rewriting import clip_tokens, faithful

RESERVOIR = 100_000  # scores kept per figure for its median and p90
SKETCH = 65_536  # smallest n-gram hashes kept for a distinct count
SEED = 0  # the reservoirs' sampling seed
THRESHOLDS = (0.2, 0.3, 0.5)  # shares of scores below these are reported
BINS = 20  # histogram bins over [0, 1]
EXAMPLES = 5  # best and worst rows shown per set
SHOWN_CHARS = 500  # an example's caption or rewrite is cut to this many characters
STATES = (done.DONE, done.PARTIAL, done.MISSING, done.DAMAGED)
COUNTED = (layout.STATUS_OK, layout.STATUS_FAILED, layout.STATUS_SKIPPED)  # rewrite statuses, as the stats count them
TOKENS = ("prompt", "cached_prompt", "generated")  # the stats' <kind>_tokens
Z95 = 1.959964  # the standard normal quantile of a two-sided 95% interval


def margin_95(pairs: Sequence[tuple[float, float]], population: int) -> float | None:
    """The 95% margin of error of the ratio sum(y) / sum(x) estimated from `pairs`, the (x, y) of each of
    n clusters (shards) drawn at random from `population`: the ratio estimator's standard error,
    sqrt((1 - n/N) / n * sum((y - R x)^2) / (n - 1)) / mean(x), with the finite-population correction
    (Cochran, Sampling Techniques, 3rd ed., 6.9 and 9A.8). 0 when every cluster was read (the figure is
    exact); None when it cannot be estimated (from one cluster of several, or no x at all)."""
    n, total_x = len(pairs), sum(x for x, _ in pairs)
    if not total_x:
        return None
    if n >= population:
        return 0.0
    if n < 2:
        return None
    ratio = sum(y for _, y in pairs) / total_x
    spread = sum((y - ratio * x) ** 2 for x, y in pairs) / (n - 1)
    return Z95 * math.sqrt((1 - n / population) * spread / n) / (total_x / n)


class Clusters:
    """The shards of a cluster sample: what each added to each ratio figure (name -> (count, sum)), so
    that every figure's margin of error can be told (margin_95)."""

    def __init__(self) -> None:
        self.units = 0
        self.pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def add(self, before: dict[str, tuple], after: dict[str, tuple]) -> None:
        """One shard, as the figures' (count, sum) before and after it."""
        self.units += 1
        for name, (x, y) in after.items():
            x0, y0 = before[name]
            self.pairs[name].append((x - x0, y - y0))

    def margins(self, population: int) -> dict[str, float | None]:
        return {name: margin_95(pairs, population) for name, pairs in self.pairs.items()}


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

    def ratios(self) -> dict[str, tuple[int, int]]:
        """The mean as (count, sum), for its margin of error."""
        return {"mean": (sum(self.counts.values()), sum(v * c for v, c in self.counts.items()))}

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

    def ratios(self) -> dict[str, tuple[int, float]]:
        """The mean and the shares below THRESHOLDS as (count, sum), for their margins of error."""
        return {"mean": (self.n, self.total), **{f"below.{t}": (self.n, self.below[t]) for t in THRESHOLDS}}

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
    """Rows whose rewrites are identical in two or more sets (rows with an ok rewrite in at least two),
    and each shard's part of them (a shard of two or more sets is a cluster of its sample)."""

    def __init__(self) -> None:
        self.compared = self.identical = 0
        self.pairs: list[tuple[int, int]] = []  # per shard of two or more sets: (rows compared, rows identical)

    def add(self, ok_texts: dict[str, list[set[str]]]) -> None:
        """One shard: each set's ok rewrites of each row (every set that has the shard done)."""
        if len(ok_texts) < 2:
            return
        compared = identical = 0
        for row in zip(*ok_texts.values()):
            present = [texts for texts in row if texts]
            if len(present) < 2:
                continue
            compared += 1
            identical += any(n > 1 for n in Counter(t for texts in present for t in texts).values())
        self.compared, self.identical = self.compared + compared, self.identical + identical
        self.pairs.append((compared, identical))

    def summary(self, names: list[str], population: int) -> dict:
        """`population`: the shards two or more of the sets have (done, or in an export)."""
        return {"sets": names, "rows_compared": self.compared, "rows_identical": self.identical,
                "identical_share": self.identical / self.compared if self.compared else None,
                "shards": len(self.pairs), "of_shards": population, "margin_95": margin_95(self.pairs, population)}


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


class SetTally:
    """One meta set's running figures: its counts fed every done shard's stats (or an export's rows'
    statuses), its per-row figures fed the rows of whole shards (all, or a sample of them)."""

    def __init__(self, name: str, num_rewrites: int, embedder=None) -> None:
        self.name, self.n, self.embedder = name, num_rewrites, embedder
        self.shards: Counter = Counter()  # shard state -> shards
        self.left_out: dict[int, str] = {}  # shard not counted (not done) -> its state, or what is damaged
        self.rows = self.requests = self.retries = 0
        self.statuses: Counter = Counter()  # ok / failed / skipped rewrites
        self.rejected: Counter = Counter()
        self.failed_reasons: Counter = Counter()
        self.tokens_used: Counter = Counter()  # TOKENS -> the engine's tokens
        self.rows_read = 0  # rows whose per-row figures were taken
        self.clusters = Clusters()
        self.words = {"rewrite": Lengths(), "original": Lengths()}
        self.tokens = {"rewrite": Lengths(), "original": Lengths()}
        self.scores = {name: Scores() for name in ("faithfulness", "recall", "novelty", "word_overlap")}
        if embedder is not None:  # cosine of caption and rewrite embeddings, clamped at 0
            self.scores["embedding_similarity"] = Scores()
        self.unscored = 0  # ok rewrites faithfulness cannot judge (no content word on a side)
        self.distinct = {1: Distinct(1), 2: Distinct(2)}
        self.examples = Extremes()
        self.meta_file: str | None = None  # the set's file as the run recorded it

    def add_counts(self, counts: dict) -> None:
        """Rows and their rewrites' statuses (`counts`: "rows" and COUNTED, as a shard's stats hold them)."""
        self.rows += counts["rows"]
        self.statuses.update({status: counts[status] for status in COUNTED})

    def add_stats(self, stats: dict) -> None:
        """A done shard's stats: its counts, whole, without reading its rows. Failure reasons count each
        failed (caption, index) once, as the run judged them (rows of a caption repeated in a shard share
        its rewrite). Every rejected attempt is either retried or was a failed rewrite's last one, so
        retries = rejected attempts - failed rewrites."""
        self.add_counts(stats)
        self.requests += stats["requests"]
        self.rejected.update(stats["rejected"])
        self.failed_reasons.update(stats["failed_reasons"])
        self.retries += sum(stats["rejected"].values()) - sum(stats["failed_reasons"].values())
        self.tokens_used.update({kind: stats.get(f"{kind}_tokens", 0) for kind in TOKENS})
        self.meta_file = self.meta_file or stats.get("settings", {}).get("meta_file")

    def ratios(self) -> dict[str, tuple]:
        """Every mean and share of the per-row figures as (count, sum), by its key in the summary."""
        lengths = {f"length.{kind}.{side}.{name}": pair for kind, sides in (("words", self.words), ("clip_tokens", self.tokens))
                   for side, dist in sides.items() for name, pair in dist.ratios().items()}
        return {**lengths, **{f"{figure}.{name}": pair for figure, scores in self.scores.items()
                              for name, pair in scores.ratios().items()}}

    def add_rows(self, shard: int | None, keys: list, captions: list[str | None], sidecar: list[tuple]) -> list[set[str]]:
        """A whole shard's rows (or an export's part) for the per-row figures (`sidecar`: (rewrites,
        statuses) per rewrite index); returns each row's ok rewrites (for Agreement)."""
        before = self.ratios()
        self.rows_read += len(keys)
        ok_texts, words, pairs = [], [], []
        for row, (key, caption) in enumerate(zip(keys, captions)):
            texts: set[str] = set()
            original = None
            for rewrites, statuses in sidecar:
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
        self.clusters.add(before, self.ratios())
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

    def sample(self, population: int) -> dict:
        """Where the per-row figures come from: rows and shards read of those counted (`population`: the
        shards they were drawn from), and each mean's and share's 95% margin of error (0: exact)."""
        return {"rows": self.rows_read, "of_rows": self.rows, "shards": self.clusters.units, "of_shards": population,
                "exact": self.clusters.units >= population, "margin_95": self.clusters.margins(population)}

    def summary(self, targets: list[str] | None, meta_set: dict, population: int) -> dict:
        """The figures; `population`: the shards the rows were drawn from (see `sample`)."""
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
            "tokens": {kind: self.tokens_used[kind] for kind in TOKENS},
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
            "sample": self.sample(population),
            "examples": self.examples.summary(),
        }
