"""transformers on CPU (or one GPU), with its own decode loop over a KV cache.

Why not `generate`: a static batch there runs until its longest row stops, so one rambling row makes
every row pay for 77 steps. Here a row leaves the batch (and its cache rows) as soon as it stops, new
requests join the running batch when it is half empty (continuous batching), and requests of one group
(same instruction and examples) have their shared prefix computed once and its cache copied to each.

Each row samples with its own seeded generator (`sample_rows`), so a row's rewrite does not depend on
which other rows share its batch.

A row costs what a row costs: prompts are prefilled in buckets of similar length (`prefill_buckets`), and
the running batch decodes in lanes, kept apart where padding one to the other's cache width would cost
more than a forward pass (`pack_lanes`), so one very long prompt never makes the rows beside it pay for
its width, in compute or in KV cache.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from . import model as model_lib
from ..defaults import BATCH_SIZE, Sampling
from .base import Completion, EngineError, Intake, Request, TokenizerEngine, in_order

CANDIDATES = (64, 2048)  # widths searched for a row's top-p nucleus before the whole vocabulary
MIN_SHARED_PREFIX = 8  # tokens; a shorter shared prefix is not worth a separate forward pass
# A prefill bucket's longest prompt is at most BUCKET_RATIO x its shortest + BUCKET_SLACK tokens. A prefill
# pass pays for a padded token as for a real one: so at most a third of a pass's tokens are padding (about
# a sixth for evenly spread lengths) and one outlier never sets its width, while a chunk's LaCLIP prompts
# (113-132 tokens with the demo captions) stay one pass. A tighter ratio takes more passes, each reading
# the weights again (and on a GPU, less well filled). The slack keeps short prompts together, where a few
# tokens of padding cost less than one more pass.
BUCKET_RATIO = 1.5
BUCKET_SLACK = 16
DTYPES = ("float32", "bfloat16", "float16", "auto")  # auto: the checkpoint's own


def sample_rows(logits: torch.Tensor, generators: Sequence[torch.Generator], temperature: float,
                top_p: float) -> torch.Tensor:
    """One token per row: temperature, then top-p (nucleus), drawn with that row's generator.

    Sorting the whole vocabulary at every step costs more than a small model's step, so each row's
    nucleus is looked for among its most likely few hundred tokens first, and only a row whose
    nucleus is wider is searched wider: the result is the same as with a full sort."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    draws = torch.cat([torch.rand(1, generator=g) for g in generators]).to(logits.device)
    chosen = torch.empty(len(probs), dtype=torch.long, device=logits.device)
    rows = torch.arange(len(probs), device=logits.device)
    vocab = probs.shape[-1]
    for k in (*(c for c in CANDIDATES if c < vocab), vocab):
        top, order = torch.topk(probs[rows], k, dim=-1)
        cumulative = top.cumsum(dim=-1)
        found = (cumulative[:, -1] >= top_p) | (k == vocab)
        top, order, cumulative, here = top[found], order[found], cumulative[found], rows[found]
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        top = top.masked_fill(cumulative - top >= top_p, 0.0)
        top = top / top.sum(dim=-1, keepdim=True)
        positions = torch.searchsorted(top.cumsum(dim=-1), draws[here].unsqueeze(-1)).clamp(max=k - 1)
        chosen[here] = order.gather(-1, positions).squeeze(-1)
        rows = rows[~found]
        if not len(rows):
            break
    return chosen


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens all rows start with, leaving every row at least one token of its own."""
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def prefix_plan(ids: Sequence[Sequence[int]], groups: Sequence[str], reuse: bool) -> tuple[list[int], list[int]]:
    """For each row, which prefix it starts from and that prefix's length in tokens. Rows of one
    group share a prefix (computed once); a row alone, or every row when `reuse` is off, has its own
    prefix: its prompt but the last token."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g if reuse and g else f"\0{i}", []).append(i)
    which, lengths = [0] * len(ids), []
    for rows in members.values():
        shared = shared_prefix_length([ids[i] for i in rows]) if len(rows) > 1 else len(ids[rows[0]]) - 1
        if len(rows) > 1 and shared < MIN_SHARED_PREFIX:  # not worth it: each row its own prefix
            for i in rows:
                which[i] = len(lengths)
                lengths.append(len(ids[i]) - 1)
            continue
        for i in rows:
            which[i] = len(lengths)
        lengths.append(shared)
    return which, lengths


