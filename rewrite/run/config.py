"""What a run is given, checked before any model loads: one meta set's settings (RunConfig), and the
job they make with the plan, the set and the template (PreparedSet); and the errors of a run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence


from .. import __version__, meta, defaults
from ..workdir import layout
from ..workdir.manifest import Manifest, format_shard_spec, load_manifest
from ..rewriting import clip_tokens, prompt
from ..engines import model as model_lib
from ..engines.base import Engine
from ..defaults import Sampling


class RunError(RuntimeError):
    pass


class EngineUnavailable(Exception):
    """The engine could not serve some requests (its server down, overloaded or refusing the run). Their
    rows are committed as failed (engine_unavailable) and their shards are not done; the same run again
    requests exactly those rows. `waiting`: (source, shard) -> its rows waiting; `gave_up`: the engine gave
    up on its server (too many failures in a row) and the run stopped; `finished`: the stats of the
    shards this run finished."""

    def __init__(self, engine: Engine, waiting: dict[tuple[str, int], int], finished: list[dict], gave_up: bool):
        self.waiting, self.finished, self.gave_up = waiting, finished, gave_up
        url = engine.describe().get("base_url")
        where = f"the engine at {url}" if url else f"the {engine.name} engine"
        outage = getattr(engine, "outage", None)
        error = (outage.last_error if outage else None) or "no error message"
        by_source: dict[str, dict[int, int]] = {}
        for (source, shard), count in waiting.items():
            by_source.setdefault(source, {})[shard] = count
        rows_waiting = "; ".join(f"{source} shard{'s' if len(counts) > 1 else ''} {format_shard_spec(sorted(counts))} "
                                 f"({sum(counts.values())} rows)" for source, counts in by_source.items())
        if gave_up:
            what = (f"{where} is unavailable ({error}): the run stopped after {outage.bound} requests in a row "
                    "it could not serve and kept every committed chunk")
        else:
            what = f"{where} was unavailable for some requests ({error})"
        super().__init__(f"{what}; rows waiting for it, in shards that are not done: {rows_waiting or 'none'}; "
                         "run the same command again to retry")


@dataclass(frozen=True)
class RunConfig:
    """What defines the output of a run (with the engine's model).

    `source` may be given as a shipped set's name or a custom set's .jsonl path; it is kept as the
    set's name (which names its folder, column and seeds), and the path goes to `meta_file`. A set
    named like a shipped one may be read from elsewhere (`meta_file`: e.g. the paper's own sets, as
    `rewrite meta import-laclip` writes them)."""

    source: str
    seed: int = defaults.SEED
    num_rewrites: int = defaults.NUM_REWRITES
    num_examples: int = defaults.NUM_EXAMPLES
    max_attempts: int = defaults.MAX_ATTEMPTS
    chunk_rows: int = defaults.CHUNK_ROWS
    dedup: bool = True
    example_sets: int = defaults.EXAMPLE_SETS
    max_caption_tokens: int = defaults.MAX_CAPTION_TOKENS
    template: str = defaults.TEMPLATE
    sampling: Sampling = field(default_factory=Sampling)
    meta_file: str | None = None
    min_faithfulness: float | None = None  # a rewrite scoring below it is rejected (validate.UNFAITHFUL)

    def __post_init__(self) -> None:
        if self.meta_file is None and meta.is_file_source(self.source):
            object.__setattr__(self, "meta_file", str(Path(self.source).resolve()))
        object.__setattr__(self, "source", meta.source_name(self.source))
        for name in ("num_rewrites", "num_examples", "max_attempts", "chunk_rows", "max_caption_tokens"):
            if getattr(self, name) < 1:
                raise RunError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.example_sets < 0:
            raise RunError(f"--example-sets must be >= 0, got {self.example_sets}")
        if self.min_faithfulness is not None and not 0 <= self.min_faithfulness <= 1:
            raise RunError(f"--min-faithfulness must be between 0 and 1, got {self.min_faithfulness}")

    def fingerprint(self, meta_set: meta.MetaSet, template: prompt.Template, engine_name: str, model: str) -> dict:
        """Everything a resumed or appended run must share with the first one."""
        d = asdict(self)
        d.pop("chunk_rows")  # chunk size changes commits, not rewrites
        d.pop("meta_file")  # where the set (or template) lies does not matter; its digest does
        if d["min_faithfulness"] is None:
            d.pop("min_faithfulness")  # work dirs made before the gate existed resume
        d["template"] = template.name
        return {**d, "meta_digest": meta_set.digest(), "template_digest": template.digest,
                "engine": engine_name, "model": model, "model_digest": model_lib.digest(model),
                "version": __version__}


def set_configs(sources: Sequence[str], meta_dir: str | Path | None = None, **settings_) -> list[RunConfig]:
    """One RunConfig per meta set of --source (see defaults.source_list); with `meta_dir`, the sets named
    like the shipped ones are read from META_DIR/<name>.jsonl instead. Two sets going by one name (e.g.
    chatgpt and DIR/chatgpt.jsonl) would share a folder and a column: refused."""
    configs = []
    for source in sources:
        meta_file = None
        if meta_dir is not None and not meta.is_file_source(source):
            meta_file = str((Path(meta_dir) / f"{meta.source_name(source)}.jsonl").resolve())
        configs.append(RunConfig(source=source, meta_file=meta_file, **settings_))
    names = [c.source for c in configs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RunError(f"--source names the set {twice[0]} twice ({', '.join(sources)}): each set is one folder and "
                       "one column, so give each name once")
    return configs


@dataclass(frozen=True)
class PreparedSet:
    """A run's inputs checked before any model loads: the plan, the meta set, the template, the shards."""

    w: layout.Work
    manifest: Manifest
    config: RunConfig
    meta_set: meta.MetaSet
    template: prompt.Template
    shards: tuple[int, ...]  # the shards this process runs
    named: tuple[int, ...]  # the shards the user named (an array task runs a share of them)

    def fingerprint(self, engine_name: str, model: str) -> dict:
        return {**self.config.fingerprint(self.meta_set, self.template, engine_name, model),
                "plan_id": self.manifest.plan_id()}


def prepare(work: str | Path, config: RunConfig, shards: Sequence[int], named: Sequence[int] | None = None,
            manifest: Manifest | None = None) -> PreparedSet:
    """Check everything about a run that needs no model: a bad meta set, template, shard or column
    is refused before minutes go into loading one. `manifest`: the plan, when the caller has read it."""
    w = layout.Work(work)
    manifest = manifest or load_manifest(w)
    meta_set = meta.load_usable(config.meta_file or config.source, config.num_examples)
    template = prompt.load_template(config.template)
    for shard in shards:
        if not 0 <= shard < manifest.num_shards:
            raise RunError(f"shard {shard} is not in the plan (shards 0-{manifest.num_shards - 1})")
    columns = [layout.export_column(config.source, i, config.num_rewrites) for i in range(config.num_rewrites)]
    taken = [c for c in columns if c in manifest.columns]
    if taken:
        raise RunError(f"the inputs already have a column {taken[0]!r}, the name {config.source}'s rewrites take in an "
                       f"export: plan the inputs without it, or run the set under another name (a copy of it as "
                       f"OTHER.jsonl gives `caption_OTHER`)")
    clip_tokens.check_available()
    return PreparedSet(w, manifest, config, meta_set, template, tuple(shards), tuple(named if named is not None else shards))
