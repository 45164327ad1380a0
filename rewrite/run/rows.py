"""A chunk's rows as pure functions: what identifies a row, the request for one (caption, rewrite index,
attempt), the judgement of a completion, and the output columns. The runner's two schedulers (a chunk
at a time, or streaming) are built from these, so both give the same rewrites.

A row's identity seeds its examples and sampling. With dedup, identical captions share it (and so share
their rewrite, whichever shard or chunk they fall in); without, the key does.

A row's attempts come in rounds of max_attempts: a first run gives each rewrite one round, and each
retry round (`rewrite run --retry-failed`) one more to the rewrites that failed, numbered on. A rewrite the
engine could not serve waits (ENGINE_UNAVAILABLE, with the attempt it is to resume at) and a later run
takes its chunk up again (`reopen`): so whatever happened in between, every rewrite ends as an
uninterrupted run would have left it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import pyarrow as pa

from ..rewriting import clip_tokens, prompt, seeds, validate
from ..workdir import layout
from .. import meta
from ..engines.base import Completion, Request

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
    encode_many: Callable[[list[str]], list[list[int]]] | None = None  # `encode` for many texts at once
    ids: prompt.PromptIds | None = None  # prompt ids from pieces (prompt.assemble); None: tokenize each prompt whole

    def checked(self) -> Prompting:
        """This Prompting with its prompt ids put together from pieces where the pieces check
        (prompt.assemble: hundreds of prompts tokenized, ~0.03 s a set) finds that the same as tokenizing
        each prompt whole."""
        return replace(self, ids=prompt.assemble(self.template, self.encode, self.meta_set.examples(), self.num_examples,
                                                 self.meta_set, self.encode_many))

    def captions(self, captions: Sequence[str]) -> list[prompt.Fitted]:
        """Each caption as it goes into prompts, its token ids and whether it was cut (its share of a
        prompt is capped, so one huge caption costs what a caption costs); tokenized together."""
        return prompt.cap_captions(captions, self.tokenized, self.encode, self.decode, self.max_caption_tokens)

    def tokenized(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each of `texts`, in one call where the engine has a batch tokenizer."""
        return self.encode_many(texts) if self.encode_many is not None else [self.encode(t) for t in texts]

    def request(self, ident: str, caption: prompt.Fitted, index: int, attempt: int) -> tuple[Request, list[str], bool]:
        """The request for one attempt at rewrite `index` of `ident` (`caption` as `captions()` gave it),
        the targets of its examples (a rewrite copying one is rejected) and whether the prompt cut it."""
        examples = self.examples(ident, index, attempt)
        return self._made(ident, index, attempt, examples, self._prompt(examples, caption))

    def requests(self, jobs: Sequence[tuple[str, prompt.Fitted, int, int]]) -> list[tuple[Request, list[str], bool]]:
        """`request` of each (identity, fitted caption, rewrite index, attempt), with the prompts tokenized
        whole among them tokenized in one batch (`whole_tokenized`) rather than one at a time."""
        drawn = [self.examples(ident, index, attempt) for ident, _, index, attempt in jobs]
        ask = self.whole_tokenized([(examples, caption) for examples, (_, caption, _, _) in zip(drawn, jobs)])
        return [ask._made(ident, index, attempt, examples, ask._prompt(examples, caption))
                for (ident, caption, index, attempt), examples in zip(jobs, drawn)]

    def whole_tokenized(self, prompts: Sequence[tuple[Sequence[prompt.Example], prompt.Fitted]]) -> Prompting:
        """This Prompting with the whole prompts of `prompts` (examples, fitted caption) that its pieces do not
        put together tokenized beforehand in one batch: a fast tokenizer's batch call costs about what one
        prompt costs through `encode` (chat templates and tokenizers that fail the pieces check take this
        way for every prompt). The same ids: `encode_many` is `encode` of each."""
        texts = [prompt.prompt_text(self.template, examples, caption[0], self.chat)
                 for examples, caption in prompts if not _pieces_apply(self.ids, caption)]
        if len(texts) < 2:
            return self
        known, encode = dict(zip(texts, self.tokenized(texts))), self.encode
        return replace(self, encode=lambda text: known[text] if text in known else encode(text))

    def first_request_either_way(self, ident: str, caption: prompt.Fitted, index: int, examples: Sequence[prompt.Example],
                                 to_check: prompt.PromptIds | None) -> tuple[Request, list[str], bool] | None:
        """For a Prompting made before its pieces check (`ids` None) while the check runs: the first
        attempt's request (`examples` its draw) as the checked Prompting will make it, whichever way the
        check goes (with `to_check`, the PromptIds the check decides on, or with whole prompts), or None
        where the two ways differ: that request waits for the check, so that no request depends on timing."""
        whole = self._prompt(examples, caption)
        if self._from_pieces(to_check, examples, caption) not in (None, whole):
            return None
        return self._made(ident, index, 0, examples, whole)

    def examples(self, ident: str, index: int, attempt: int) -> list[prompt.Example]:
        """The examples an attempt's prompt shows."""
        rng = seeds.example_rng(self.seed, self.source, ident, index, attempt, self.example_sets)
        return meta.sample_examples(self.meta_set, rng, self.num_examples)

    def _made(self, ident: str, index: int, attempt: int, examples: Sequence[prompt.Example],
              prompted: tuple[str, list[int], bool]) -> tuple[Request, list[str], bool]:
        text, ids, cut = prompted
        request = Request(text, seeds.generation_seed(self.seed, self.source, ident, index, attempt),
                          group="\n".join([s for example in examples for s in example]), prompt_ids=tuple(ids))
        return request, [t for _, t in examples], cut

    def _prompt(self, examples: Sequence[prompt.Example], caption: prompt.Fitted) -> tuple[str, list[int], bool]:
        """prompt.fit_prompt's (text, ids, cut), with the ids put together from pieces where that is
        checked to be the same (`ids`) and the prompt fits."""
        return (self._from_pieces(self.ids, examples, caption)
                or prompt.fit_prompt(self.template, examples, caption[0], self.encode, self.decode, self.budget, self.chat))

    def _from_pieces(self, ids: prompt.PromptIds | None, examples: Sequence[prompt.Example],
                     caption: prompt.Fitted) -> tuple[str, list[int], bool] | None:
        """The prompt with its ids put together by `ids` (for a caption of one word at least), if it fits."""
        text, caption_ids, _ = caption
        if _pieces_apply(ids, caption):
            assembled = ids.ids(examples, caption_ids)
            if len(assembled) <= self.budget:
                return self.template.render(examples, text), assembled, False
        return None

    def cut_before(self, ident: str, caption: prompt.Fitted, index: int, attempt: int) -> bool:
        """Whether the prompt of an attempt before `attempt` was cut. A rewrite is `caption_cut` when any of
        its prompts was, so one taken up again at `attempt` by a later run carries the cuts before it."""
        return any(self.request(ident, caption, index, a)[2] for a in range(attempt))


