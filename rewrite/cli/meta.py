"""`rewrite meta ...`: show, check, import and generate meta sets of in-context examples."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import meta as meta_lib
from .. import defaults, storage
from . import engine_options as opt
from .shared import USER_ERRORS, app, fail, reported


meta_app = typer.Typer(help="Inspect, check, import and generate meta sets of in-context examples.", no_args_is_help=True)
app.add_typer(meta_app, name="meta")


@meta_app.command("show")
def meta_show(source: str = typer.Argument(..., help="chatgpt, bard, coco (mscoco), human or a .jsonl file.")):
    """Print a meta set."""
    with reported():
        m = meta_lib.load(source)
    typer.echo(f"# {m.name}: {len(m)} {m.kind} ({m.path})")
    if m.pairs:
        for s, t in m.pairs:
            typer.echo(f"{s} => {t}")
    for g in m.groups:
        typer.echo("\n".join(g) + "\n")


@meta_app.command("validate")
def meta_validate(
    files: Optional[List[str]] = typer.Argument(None, help="Meta sets to check (default: the four shipped)."),
    num_examples: int = typer.Option(defaults.NUM_EXAMPLES, help="In-context examples per prompt (k), as `rewrite run --num-examples`."),
):
    """Check meta sets as `rewrite run` does before it loads a model (enough entries for k; strings of at
    most 77 CLIP tokens, without `=>`, control characters or line breaks; no duplicates) and print length
    statistics. Exit 1 when a set is invalid."""
    if num_examples < 1:
        fail(f"--num-examples must be >= 1, got {num_examples}")
    bad = False
    with reported():  # an unreadable file, or no CLIP tokenizer to count with: one line, as in `run`
        for name in files or list(defaults.SOURCES):
            if name.endswith(".jsonl") and not storage.is_file(Path(name)):
                raise meta_lib.MetaSetError(f"meta set file {name} does not exist")  # a bad argument, not a bad set
            try:
                m = meta_lib.load(name)
            except USER_ERRORS as e:
                typer.echo(f"{name}: INVALID: {e}")
                bad = True
                continue
            problems = meta_lib.problems(m, num_examples)
            st = meta_lib.stats(m)
            typer.echo(f"{m.name}: {'ok' if not problems else 'INVALID'}: {st['entries']} {st['kind']}, "
                       f"source {st['mean_source_words']} words, target {st['mean_target_words']} words "
                       f"(max {st['max_target_words']}), word overlap {st['mean_word_overlap']}")
            for p in problems:
                typer.echo(f"  - {p}")
            bad |= bool(problems)
    if bad:
        raise typer.Exit(1)


@meta_app.command("import-laclip")
def meta_import_laclip(
    utils_py: Path = typer.Argument(..., help="rewrite/utils.py of your own checkout of LaCLIP's code (read, never run)."),
    out: Path = typer.Option(..., "--out", help="Folder to write chatgpt.jsonl, bard.jsonl, human.jsonl and coco.jsonl to."),
    overwrite: bool = typer.Option(False, help="Replace sets an earlier `rewrite meta` command wrote there (never a set of your own)."),
):
    """The paper's own four example sets, from LaCLIP's code; run with them through `rewrite run --meta-dir`."""
    from ..meta import importers as metasets

    with reported():
        written = metasets.import_laclip(utils_py, out, overwrite=overwrite)
    for name, path in written.items():
        m = meta_lib.load(str(path))
        typer.echo(f"{name}: {len(m)} {m.kind} -> {path}")
    typer.echo(f"use them with: rewrite run --source all --meta-dir {out} ...")


@meta_app.command("import-coco")
def meta_import_coco(
    annotations: Path = typer.Argument(..., help="A COCO captions annotation file (captions_train2017.json)."),
    out: Path = typer.Option(..., "--out", help="The group set to write (a .jsonl file)."),
    groups: int = typer.Option(16, help="Images (groups of captions) to draw."),
    seed: int = typer.Option(defaults.SEED, help="Seed of the draw."),
    captions_per_group: int = typer.Option(5, help="Captions per image."),
    overwrite: bool = typer.Option(False, help="Replace a set an earlier `rewrite meta` command wrote (never a set of your own)."),
):
    """A coco-style group set: captions of the same image, from COCO annotations."""
    from ..meta import importers as metasets

    with reported():
        path = metasets.import_coco(annotations, out, groups=groups, seed=seed, captions_per_group=captions_per_group,
                                    overwrite=overwrite)
        m = meta_lib.load(str(path))
    typer.echo(f"{m.name}: {len(m)} groups -> {path}")


@meta_app.command("generate")
def meta_generate(
    captions: Path = typer.Option(..., "--from", help="Caption file, one caption per line: the sources are drawn from it."),
    out: Path = typer.Option(..., "--out", help="The pair set to write (a .jsonl file)."),
    count: int = typer.Option(16, help="Pairs to make."),
    seed: int = typer.Option(defaults.SEED, help="Seed of the draw of sources and of sampling."),
    instruction: Optional[str] = typer.Option(None, help="What the model is asked, before each caption (default: the paper's chatbot instruction)."),
    engine: opt.Engine = defaults.ENGINE,
    model: opt.Model = None,
    dtype: opt.Dtype = None,
    max_model_len: opt.MaxModelLen = None,
    engine_arg: opt.EngineArg = None,
    base_url: opt.BaseUrl = None,
    api: opt.Api = "chat",
    concurrency: opt.Concurrency = None,
    max_attempts: int = typer.Option(defaults.MAX_ATTEMPTS, help="Tries per source before another caption is drawn."),
    temperature: opt.Temperature = opt.DEFAULT_TEMPERATURE,
    top_p: opt.TopP = opt.DEFAULT_TOP_P,
    overwrite: bool = typer.Option(False, help="Replace a set an earlier `rewrite meta` command wrote (never a set of your own)."),
):
    """A pair set made by an LLM from your captions (the paper made its chatgpt and bard sets this way)."""
    from .. import engines
    from ..meta import generate as metagen

    options = engines.given(dtype=dtype, max_model_len=max_model_len, engine_args=engine_arg, base_url=base_url,
                            concurrency=concurrency)
    instruction = metagen.PAPER_INSTRUCTION if instruction is None else instruction
    with reported():  # everything checked before minutes go into an engine
        metagen.check_options(out, count, max_attempts, instruction, overwrite, captions)
        sampling = defaults.Sampling(temperature=temperature, top_p=top_p)
        if engines.resolve_name(engine) == "openai":
            options["api"] = api
        name = engines.check(engine, model, options)
        with engines.opened(name, model, **options) as eng:
            m = metagen.generate(captions, out, eng, count=count, seed=seed, instruction=instruction, sampling=sampling,
                                 max_attempts=max_attempts, overwrite=overwrite,
                                 progress=lambda done, total: typer.echo(f"{done}/{total} pairs", err=True))
    st = meta_lib.stats(m)
    typer.echo(f"{m.name}: {st['entries']} pairs -> {m.path}; source {st['mean_source_words']} words, target "
               f"{st['mean_target_words']} words, word overlap {st['mean_word_overlap']}")
