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
"""
from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter
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
