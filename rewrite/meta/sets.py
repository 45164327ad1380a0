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
from typing import Sequence

from ..workdir import atomic
from ..rewriting import clip_tokens, seeds, validate
from .. import resources, defaults, storage

Example = tuple[str, str]

# The commands that write meta sets, as their provenance line's `made_by` names them: a file whose first
# line names one of them was written by this tool, and only such a file may `--overwrite` replace.
IMPORT_LACLIP = "rewrite meta import-laclip"
IMPORT_COCO = "rewrite meta import-coco"
GENERATE = "rewrite meta generate"
MADE_BY = (IMPORT_LACLIP, IMPORT_COCO, GENERATE)


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
        data = storage.read_bytes(self.path)
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
    `coco`), or the file name without `.jsonl` of a set's file (never its path). A file named like a
    shipped set (DIR/chatgpt.jsonl, as `rewrite meta import-laclip` writes them) goes by that set's name,
    as --meta-dir reads it: a run records the set's digest, so two versions never mix in one work dir."""
    name = defaults.SOURCE_ALIASES.get(source, source)
    if name in defaults.SOURCES:
        return name
    if not name.endswith(".jsonl"):
        raise MetaSetError(
            f"unknown source {source!r}: choose one of {', '.join(defaults.SOURCES)} (or 'mscoco'), "
            "or give the path of a .jsonl meta set"
        )
    stem = Path(name).name[: -len(".jsonl")]
    if not _NAME.fullmatch(stem):
        raise MetaSetError(f"meta set file {source}: its name {stem!r} becomes a folder and a column, so it may "
                           "hold only letters, digits, '-' and '_' (and start with a letter or digit): rename the file")
    return defaults.SOURCE_ALIASES.get(stem, stem)


def chosen(where: Path, present: Sequence[str], sources: Sequence[str] | None, verb: str) -> list[str]:
    """The sets of `present` (as a work dir or an export names them) that `sources` asks for, each a
    name, an alias or a custom set's file; None: all of them. `verb`: how the sets came there (run,
    exported), for the refusal of one that did not."""
    if not sources:
        return list(present)
    names = []
    for source in sources:
        try:
            name = source if source in present else source_name(source)
        except MetaSetError:
            name = source
        if name not in present:
            raise MetaSetError(f"{where} has no rewrites of {source} (sets {verb} there: {', '.join(present) or 'none'})")
        names.append(name)
    return list(dict.fromkeys(names))


def is_file_source(source: str) -> bool:
    """Whether --source names a set's file (DIR/chatgpt.jsonl included) rather than a shipped set."""
    source_name(source)  # an unknown name, or a file name that cannot name a folder, is refused here too
    return defaults.SOURCE_ALIASES.get(source, source) not in defaults.SOURCES


def load(source: str) -> MetaSet:
    """A shipped set by name (chatgpt, bard, coco/mscoco, human) or a JSONL file of the same format."""
    name = source_name(source)
    if not is_file_source(source):
        return parse(resources.resource("meta_pairs", f"{name}.jsonl"), name)
    path = Path(source)
    if not storage.is_file(path):
        raise MetaSetError(f"meta set file {path} does not exist")
    return parse(path, name)


def load_usable(source: str, num_examples: int = defaults.NUM_EXAMPLES) -> MetaSet:
    """A set that `rewrite meta validate --num-examples K` accepts, else a MetaSetError listing what is
    wrong with it: `rewrite run` reads its sets through here, before any model loads."""
    meta = load(source)
    found = problems(meta, num_examples)
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
        text = storage.read_text(path)
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
            pairs.append((_string(row["source"], path, lineno, '"source"'), _string(row["target"], path, lineno, '"target"')))
        elif isinstance(row, dict) and set(row) == {"captions"} and isinstance(row["captions"], list):
            groups.append(tuple(_string(c, path, lineno, f'"captions"[{i}]') for i, c in enumerate(row["captions"])))
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


_JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object",
               type(None): "null"}


def _string(value, path: Path, lineno: int, where: str) -> str:
    """A set's string as written; any other JSON value is refused (never turned into its text)."""
    if not isinstance(value, str):
        raise MetaSetError(f"{path}:{lineno}: {where} is {_JSON_TYPES[type(value)]} ({json.dumps(value)[:40]}), "
                           "not a string")
    return value


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
    found = problems(candidate, num_examples=1)  # k is a run's setting: `meta validate --num-examples` checks it
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


