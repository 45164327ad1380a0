"""The four meta sets of in-context examples, and how examples are drawn from them.

A pair set (chatgpt, bard, human) holds source -> target pairs; an example is one pair. A group set
(coco) holds groups of captions of one scene; an example is two distinct captions of one group, one as
source and one as target. Files are JSONL: {"source": ..., "target": ...} or {"captions": [...]}.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from . import resources, settings

Example = tuple[str, str]


class MetaSetError(ValueError):
    pass


@dataclass(frozen=True)
class MetaSet:
    name: str
    path: Path
    pairs: tuple[Example, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()

    @property
    def kind(self) -> str:
        return "groups" if self.groups else "pairs"

    def __len__(self) -> int:
        return len(self.groups or self.pairs)

    def digest(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def examples(self) -> list[Example]:
        """Every example this set can give (for groups: each ordered pair of distinct captions)."""
        if self.pairs:
            return list(self.pairs)
        return [(a, b) for g in self.groups for a in g for b in g if a != b]


def canonical_source(name: str) -> str:
    """`mscoco` -> `coco`; a known name unchanged; anything else a clear error."""
    name = settings.SOURCE_ALIASES.get(name, name)
    if name not in settings.SOURCES and not name.endswith(".jsonl"):
        raise MetaSetError(
            f"unknown source {name!r}: choose one of {', '.join(settings.SOURCES)} (or 'mscoco'), "
            "or give the path of a .jsonl meta set"
        )
    return name


def load(name_or_path: str) -> MetaSet:
    """A shipped set by name (chatgpt, bard, coco/mscoco, human) or a JSONL file of the same format."""
    name = canonical_source(name_or_path)
    if name in settings.SOURCES:
        path = resources.resource("meta_pairs", f"{name}.jsonl")
    else:
        path = Path(name)
        if not path.is_file():
            raise MetaSetError(f"meta set file {path} does not exist")
        name = path.stem
    return parse(path, name)


def parse(path: Path, name: str) -> MetaSet:
    pairs: list[Example] = []
    groups: list[tuple[str, ...]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetaSetError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if isinstance(row, dict) and set(row) == {"source", "target"}:
            pairs.append((str(row["source"]), str(row["target"])))
        elif isinstance(row, dict) and set(row) == {"captions"} and isinstance(row["captions"], list):
            groups.append(tuple(str(c) for c in row["captions"]))
        else:
            raise MetaSetError(
                f'{path}:{lineno}: expected {{"source": ..., "target": ...}} or {{"captions": [...]}}'
            )
    if pairs and groups:
        raise MetaSetError(f"{path}: mixes source/target pairs and caption groups")
    if not pairs and not groups:
        raise MetaSetError(f"{path}: holds no examples")
    return MetaSet(name=name, path=path, pairs=tuple(pairs), groups=tuple(groups))


def sample_examples(meta: MetaSet, rng: random.Random, k: int) -> list[Example]:
    """k examples drawn without replacement; for groups, two distinct captions of one group each."""
    if k > len(meta):
        raise MetaSetError(f"meta set {meta.name} has {len(meta)} entries, fewer than k={k}")
    chosen = rng.sample(range(len(meta)), k)
    if meta.pairs:
        return [meta.pairs[i] for i in chosen]
    out = []
    for i in chosen:
        a, b = rng.sample(range(len(meta.groups[i])), 2)
        out.append((meta.groups[i][a], meta.groups[i][b]))
    return out


def word_overlap(a: str, b: str) -> float:
    """SequenceMatcher ratio on lower-cased words: the overlap statistic LaCLIP reports."""
    return difflib.SequenceMatcher(None, a.lower().split(), b.lower().split()).ratio()


def problems(meta: MetaSet) -> list[str]:
    """What makes a meta set unusable in the prompt format (empty, `=>`, line breaks, duplicates)."""
    found = []
    strings = [s for ex in meta.pairs for s in ex] if meta.pairs else [c for g in meta.groups for c in g]
    for s in strings:
        if not s.strip():
            found.append("an empty string")
        if "=>" in s:
            found.append(f"'=>' inside: {s!r}")
        if any(ch in s for ch in "\r\n\t"):
            found.append(f"a line break or tab inside: {s!r}")
        if s != s.strip():
            found.append(f"leading or trailing space: {s!r}")
    if meta.pairs:
        sources = [p[0] for p in meta.pairs]
        for dup in sorted({s for s in sources if sources.count(s) > 1}):
            found.append(f"duplicate source: {dup!r}")
        found += [f"target equals source: {s!r}" for s, t in meta.pairs if s == t]
    for g in meta.groups:
        if len(g) < 2:
            found.append(f"a group with fewer than 2 captions: {g!r}")
        if len(set(g)) != len(g):
            found.append(f"a group with duplicate captions: {g!r}")
    return found


def stats(meta: MetaSet) -> dict:
    """Counts and the length/overlap statistics a good meta set shows (targets ~2x sources, low overlap)."""
    examples = meta.examples()
    src_words = [len(s.split()) for s, _ in examples]
    tgt_words = [len(t.split()) for _, t in examples]
    return {
        "name": meta.name,
        "kind": meta.kind,
        "entries": len(meta),
        "examples": len(examples),
        "mean_source_words": round(statistics.mean(src_words), 2),
        "mean_target_words": round(statistics.mean(tgt_words), 2),
        "max_target_words": max(tgt_words),
        "mean_word_overlap": round(statistics.mean(word_overlap(s, t) for s, t in examples), 3),
    }