def _pieces_apply(ids: prompt.PromptIds | None, caption: prompt.Fitted) -> bool:
    """Whether a prompt's ids may be put together from pieces: checked pieces, and a caption of one word at least."""
    return ids is not None and bool(caption[0])


Made = tuple  # (the request, the targets of its examples, whether its prompt cut the caption)


def first_requests(ask: Prompting, jobs: Sequence[tuple[str, str, int, int]]) -> list[tuple[prompt.Fitted, bool, Made]]:
    """For each (identity, caption, rewrite index, attempt): the caption fitted (each identity once, all
    tokenized together), whether a prompt of an attempt before this one cut it (`cut_before`), and the
    request. What the stream's builder makes of a chunk's new rows, in its process or a worker's."""
    unique = dict(((ident, caption) for ident, caption, _, _ in jobs))
    fitted = dict(zip(unique, ask.captions(list(unique.values()))))
    made = ask.requests([(ident, fitted[ident], index, attempt) for ident, _, index, attempt in jobs])
    return [(fitted[ident], fitted[ident][2] or ask.cut_before(ident, fitted[ident], index, attempt), request)
            for (ident, _, index, attempt), request in zip(jobs, made)]


@dataclass(frozen=True)
class Unchecked:
    """A set's Prompting before its pieces check (`Prompting.checked`), and the PromptIds the check
    decides on (prompt.to_check): what its first requests are made with while the check runs."""

    ask: Prompting
    to_check: prompt.PromptIds | None

    @classmethod
    def of(cls, ask: Prompting) -> Unchecked:
        return cls(ask, prompt.to_check(ask.template, ask.encode))


