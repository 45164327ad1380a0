"""The four meta sets of in-context examples, and how examples are drawn from them.

A pair set (chatgpt, bard, human) holds source -> target pairs; an example is one pair. A group set
(coco) holds groups of captions of one scene; an example is two distinct captions of one group, one as
source and one as target. Files are JSONL: {"source": ..., "target": ...} or {"captions": [...]}, optionally
after a first line {"provenance": {...}} that says how the set was made (from what file, when, with what).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, resources, settings

Example = tuple[str, str]


class MetaSetError(ValueError):
    pass


@dataclass(frozen=True)
class MetaSet:
    name: str
    path: Path
    pairs: tuple[Example, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    provenance: dict | None = field(default=None, hash=False)

    @property
    def kind(self) -> str:
        return "groups" if self.groups else "pairs"

    def __len__(self) -> int:
        return len(self.groups or self.pairs)

    def digest(self) -> str:
        """sha256 of the file without its provenance line: the examples make a run's output, so a set
        imported again (at another time, from another path) keeps the digest a run's fingerprint holds."""
        data = self.path.read_bytes()
        if self.provenance is not None:
            data = data.lstrip().partition(b"\n")[2]
        return hashlib.sha256(data).hexdigest()

    def examples(self) -> list[Example]:
        """Every example this set can give (for groups: each ordered pair of distinct captions)."""
        if self.pairs:
            return list(self.pairs)
        return [(a, b) for g in self.groups for a in g for b in g if a != b]


# A custom set's name becomes a folder under WORK/rewrites/ and a column `caption_<name>`: no path
# separators, dots or spaces.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def source_name(source: str) -> str:
    """The name a --source goes by in folders, columns and seeds: a shipped set's name (`mscoco` ->
    `coco`), or the file name without `.jsonl` of a custom set (never its path)."""
    name = settings.SOURCE_ALIASES.get(source, source)
    if name in settings.SOURCES:
        return name
    if not name.endswith(".jsonl"):
        raise MetaSetError(
            f"unknown source {source!r}: choose one of {', '.join(settings.SOURCES)} (or 'mscoco'), "
            "or give the path of a .jsonl meta set"
        )
    stem = Path(name).name[: -len(".jsonl")]
    if not _NAME.fullmatch(stem):
        raise MetaSetError(f"meta set file {source}: its name {stem!r} becomes a folder and a column, so it may "
                           "hold only letters, digits, '-' and '_' (and start with a letter or digit): rename the file")
    if stem in settings.SOURCES or stem in settings.SOURCE_ALIASES:
        raise MetaSetError(f"meta set file {source}: {stem!r} is the name of a shipped meta set; rename the file "
                           "so its rewrites do not mix with that set's")
    return stem


def is_file_source(source: str) -> bool:
    """Whether --source names a custom set's file rather than a shipped set."""
    return source_name(source) not in settings.SOURCES


def load(source: str) -> MetaSet:
    """A shipped set by name (chatgpt, bard, coco/mscoco, human) or a JSONL file of the same format. A file
    named like a shipped set (DIR/chatgpt.jsonl, as --meta-dir reads and `rewrite meta import-laclip` writes)
    goes by that name here; only as --source is such a file refused (source_name), lest rewrites mix."""
    path = Path(source)
    shipped_named = source.endswith(".jsonl") and path.name[: -len(".jsonl")] in settings.SOURCES
    name = path.name[: -len(".jsonl")] if shipped_named else source_name(source)
    if not shipped_named and not is_file_source(source):
        return parse(resources.resource("meta_pairs", f"{name}.jsonl"), name)
    if not path.is_file():
        raise MetaSetError(f"meta set file {path} does not exist")
    return parse(path, name)


def load_usable(source: str) -> MetaSet:
    """A set that `rewrite meta validate` accepts, else a MetaSetError listing what is wrong with it."""
    meta = load(source)
    found = problems(meta)
    if found:
        raise MetaSetError(f"meta set {meta.path} is not usable in a prompt: {describe_problems(found)} "
                           "(see `rewrite meta validate`)")
    return meta


def describe_problems(found: list[str]) -> str:
    """The first five of `problems`' findings, and how many more: enough to fix, short enough to read."""
    return "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")


def parse(path: Path, name: str) -> MetaSet:
    pairs: list[Example] = []
    groups: list[tuple[str, ...]] = []
    provenance = None
    first = True
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MetaSetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetaSetError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if isinstance(row, dict) and set(row) == {"provenance"}:
            if not first:
                raise MetaSetError(f"{path}:{lineno}: a provenance line may only be the file's first line")
            if not isinstance(row["provenance"], dict):
                raise MetaSetError(f'{path}:{lineno}: expected {{"provenance": {{...}}}} (an object)')
            provenance = row["provenance"]
        elif isinstance(row, dict) and set(row) == {"source", "target"}:
            pairs.append((str(row["source"]), str(row["target"])))
        elif isinstance(row, dict) and set(row) == {"captions"} and isinstance(row["captions"], list):
            groups.append(tuple(str(c) for c in row["captions"]))
        else:
            raise MetaSetError(
                f'{path}:{lineno}: expected {{"source": ..., "target": ...}} or {{"captions": [...]}}'
            )
        first = False
    if pairs and groups:
        raise MetaSetError(f"{path}: mixes source/target pairs and caption groups")
    if not pairs and not groups:
        raise MetaSetError(f"{path}: holds no examples")
    return MetaSet(name=name, path=path, pairs=tuple(pairs), groups=tuple(groups), provenance=provenance)


def _jsonl_line(row: dict) -> str:
    """One JSON line that `parse` reads back whole: readable UTF-8, unless a string holds a character that
    str.splitlines() breaks at (U+2028, U+0085, ...), which is then written \\u-escaped."""
    line = json.dumps(row, ensure_ascii=False, allow_nan=False)
    return line if len(line.splitlines()) == 1 else json.dumps(row, allow_nan=False)


def write(path: str | Path, pairs=(), groups=(), provenance: dict | None = None) -> MetaSet:
    """Write a pair set or a group set (with an optional provenance line) whole or not at all (a temp file
    beside it, renamed onto it); a set that `problems` finds unusable is refused, so no import leaves one."""
    path = Path(path)
    if provenance is not None and not isinstance(provenance, dict):
        raise MetaSetError(f"{path}: provenance must be a dict, got {type(provenance).__name__}; not written")
    candidate = MetaSet(name=path.stem, path=path, pairs=tuple(tuple(p) for p in pairs),
                        groups=tuple(tuple(g) for g in groups))
    if bool(candidate.pairs) == bool(candidate.groups):
        raise MetaSetError(f"{path}: a meta set holds either source/target pairs or caption groups (got "
                           f"{len(candidate.pairs)} pairs and {len(candidate.groups)} groups); not written")
    found = problems(candidate)
    if found:
        raise MetaSetError(f"{path}: not written, the set is not usable in a prompt: {describe_problems(found)}")
    rows = [{"provenance": provenance}] if provenance is not None else []
    rows += [{"source": s, "target": t} for s, t in candidate.pairs]
    rows += [{"captions": list(g)} for g in candidate.groups]
    try:
        text = "".join(_jsonl_line(row) + "\n" for row in rows)
    except (TypeError, ValueError) as e:
        raise MetaSetError(f"{path}: provenance is not plain JSON ({e}); not written") from None
    atomic.write_text(path, text)
    return parse(path, path.stem)


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
