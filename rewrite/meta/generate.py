"""`rewrite meta generate`: a pair set made by an LLM from the user's own captions, the way the paper
made its chatgpt and bard sets (a chatbot asked to rewrite each caption), with any engine.

Sources are drawn from the caption file with a seed; each is sent as one user turn (the instruction,
then the caption) in the model's chat template (vllm, transformers; with openai, --api chat sends it as
a user message). An answer is kept when it passes the checks a rewrite passes in a run, has fewer
words than MAX_TARGET_WORDS and no `=>`; a rejected one is tried again with another seed, and a source
still without a target after the last attempt is replaced by the next caption drawn.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__, meta, storage
from ..rewriting import clip_tokens, prompt, seeds, validate
from ..engines.base import Engine, EngineError, Request
from .sets import MetaSetError
from ..defaults import Sampling

# The instruction the paper gave its chatbots (its section on meta input-output pairs).
PAPER_INSTRUCTION = "Rewrite this caption of an image vividly, and keep it less than thirty words:"
MAX_TARGET_WORDS = 30
TOO_MANY_WORDS = "too_many_words"
SEED_NAME = "meta-generate"  # the seeds of a generated set are derived under this name


def read_captions(path: Path) -> list[str]:
    """Distinct captions of a text file (one per line), whitespace tidied, in file order: those usable as
    an example's source (meta.string_problems finds nothing), so a set made of them can be written."""
    try:
        text = storage.read_text(Path(path))
    except FileNotFoundError:
        raise MetaSetError(f"{path}: no such caption file") from None
    except UnicodeDecodeError as e:
        raise MetaSetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    tidy = (" ".join(line.split()) for line in text.splitlines())
    return list(dict.fromkeys(c for c in tidy if c and not meta.string_problems(c)))


def user_prompt(engine: Engine, instruction: str, caption: str) -> str:
    """The prompt for one source: a user turn in the model's chat template, or (an engine that applies
    none itself: openai) the plain text, which --api chat sends as the user turn."""
    text = f"{instruction} {caption}"
    try:
        return engine.chat_prompt([{"role": "user", "content": text}])
    except EngineError:
        return text


def judge(answer: str, caption: str, completion) -> tuple[str, str | None]:
    """(the target parsed from an answer, the reason to reject it or None)."""
    target = " ".join(prompt.parse_completion(answer).split())
    reason = validate.check(target, caption, completion, [], clip_tokens.count)
    if reason is None and len(target.split()) >= MAX_TARGET_WORDS:
        reason = TOO_MANY_WORDS
    return target, reason


def check_options(out: Path, count: int, max_attempts: int, instruction: str, overwrite: bool,
                  captions_file: Path | None = None) -> None:
    """What `generate` is given, checked before an engine loads (`out`: meta.check_target; the caption
    file: enough usable captions for `count`)."""
    for option, value in (("--count", count), ("--max-attempts", max_attempts)):
        if value < 1:
            raise MetaSetError(f"{option} must be >= 1, got {value}")
    if not instruction.strip() or "\n" in instruction:
        raise MetaSetError(f"--instruction must be one non-empty line, got {instruction!r}")
    meta.check_target(out, overwrite)
    if captions_file is not None:
        _enough(captions_file, read_captions(captions_file), count)


def _enough(captions_file: Path, captions: list[str], count: int) -> None:
    if len(captions) < count:
        raise MetaSetError(f"{captions_file}: {len(captions)} distinct usable captions, fewer than the --count {count} "
                           "pairs asked for")


def generate(captions_file: Path, out: Path, engine: Engine, *, count: int = 16, seed: int = 0,
             instruction: str = PAPER_INSTRUCTION, sampling: Sampling = Sampling(), max_attempts: int = 3,
             progress=None, overwrite: bool = False) -> meta.MetaSet:
    """Write a pair set of `count` (caption, rewrite) pairs to `out` (see the module docstring). The options
    and `out` are checked first (check_options, which the command calls before it loads the engine), and
    `out` again when the pairs are written: a file may have appeared there meanwhile."""
    check_options(out, count, max_attempts, instruction, overwrite)
    captions = read_captions(captions_file)
    _enough(captions_file, captions, count)
    pool = random.Random(seed).sample(captions, len(captions))  # the order sources are drawn in
    pairs: dict[str, str] = {}
    tried, rejected = 0, Counter()
    pending = [(c, 0) for c in pool[:count]]
    drawn = count
    while pending:
        requests = [Request(user_prompt(engine, instruction, c), seeds.generation_seed(seed, SEED_NAME, c, 0, a))
                    for c, a in pending]
        completions = engine.generate(requests, sampling)
        tried += len(requests)
        retry = []
        for (caption, attempt), completion in zip(pending, completions):
            target, reason = judge(completion.text, caption, completion)
            if reason is None:
                pairs[caption] = target
                continue
            rejected[reason] += 1
            if attempt + 1 < max_attempts:
                retry.append((caption, attempt + 1))
            elif drawn < len(pool):
                retry.append((pool[drawn], 0))
                drawn += 1
        pending = retry
        if progress is not None:
            progress(len(pairs), count)
    if len(pairs) < count:
        raise MetaSetError(f"only {len(pairs)} of {count} pairs passed the checks after every caption of "
                           f"{captions_file} was tried (rejected: {dict(rejected)}): try another model or instruction")
    ordered = [(c, pairs[c]) for c in pool if c in pairs][:count]
    provenance = {
        "made_by": meta.GENERATE, "version": __version__,
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "from": {"path": str(Path(captions_file).resolve()),
                 "sha256": hashlib.sha256(storage.read_bytes(Path(captions_file))).hexdigest()},
        "engine": engine.describe(), "instruction": instruction, "seed": seed, "sampling": sampling.to_dict(),
        "max_attempts": max_attempts, "counts": {"pairs": count, "requests": tried, "rejected": dict(rejected)},
    }
    return meta.write(meta.check_target(out, overwrite), pairs=ordered, provenance=provenance)