def check_target(path: str | Path, overwrite: bool) -> Path:
    """Where a meta command may write a set, checked before any work: a `.jsonl` file whose name can
    name a --source; never through a symlink (which could point anywhere, and replacing it would cut
    it), onto a folder, or over a file the user wrote. An existing set is replaced only with `overwrite`,
    and only when this tool wrote it (its first line is a provenance line naming one of MADE_BY): a
    hand-written set is refused even then."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise MetaSetError(f"{path}: a meta set file's name must end in .jsonl (that is how --source and "
                           "--meta-dir tell a file from a shipped set's name)")
    source_name(str(path))
    target = storage.link_target(path)
    if target is not None:
        raise MetaSetError(f"{path}: is a symlink (to {target}); refusing to write through or "
                           "replace it: remove it or choose another place")
    if not storage.exists(path):
        return path
    if not storage.is_file(path):
        raise MetaSetError(f"{path}: exists and is not a file; refusing to replace it")
    if not overwrite:
        raise MetaSetError(f"{path}: exists; refusing to replace it (--overwrite replaces a set that "
                           "`rewrite meta` wrote)")
    if _made_by(path) not in MADE_BY:
        raise MetaSetError(f"{path}: exists and `rewrite meta` did not write it (its first line is no provenance "
                           "line of import-laclip, import-coco or generate); refusing to replace it even with "
                           "--overwrite: move it or choose another place")
    return path


def _made_by(path: Path) -> str | None:
    """The `made_by` of the provenance line a set file starts with (None without one), read from the
    first line alone: a hand-written file may hold anything."""
    with storage.open_file(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        row = json.loads(first)
    except (ValueError, RecursionError):  # not JSON, not UTF-8
        return None
    provenance = row.get("provenance") if isinstance(row, dict) and set(row) == {"provenance"} else None
    return provenance.get("made_by") if isinstance(provenance, dict) else None


def sample_examples(meta: MetaSet, rng: random.Random, k: int) -> list[Example]:
    """k examples drawn without replacement; for groups, two distinct captions of one group each."""
    if k > len(meta):
        raise MetaSetError(f"meta set {meta.name} has {len(meta)} entries, fewer than k={k}")
    chosen = seeds.sample_indices(rng, len(meta), k)
    if meta.pairs:
        return [meta.pairs[i] for i in chosen]
    out = []
    for i in chosen:
        a, b = seeds.sample_indices(rng, len(meta.groups[i]), 2)
        out.append((meta.groups[i][a], meta.groups[i][b]))
    return out


def word_overlap(a: str, b: str) -> float:
    """SequenceMatcher ratio on lower-cased words: the overlap statistic LaCLIP reports."""
    return difflib.SequenceMatcher(None, a.lower().split(), b.lower().split()).ratio()


# An example string may be as long as a caption CLIP reads whole (validate.CLIP_CONTEXT tokens, start
# and end included), the bound the run holds every rewrite to.
MAX_EXAMPLE_CLIP_TOKENS = validate.CLIP_CONTEXT
_LINE_BREAKS = "\u2028\u2029"  # where str.splitlines() breaks besides control characters


def problems(meta: MetaSet, num_examples: int = defaults.NUM_EXAMPLES) -> list[str]:
    """What makes a meta set unusable in a prompt of `num_examples` examples: `rewrite meta validate` and
    `rewrite run` (through load_usable) both ask this, so a set one accepts the other runs.

    Too few entries for k; an empty string, `=>`, a control character or line break (each breaks the
    prompt's format or its one-line answer), space other than one between words; duplicates.

    And a length bound: every string at most MAX_EXAMPLE_CLIP_TOKENS of CLIP's tokens. A longer target
    teaches the model rewrites the run then rejects (over_77_clip_tokens), a longer source is a caption
    CLIP cannot read whole. It also makes k examples fit a prompt: with single spaces and no control
    characters (which CLIP's tokenizer drops or merges, so they would escape the count), an LLM's
    byte-level BPE counts such text about as CLIP's does (SmolLM2 at 77 CLIP tokens: English 1.0x, CJK 0.75x;
    at worst 3-4x, for runs of emoji or HTML entities), so the 2k strings of k examples take about 2 x 77 x k
    tokens, 462 for LaCLIP's k=3: with the caption's share (--max-caption-tokens 256) and the answer (77),
    within the 2,048 of LaCLIP's LLaMA and far within the 8,192 of the embedded model. A 20,000-word
    example, which no context holds, is refused here rather than after a model loads."""
    found = []
    if num_examples > len(meta):
        found.append(f"--num-examples {num_examples} is more than its {len(meta)} {meta.kind}")
    strings = [s for ex in meta.pairs for s in ex] if meta.pairs else [c for g in meta.groups for c in g]
    for s in strings:
        found += string_problems(s)
    if meta.pairs:
        sources = [p[0] for p in meta.pairs]
        for dup in sorted({s for s in sources if sources.count(s) > 1}):
            found.append(f"duplicate source: {_shown(dup)}")
        found += [f"target equals source: {_shown(s)}" for s, t in meta.pairs if s == t]
    for g in meta.groups:
        if len(g) < 2:
            found.append(f"a group with fewer than 2 captions: {_shown(g)}")
        if len(set(g)) != len(g):
            found.append(f"a group with duplicate captions: {_shown(g)}")
    return found


def string_problems(s: str) -> list[str]:
    """What makes one string unusable as an example's source or target (see `problems`)."""
    if not s.strip():
        return ["an empty string"]
    found = []
    if "=>" in s:
        found.append(f"'=>' inside: {_shown(s)}")
    if validate.has_control_characters(s) or any(ch in s for ch in _LINE_BREAKS):
        found.append(f"a control character, tab or line break inside: {_shown(s)}")
    elif s != " ".join(s.split()):
        found.append(f"space other than one between words: {_shown(s)}")
    tokens = clip_tokens.count(s)
    if tokens > MAX_EXAMPLE_CLIP_TOKENS:
        found.append(f"{tokens} CLIP tokens, more than the {MAX_EXAMPLE_CLIP_TOKENS} an example may hold: {_shown(s)}")
    return found


def _shown(value, limit: int = 80) -> str:
    """A string (or group) as a problem quotes it: its repr, cut after `limit` characters (the problem may
    be its length)."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}..."


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