def prefill_buckets(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of `lengths` in buckets that share a padded forward pass, shortest bucket first: a bucket
    starts at the shortest length not yet taken and holds every length up to BUCKET_RATIO x it +
    BUCKET_SLACK. Within a bucket the indices keep their given order."""
    buckets: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if buckets and lengths[i] <= lengths[buckets[-1][0]] * BUCKET_RATIO + BUCKET_SLACK:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return [sorted(b) for b in buckets]


def pack_lanes(lanes: Sequence[tuple[int, int]], columns: float) -> list[list[int]]:
    """Which lanes of the running batch, each (rows, cache width), decode in one forward pass.

    Merged, the narrower lane's rows are padded to the wider width, and every decode step reads that
    padding from the KV cache; kept apart, every step reads the model's weights once more. So, by width,
    a lane joins the one before it when the padding that adds (rows before it x width difference) is at
    most `columns`, the weights' size in cache columns. Within a pack the indices keep their given order."""
    packs: list[list[int]] = []
    rows = width = 0
    for i in sorted(range(len(lanes)), key=lambda i: lanes[i][1]):
        r, w = lanes[i]
        if packs and rows * (w - width) <= columns:
            packs[-1].append(i)
            rows += r
        else:
            packs.append([i])
            rows = r
        width = w
    return [sorted(p) for p in packs]


def check_options(batch_size: int, dtype: str | None, max_model_len: int | None) -> None:
    """Refuse bad options before anything loads, naming them as the CLI spells them."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EngineError(f"--batch-size must be >= 1, got {batch_size!r}")
    if dtype is not None and dtype not in DTYPES:
        raise EngineError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
        raise EngineError(f"--max-model-len must be >= 1, got {max_model_len!r}")


def cache_argument(lm) -> str:
    """The name under which `lm.forward` takes the KV cache: `cache` in newer transformers (which warns
    that `past_key_values` is deprecated), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def fit_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` cut or left-padded with zeros to `width` along `dim`: tokens sit at the right end, left padding
    is masked out."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t.narrow(dim, -missing, width)
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class TransformersEngine(TokenizerEngine):
    # Batched float kernels round by a row's batch companions, which streaming makes depend on timing; on a
    # CPU there is no idle GPU to win back, so a chunk at a time (byte-identical reruns) is the default.
    streams_by_default = False
    name = "transformers"

    def __init__(self, model: str | None, batch_size: int = BATCH_SIZE, dtype: str | None = None,
                 device: str | None = None, max_model_len: int | None = None,
                 stop_at_newline: bool = True, prefix_reuse: bool = True):
        check_options(batch_size, dtype, max_model_len)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = model_lib.resolve(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.stop_at_newline = stop_at_newline
        self.prefix_reuse = prefix_reuse
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model)
            dtype = dtype or ("bfloat16" if self.device == "cuda" else "float32")
            self.lm = AutoModelForCausalLM.from_pretrained(
                self.model, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
        except OSError as e:
            raise EngineError(f"cannot load model {self.model}: {e}") from None
        self.lm.to(self.device).eval()
        self.weight_bytes = sum(p.nbytes for p in self.lm.parameters())
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        # Tokens whose text holds a line break end a rewrite (stop at the first newline).
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        self.newline_ids = {i for i, t in enumerate(texts) if "\n" in t}
        eos = self.lm.generation_config.eos_token_id
        self.eos_ids = {self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        context = getattr(self.lm.config, "max_position_embeddings", None) or 2048
        self._context = min(context, max_model_len) if max_model_len else context
        self._cache_arg = cache_argument(self.lm)

    def forward(self, cache, **inputs) -> torch.Tensor:
        """The model's last logits for `inputs`, extending `cache` (a DynamicCache) in place."""
        out = self.lm(**inputs, **{self._cache_arg: cache}, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        return in_order(self.stream(requests, sampling), len(requests))

    @torch.inference_mode()
    def stream(self, requests: Iterable[Request | None], sampling: Sampling) -> Iterator[tuple[int, Completion]]:
        """A continuous batch: rows leave it as they stop (and are yielded then), and once it is half
        empty the next requests are pulled, prefilled and joined to it. It decodes in lanes (`pack_lanes`)."""
        intake = Intake(requests)
        rows: dict[int, _Row] = {}
        lanes: list[_Running] = []
        while True:
            running = sum(len(lane.rows) for lane in lanes)
            if running <= self.batch_size // 2:
                taken = intake.take(self.batch_size - running, holding=bool(lanes))
                for position, request in taken:
                    rows[position] = _Row(request.ids(self.encode), torch.Generator().manual_seed(request.seed),
                                          request.group)
                if taken:
                    joined = self._prefill([rows[p].ids for p, _ in taken], [rows[p].group for p, _ in taken],
                                           [p for p, _ in taken], rows)
                    lanes = self._pack(lanes + joined)
            if not lanes:
                if intake.ended:
                    return
                continue
            finished: list[int] = []
            lanes = [lane for lane in lanes if self._advance(lane, rows, sampling, finished)]
            for i in finished:
                row = rows.pop(i)
                yield i, Completion(text=self.decode(row.tokens), prompt_tokens=len(row.ids),
                                    generated_tokens=len(row.tokens), finish_reason=row.reason,
                                    cached_tokens=row.cached)

    def _advance(self, lane: "_Running", rows: dict[int, "_Row"], sampling: Sampling, finished: list[int]) -> bool:
        """One token for each row of the lane; rows that stop go to `finished`. False once none goes on."""
        chosen = sample_rows(lane.logits, [rows[i].generator for i in lane.rows],
                             sampling.temperature, sampling.top_p).tolist()
        keep = []
        for j, (i, t) in enumerate(zip(lane.rows, chosen)):
            row = rows[i]
            if t not in self.eos_ids:
                row.tokens.append(t)
                if not (self.stop_at_newline and t in self.newline_ids):
                    if len(row.tokens) < sampling.max_new_tokens:
                        keep.append(j)
                        continue
                    row.reason = "length"
            finished.append(i)
        if not keep:
            return False
        lane.keep(keep)
        lane.step(self.forward, torch.tensor([chosen[j] for j in keep], device=self.device))
        return True

    def _pack(self, lanes: list[_Running]) -> list[_Running]:
        """The lanes merged as `pack_lanes` finds it pays."""
        if len(lanes) < 2:
            return lanes
        columns = self.weight_bytes / lanes[0].column_bytes()
        packed = []
        for pack in pack_lanes([(len(lane.rows), lane.width) for lane in lanes], columns):
            merged = lanes[pack[0]]
            for j in pack[1:]:
                merged = merged.merge(lanes[j])
            packed.append(merged)
        return packed

    def _prefill(self, ids: list[list[int]], groups: list[str], rows: list[int], state: dict[int, "_Row"]) -> list[_Running]:
        """Prompts into new lanes of the running batch: 1. the distinct prefixes (`prefix_plan`), each
        computed once, in buckets of similar length, one left-padded forward pass each; 2. per prefix
        bucket, its rows in buckets of similar prompt length: each row's cache gathered from its prefix,
        then the rows' own tails, left-padded after it. `state[row].cached` gets the prompt tokens a row
        took from a prefix another row computed."""
        from transformers import DynamicCache

        which, lengths = prefix_plan(ids, groups, self.prefix_reuse)
        owner = {w: i for i, w in reversed(list(enumerate(which)))}  # a row holding each prefix
        for j, w in enumerate(which):
            if owner[w] != j:
                state[rows[j]].cached = lengths[w]
        lanes = []
        for prefixes in prefill_buckets(lengths):
            width = max(lengths[p] for p in prefixes)
            prefix_ids = [[self.pad_id] * (width - lengths[p]) + ids[owner[p]][:lengths[p]] for p in prefixes]
            prefix_mask = torch.tensor([[0] * (width - lengths[p]) + [1] * lengths[p] for p in prefixes],
                                       device=self.device)
            cache = DynamicCache(config=self.lm.config)
            if width:
                self.forward(cache, input_ids=torch.tensor(prefix_ids, device=self.device), attention_mask=prefix_mask,
                             position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0))
            slot = {p: k for k, p in enumerate(prefixes)}
            members = [j for j, w in enumerate(which) if w in slot]
            for bucket in prefill_buckets([len(ids[j]) for j in members]):
                bucket = [members[k] for k in bucket]
                index = torch.tensor([slot[which[j]] for j in bucket], device=self.device)
                own = max(lengths[which[j]] for j in bucket)  # the columns before it pad all of these rows
                row_cache = DynamicCache(config=self.lm.config)
                if own:
                    for n, layer in enumerate(cache.layers):
                        row_cache.update(fit_left(layer.keys[index], own, 2), fit_left(layer.values[index], own, 2), n)
                tails = [ids[j][lengths[which[j]]:] for j in bucket]
                tail_width = max(len(t) for t in tails)
                mask = torch.cat([fit_left(prefix_mask[index], own, 1), torch.tensor(
                    [[0] * (tail_width - len(t)) + [1] * len(t) for t in tails], device=self.device)], dim=-1)
                input_ids = torch.tensor([[self.pad_id] * (tail_width - len(t)) + t for t in tails], device=self.device)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.forward(row_cache, input_ids=input_ids, attention_mask=mask, position_ids=positions[:, own:])
                lanes.append(_Running([rows[j] for j in bucket], row_cache, mask, positions[:, -1] + 1, logits))
        return lanes

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model, "device": self.device,
                "dtype": str(self.lm.dtype).replace("torch.", ""), "batch_size": self.batch_size,
                "stop_at_newline": self.stop_at_newline, "prefix_reuse": self.prefix_reuse}


@dataclass
class _Row:
    """A request in the running batch: its prompt ids, its own generator, what it generated so far."""

    ids: list[int]
    generator: torch.Generator
    group: str = ""
    tokens: list[int] = field(default_factory=list)
    reason: str = "stop"
    cached: int = 0


class _Running:
    """A lane of the running batch: its rows' KV cache, attention mask (left padding is 0), next positions
    and last logits, all in the same row order as `rows` (indices into the request list)."""

    def __init__(self, rows: list[int], cache, mask: torch.Tensor, next_pos: torch.Tensor, logits: torch.Tensor):
        self.rows, self.cache, self.mask, self.next_pos, self.logits = rows, cache, mask, next_pos, logits

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def column_bytes(self) -> int:
        """Bytes of cache one row holds per column (one token's keys and values in every layer)."""
        return sum(layer.keys[0, :, 0].nbytes + layer.values[0, :, 0].nbytes for layer in self.cache.layers)

    def keep(self, keep: list[int]) -> None:
        """Drop the other rows, and the cache columns no remaining row attends to."""
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.rows = [self.rows[j] for j in keep]
            self.mask, self.next_pos = self.mask[index], self.next_pos[index]
        unused = int(self.mask.any(dim=0).int().argmax())  # leading columns that are padding for every row
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def step(self, forward, chosen: torch.Tensor) -> None:
        """Feed each row's chosen token (through `TransformersEngine.forward`); keep the logits for the next choice."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=-1)
        self.logits = forward(self.cache, input_ids=chosen.unsqueeze(-1), attention_mask=self.mask,
                              position_ids=self.next_pos.unsqueeze(-1))
        self.next_pos = self.next_pos + 1

    def merge(self, other: "_Running") -> "_Running":
        """One lane of both: the narrower cache is left-padded (masked) to the wider one's width."""
        width = max(self.width, other.width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([fit_left(mine.keys, width, 2), fit_left(theirs.keys, width, 2)])
            mine.values = torch.cat([fit_left(mine.values, width, 2), fit_left(theirs.values, width, 2)])
        self.mask = torch.cat([fit_left(self.mask, width, 1), fit_left(other.mask, width, 1)])
        self.rows = self.rows + other.rows
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.logits = torch.cat([self.logits, other.logits])
        return self


def create(model: str | None, **options) -> TransformersEngine:
    return TransformersEngine(model, **options)

