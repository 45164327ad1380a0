"""Defaults of the method, in one place: the CLI, the library and the docs read them from here."""
from __future__ import annotations

from dataclasses import asdict, dataclass

SOURCES = ("chatgpt", "bard", "coco", "human")
SOURCE_ALIASES = {"mscoco": "coco"}  # LaCLIP's README says mscoco, its code says coco
ALL_SOURCES = "all"  # --source all: the four sets, each its own column


def source_list(text: str) -> list[str]:
    """--source as given: one set, a comma-separated list of sets (names or .jsonl paths), `all` for
    the four."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("--source names no meta set")
    return [s for item in items for s in (SOURCES if item == ALL_SOURCES else (item,))]

NUM_EXAMPLES = 3  # in-context examples per prompt (LaCLIP uses 3)
SEED = 0
NUM_REWRITES = 1
MAX_ATTEMPTS = 3  # a rejected rewrite is tried again with fresh examples and seed
BATCH_SIZE = 64  # transformers engine: rows decoded together (the fastest measured: README, Rewriting)
CHUNK_ROWS = 512  # rows committed together; bounds memory and the work lost to a crash
OPEN_CHUNKS = 4  # chunks the streaming scheduler holds at once: requests of the next are built while one decodes
TEMPLATE = "laclip"
# A caption's share of a prompt, in model tokens: a longer caption is cut (its row's reason says so), so
# one pathological row (a 1 MB alt text) costs what a row costs. CLIP reads 77 of its own tokens; 256
# keeps any caption CLIP could use whole.
MAX_CAPTION_TOKENS = 256
EXAMPLE_SETS = 0  # 0: fresh examples for every caption, as LaCLIP does; K > 0: one of K shared draws
ENGINE = "transformers"


@dataclass(frozen=True)
class Sampling:
    """Generation settings; LaCLIP's values are the defaults."""

    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 77

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Schedule:
    """The order requests reach an engine: throughput only, the rewrites do not change."""

    group_by_examples: bool = True  # requests sharing examples side by side: their prefix is computed once
    sort_by_length: bool = True  # within a group, similar lengths together: less padding
    # Streaming (scheduler.py): requests built ahead of the engine, a rejected rewrite retried at once,
    # each chunk committed as soon as its rows are final. False: a chunk at a time, with retry rounds.
    # None: the engine's choice (Engine.streams_by_default).
    streaming: bool | None = None
    open_chunks: int = OPEN_CHUNKS  # chunks in flight at once while streaming (memory; work a kill loses)
    # Streaming: worker processes that build requests and judge (run/builders.py); None: from the cores.
    builders: int | None = None

    def __post_init__(self) -> None:
        if self.open_chunks < 1:
            raise ValueError(f"--open-chunks must be >= 1, got {self.open_chunks}")
        if self.builders is not None and self.builders < 0:
            raise ValueError(f"--builders must be >= 0, got {self.builders}")