def first_requests_either_way(unchecked: Unchecked,
                              jobs: Sequence[tuple[str, str, int, int]]) -> list[tuple[prompt.Fitted, bool, Made] | None]:
    """`first_requests` made while the set's pieces check runs: None for a job whose request depends on
    the check's verdict (see `Prompting.first_request_either_way`), and for a later attempt."""
    ask, to_check = unchecked.ask, unchecked.to_check
    unique = dict(((ident, caption) for ident, caption, _, attempt in jobs if not attempt))
    fitted = dict(zip(unique, ask.captions(list(unique.values()))))
    drawn = {(ident, index): ask.examples(ident, index, 0) for ident, _, index, attempt in jobs if not attempt}
    if to_check is not None:
        to_check.learn([example for examples in drawn.values() for example in examples], ask.tokenized)
    ask = ask.whole_tokenized([(drawn[ident, index], fitted[ident]) for ident, _, index, attempt in jobs if not attempt])
    out = []
    for ident, _, index, attempt in jobs:
        made = None if attempt else ask.first_request_either_way(ident, fitted[ident], index, drawn[ident, index], to_check)
        out.append(None if made is None else (fitted[ident], fitted[ident][2], made))
    return out


def requests_again(ask: Prompting, jobs: Sequence[tuple[str, prompt.Fitted, int, int]]) -> list[Made]:
    """The request of each (identity, fitted caption, rewrite index, attempt): a rejected rewrite's next try."""
    return ask.requests(jobs)


def judge(completion: Completion, caption: str, targets: Sequence[str],
          min_faithfulness: float | None = None) -> tuple[str, str | None]:
    """(the rewrite parsed from `completion`, the reason to reject it or None)."""
    return judge_many([(completion, caption, targets, min_faithfulness)])[0]


def judge_many(judged: Sequence[tuple[Completion, str, Sequence[str], float | None]]) -> list[tuple[str, str | None]]:
    """`judge` of each (completion, caption, targets, min_faithfulness), their CLIP tokens counted together."""
    texts = [prompt.parse_completion(completion.text) for completion, *_ in judged]
    counted = dict(zip(texts, clip_tokens.count_many(texts)))
    return [(text, validate.check(text, caption, completion, targets, counted.__getitem__, gate))
            for text, (completion, caption, targets, gate) in zip(texts, judged)]


@dataclass(frozen=True)
class Reopened:
    """A chunk an earlier run committed, taken up again: its rows as committed, its stats, the rewrites
    to request again ((identity, rewrite index) -> the attempt to start at) and the reasons they had."""

    table: pa.Table
    stats: dict
    redo: dict
    reasons: frozenset


def reopen(committed: pa.Table, stats: dict, pending: Sequence[Sequence[int]], committed_round: int, round_: int,
           identity: Sequence[str | None], num_rewrites: int, max_attempts: int) -> Reopened | None:
    """What a run requests again of a chunk committed in retry round `committed_round`: its rewrites
    waiting for the engine (`pending`: [row, rewrite index, attempt to resume at]), and when this run's
    round is a later one, every rewrite that failed, from the first attempt of the round after its own.
    None when there is nothing to request."""
    redo = {(identity[row], i): attempt for row, i, attempt in pending}
    cells = [(row, i) for row, i, _ in pending]
    for i in range(num_rewrites if committed_round < round_ else 0):
        statuses = committed.column(layout.suffixed(layout.STATUS, i, num_rewrites)).to_pylist()
        for row, status in enumerate(statuses):
            if status == layout.STATUS_FAILED and identity[row] is not None:
                redo.setdefault((identity[row], i), (committed_round + 1) * max_attempts)
                cells.append((row, i))
    if not redo:
        return None
    reasons = {i: committed.column(layout.suffixed(layout.REASON, i, num_rewrites)).to_pylist() for i in range(num_rewrites)}
    return Reopened(committed, stats, redo, frozenset(reasons[i][row] for row, i in cells))


def tally(table: pa.Table, num_rewrites: int) -> dict:
    """The ok, failed and skipped counts and the failure reasons of committed sidecar rows."""
    counts, reasons = Counter({layout.STATUS_OK: 0, layout.STATUS_FAILED: 0, layout.STATUS_SKIPPED: 0}), Counter()
    for i in range(num_rewrites):
        statuses = table.column(layout.suffixed(layout.STATUS, i, num_rewrites)).to_pylist()
        for status, reason in zip(statuses, table.column(layout.suffixed(layout.REASON, i, num_rewrites)).to_pylist()):
            counts[status] += 1
            reasons[reason] += status == layout.STATUS_FAILED
    return {**counts, "failed_reasons": {reason: n for reason, n in reasons.items() if n}}


