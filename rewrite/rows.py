"""A chunk's rows as pure functions: what identifies a row, the request for one (caption, rewrite index,
attempt), the judgement of a completion, and the output columns. The runner's two schedulers (a chunk
at a time, or streaming) are built from these, so both give the same rewrites.

A row's identity seeds its examples and sampling. With dedup, identical captions share it (and so share
their rewrite, whichever shard or chunk they fall in); without, the key does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import pyarrow as pa

from . import clip_tokens, layout, meta, prompt, seeds, validate
from .engines.base import Completion, Request

Result = tuple  # (rewrite or None, status, reason or None) of one (identity, rewrite index)


def identities(keys: Sequence[str], captions: Sequence[str | None], dedup: bool) -> list[str | None]:
    """Each row's identity; None for a row without a caption (it is skipped)."""
    return [(prompt.normalise_caption(c) if dedup else k) if c is not None and c.strip() else None
            for k, c in zip(keys, captions)]


def unique_captions(identity: Sequence[str | None], captions: Sequence[str | None]) -> dict[str, str]:
    """The first caption of each identity, in row order."""
    unique: dict[str, str] = {}
    for ident, caption in zip(identity, captions):
        if ident is not None and ident not in unique:
            unique[ident] = caption
    return unique


@dataclass(frozen=True)
class Prompting:
    """What turns (identity, caption, index, attempt) into a request, fixed for a run."""

    source: str
    seed: int
    example_sets: int
    num_examples: int
    max_caption_tokens: int
    meta_set: meta.MetaSet
    template: prompt.Template
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    budget: int  # prompt tokens: the context less the longest completion
    chat: prompt.ChatRender | None  # the engine's chat template, for a chat prompt template
    min_faithfulness: float | None = None  # the judge's gate (validate.check)

    def caption(self, caption: str) -> tuple[str, bool]:
        """The caption as it goes into prompts, and whether it was cut (its share of a prompt is capped, so
        one huge caption costs what a caption costs)."""
        return prompt.cap_caption(caption, self.encode, self.decode, self.max_caption_tokens)

    def request(self, ident: str, caption: str, index: int, attempt: int) -> tuple[Request, list[str], bool]:
        """The request for one attempt at rewrite `index` of `ident` (`caption` as `caption()` gave it),
        the targets of its examples (a rewrite copying one is rejected) and whether the prompt cut it."""
        rng = seeds.example_rng(self.seed, self.source, ident, index, attempt, self.example_sets)
        examples = meta.sample_examples(self.meta_set, rng, self.num_examples)
        text, ids, cut = prompt.fit_prompt(self.template, examples, caption, self.encode, self.decode, self.budget,
                                           self.chat)
        request = Request(text, seeds.generation_seed(self.seed, self.source, ident, index, attempt),
                          group="\n".join(s for example in examples for s in example), prompt_ids=tuple(ids))
        return request, [t for _, t in examples], cut


def judge(completion: Completion, caption: str, targets: Sequence[str],
          min_faithfulness: float | None = None) -> tuple[str, str | None]:
    """(the rewrite parsed from `completion`, the reason to reject it or None)."""
    text = prompt.parse_completion(completion.text)
    return text, validate.check(text, caption, completion, targets, clip_tokens.count, min_faithfulness)


def columns(keys: Sequence[str], identity: Sequence[str | None], results: Mapping[tuple[str, int], Result],
            num_rewrites: int, schema: pa.Schema) -> tuple[pa.Table, int, int]:
    """The sidecar rows of a chunk (key, then rewrite, status and reason per index), and its ok and failed
    counts. Every identity of the chunk must have its results."""
    out: dict[str, list] = {layout.KEY: list(keys)}
    ok = failed = 0
    for i in range(num_rewrites):
        values, statuses, reasons = [], [], []
        for ident in identity:
            if ident is None:
                value, status, reason = None, layout.STATUS_SKIPPED, validate.EMPTY_CAPTION
            else:
                value, status, reason = results[ident, i]
            ok += status == layout.STATUS_OK
            failed += status == layout.STATUS_FAILED
            values.append(value)
            statuses.append(status)
            reasons.append(reason)
        out[layout.rewrite_column(i, num_rewrites)] = values
        out[layout.suffixed(layout.STATUS, i, num_rewrites)] = statuses
        out[layout.suffixed(layout.REASON, i, num_rewrites)] = reasons
    return pa.table(out, schema=schema), ok, failed


def final(text: str, reason: str | None, attempt: int, max_attempts: int, cut: bool) -> Result | None:
    """The result of a judged attempt, or None when it is to be tried again."""
    if reason is None:
        return text, layout.STATUS_OK, validate.CAPTION_CUT if cut else None
    if attempt + 1 < max_attempts:
        return None
    return None, layout.STATUS_FAILED, reason


def schedule_order(prompts: Sequence[str], groups: Sequence[str], schedule) -> list[int]:
    """The order to submit requests in: grouped by their examples (`groups`: a group's prompts share a
    prefix), then by length (less padding in a batch)."""
    def key(i: int) -> tuple:
        return ((groups[i] if schedule.group_by_examples else ""),
                (len(prompts[i]) if schedule.sort_by_length else 0))

    return sorted(range(len(prompts)), key=key)


def chunk_stats(rows: int, unique: int) -> dict:
    """A chunk's counters before any request: `count` adds to them."""
    return {"rows": rows, "unique_captions": unique, "requests": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0,
            "generated_tokens": 0}


def count(stats: dict, completion: Completion) -> None:
    """One request's completion in a chunk's stats."""
    stats["requests"] += 1
    stats["prompt_tokens"] += completion.prompt_tokens
    stats["cached_prompt_tokens"] += completion.cached_tokens
    stats["generated_tokens"] += completion.generated_tokens
