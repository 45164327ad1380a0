"""Prompt building and completion parsing: pure functions over strings.

A template (prompts/*.toml) has four fields: `instruction`, `example` (with {source} and {target}),
`separator` and `query` (with {caption}). A prompt is

    instruction + separator + example_1 + separator + ... + example_k + separator + query
"""
from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from . import resources

Example = tuple[str, str]
ARROW = "=>"
ARROW_REPLACEMENT = "->"
_SPACE = re.compile(r"\s+")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    name: str
    instruction: str
    example: str
    separator: str
    query: str
    digest: str

    def head(self, examples: Sequence[Example]) -> str:
        """Everything before the caption."""
        parts = [self.instruction] + [self.example.format(source=s, target=t) for s, t in examples]
        before, _, _ = self.query.partition("{caption}")
        return self.separator.join(parts) + self.separator + before

    def tail(self) -> str:
        """Everything after the caption (` =>` in LaCLIP's format)."""
        return self.query.partition("{caption}")[2]

    def render(self, examples: Sequence[Example], caption: str) -> str:
        return self.head(examples) + normalise_caption(caption) + self.tail()


def load_template(name_or_path: str = "laclip") -> Template:
    """A shipped template by name (prompts/<name>.toml) or a path to a .toml file."""
    path = Path(name_or_path)
    if not path.suffix:
        try:
            path = resources.resource("prompts", f"{name_or_path}.toml")
        except FileNotFoundError:
            names = ", ".join(n[:-5] for n in resources.list_resources("prompts", ".toml"))
            raise TemplateError(f"unknown template {name_or_path!r}; shipped templates: {names}") from None
    if not path.is_file():
        raise TemplateError(f"template file {path} does not exist")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TemplateError(f"{path}: not a valid TOML template ({e})") from None
    fields = ("instruction", "example", "separator", "query")
    missing = [f for f in fields if not isinstance(data.get(f), str)]
    if missing:
        raise TemplateError(f"{path}: missing string field(s) {', '.join(missing)}")
    if "{caption}" not in data["query"] or "{source}" not in data["example"] or "{target}" not in data["example"]:
        raise TemplateError(f"{path}: `query` needs {{caption}}, `example` needs {{source}} and {{target}}")
    if "\n" in data["query"].partition("{caption}")[2]:
        raise TemplateError(f"{path}: `query` may not end with a line break (the rewrite ends at the first one)")
    return Template(name=path.stem, digest=hashlib.sha256(raw).hexdigest(), **{f: data[f] for f in fields})


def normalise_caption(caption: str) -> str:
    """One line, no `=>`: the caption as it may appear in a prompt without breaking its format."""
    return _SPACE.sub(" ", caption.replace(ARROW, ARROW_REPLACEMENT)).strip()


def parse_completion(completion: str) -> str:
    """The rewrite: the completion up to its first line break, stripped."""
    return completion.split("\n", 1)[0].strip()


CHARS_PER_TOKEN_BOUND = 32  # no token of a usual vocabulary is longer: a huge caption is cut by characters first


def cap_caption(
    caption: str, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str], max_tokens: int,
) -> tuple[str, bool]:
    """The caption as it goes into a prompt (one line, no `=>`), cut at the token level to at most
    `max_tokens`. Returns (text, was_cut). Only the first max_tokens x 32 characters are ever
    tokenized, so a megabyte of text costs no more than a long caption."""
    bound = max_tokens * CHARS_PER_TOKEN_BOUND
    text = normalise_caption(caption[:bound])
    ids = encode(text)
    if len(ids) <= max_tokens:
        return text, len(caption) > bound
    return decode(ids[:max_tokens]).strip(), True


def fit_prompt(
    template: Template,
    examples: Sequence[Example],
    caption: str,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    max_tokens: int,
) -> tuple[str, list[int], bool]:
    """The prompt, cut at the token level when longer than `max_tokens`; the cut falls in the caption,
    so the prompt still ends with the query's tail (` =>`). Returns (prompt, its token ids, was_cut):
    the engine takes the ids as they are, so a prompt is tokenized once."""
    prompt = template.render(examples, caption)
    ids = encode(prompt)
    if len(ids) <= max_tokens:
        return prompt, ids, False
    head, tail = template.head(examples), template.tail()
    room = max_tokens - len(encode(head)) - len(encode(tail)) - 1
    if room < 1:
        raise TemplateError(
            f"the prompt's examples alone need more than {max_tokens} tokens: raise the model length or lower k"
        )
    cut = decode(encode(normalise_caption(caption))[:room]).strip()
    text = head + cut + tail
    return text, encode(text), True