def columns(keys: Sequence[str], identity: Sequence[str | None], results: Mapping[tuple[str, int], Result],
            num_rewrites: int, schema: pa.Schema, waiting: Mapping[tuple[str, int], int],
            reopened: Reopened | None = None) -> tuple[pa.Table, dict, list[list[int]]]:
    """The sidecar rows of a chunk (key, then rewrite, status and reason per index), its ok, failed and
    skipped counts, and its rewrites waiting for the engine ([row, rewrite index, attempt to resume at],
    from `waiting`). Every identity of the chunk must have its results, but in a reopened chunk only
    those it requested again: its other rows are kept as committed."""
    out: dict[str, list] = {layout.KEY: list(keys)}
    counts = Counter({layout.STATUS_OK: 0, layout.STATUS_FAILED: 0, layout.STATUS_SKIPPED: 0})
    pending = []
    for i in range(num_rewrites):
        names = (layout.rewrite_column(i, num_rewrites), layout.suffixed(layout.STATUS, i, num_rewrites),
                 layout.suffixed(layout.REASON, i, num_rewrites))
        kept = [reopened.table.column(name).to_pylist() for name in names] if reopened else None
        cells: list[tuple] = []
        for row, ident in enumerate(identity):
            if ident is None:
                cell = None, layout.STATUS_SKIPPED, validate.EMPTY_CAPTION
            elif kept is not None and (ident, i) not in reopened.redo:
                cell = tuple(column[row] for column in kept)
            else:
                cell = results[ident, i]
                if cell[2] == validate.ENGINE_UNAVAILABLE:
                    pending.append([row, i, waiting[ident, i]])
            counts[cell[1]] += 1
            cells.append(cell)
        for name, values in zip(names, zip(*cells) if cells else ((), (), ())):
            out[name] = list(values)
    return pa.table(out, schema=schema), dict(counts), pending


def final(text: str, reason: str | None, attempt: int, attempts: int, cut: bool) -> Result | None:
    """The result of a judged attempt, or None when it is to be tried again: a rejected rewrite is tried
    until `attempts` (max_attempts per retry round of its shard) are spent. A request the engine could not
    serve is tried no more in this run: its rewrite waits for the next (see `reopen`)."""
    if reason is None:
        return text, layout.STATUS_OK, validate.CAPTION_CUT if cut else None
    if attempt + 1 < attempts and reason != validate.ENGINE_UNAVAILABLE:
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


MAX_ERROR_SAMPLES = 10  # distinct engine error messages kept in a chunk's stats


def note_error(errors: Counter, completion: Completion) -> None:
    """A request's error message in a chunk's count of them (`engine_errors`; a few distinct ones kept)."""
    if completion.error and completion.sent and (completion.error in errors or len(errors) < MAX_ERROR_SAMPLES):
        errors[completion.error] += 1


def count(stats: dict, completion: Completion) -> None:
    """One request's completion in a chunk's stats (one the engine did not send is no request)."""
    stats["requests"] += completion.sent
    stats["prompt_tokens"] += completion.prompt_tokens
    stats["cached_prompt_tokens"] += completion.cached_tokens
    stats["generated_tokens"] += completion.generated_tokens


ADDED_UP = ("requests", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "seconds")


def reopened_stats(reopened: Reopened, now: dict) -> dict:
    """A reopened chunk's stats: its rows' counts as committed now (`now`), the work of every run that
    requested its rows added up, and the reasons of the rewrites it requested again replaced by how
    they ended now. Rows cut stay as first counted (a retry builds the prompts the first run built)."""
    old = reopened.stats
    stats = {**now, **{k: old.get(k, 0) + now[k] for k in ADDED_UP}, "captions_cut": old.get("captions_cut", 0)}
    stats["rejected"] = dict(Counter(old.get("rejected", {})) + Counter(now["rejected"]))
    kept = {reason: n for reason, n in old.get("failed_reasons", {}).items() if reason not in reopened.reasons}
    stats["failed_reasons"] = dict(Counter(kept) + Counter(now["failed_reasons"]))
    errors = Counter(old.get("engine_errors", {})) + Counter(now.get("engine_errors", {}))
    if errors:
        stats["engine_errors"] = dict(errors)
    return stats
