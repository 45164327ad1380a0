"""Prompt building and completion parsing: pure functions over strings.

A completion template (prompts/laclip.toml, for base models) has four fields: `instruction`, `example`
(with {source} and {target}), `separator` and `query` (with {caption}). A prompt is

    instruction + separator + example_1 + separator + ... + example_k + separator + query

A chat template (`format = "chat"`, prompts/chat.toml, for instruct models) is turned into messages
that the model's own chat template renders: the instruction as the system message, then the examples,
as user/assistant turns (`examples = "turns"`: `example` with {source}, `answer` with {target}) or inside
the system message (`examples = "message"`: `example` with both, joined by `separator`), then `query`
as the last user turn. Either way the caption comes last, so prompts sharing examples share the
longest possible prefix (an engine's prefix cache computes it once).
"""
from __future__ import annotations

import hashlib
import tomllib
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .. import resources, storage

Example = tuple[str, str]
Messages = list[dict]  # [{"role": ..., "content": ...}], as chat templates take them
ChatRender = Callable[[Messages], str]  # an engine's chat template: messages -> prompt text
ARROW = "=>"
ARROW_REPLACEMENT = "->"
COMPLETION, CHAT = "completion", "chat"
_CAPTION_MARK = "\ue000"  # stands in for the caption while a chat template renders the frame around it


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
    format: str = COMPLETION
    answer: str = ""  # chat, examples as turns: the assistant's turn
    examples_as: str = "turns"  # chat: "turns" or "message"

    @property
    def chat(self) -> bool:
        return self.format == CHAT

    def messages(self, examples: Sequence[Example], caption: str) -> Messages:
        """A chat template's messages for one prompt."""
        system, turns = self.instruction, []
        if self.examples_as == "message":
            shown = [self.example.format(source=s, target=t) for s, t in examples]
            system = self.separator.join([self.instruction, *shown])
        else:
            for s, t in examples:
                turns += [{"role": "user", "content": self.example.format(source=s)},
                          {"role": "assistant", "content": self.answer.format(target=t)}]
        return [{"role": "system", "content": system}, *turns,
                {"role": "user", "content": self.query.format(caption=caption)}]

    def frame(self, examples: Sequence[Example], chat: ChatRender | None = None) -> tuple[str, str]:
        """(everything before the caption, everything after it); a chat template needs the engine's
        `chat` renderer."""
        if not self.chat:
            parts = [self.instruction] + [self.example.format(source=s, target=t) for s, t in examples]
            before, _, after = self.query.partition("{caption}")
            return self.separator.join(parts) + self.separator + before, after
        if chat is None:
            raise TemplateError(f"template {self.name} is a chat template: it needs an engine with a chat template "
                                "(vllm or transformers; with openai use --api chat and a completion template)")
        return _chat_frame(self, tuple(examples), chat)

    def head(self, examples: Sequence[Example], chat: ChatRender | None = None) -> str:
        """Everything before the caption."""
        return self.frame(examples, chat)[0]

    def render(self, examples: Sequence[Example], caption: str, chat: ChatRender | None = None) -> str:
        head, tail = self.frame(examples, chat)
        return head + normalise_caption(caption) + tail


_FRAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # see _chat_frame


def _chat_frame(template: Template, examples: tuple[Example, ...], chat: ChatRender) -> tuple[str, str]:
    """A chat template's frame, rendered once per set of examples (with --example-sets K, K renders in all;
    a model's jinja template is slow next to string joins). The frames are kept with the renderer's
    owner (the engine, for its `chat_prompt`), weakly: a closed engine is not held by its frames."""
    frames = _FRAMES.setdefault(getattr(chat, "__self__", chat), {})
    key = (getattr(chat, "__func__", chat), template, examples)
    if key not in frames:
        text = chat(template.messages(examples, _CAPTION_MARK))
        if text.count(_CAPTION_MARK) != 1:
            raise TemplateError(f"the model's chat template does not show the caption once as it is (template {template.name})")
        head, _, tail = text.partition(_CAPTION_MARK)
        frames[key] = head, tail
    return frames[key]


def load_template(name_or_path: str = "laclip") -> Template:
    """A shipped template by name (prompts/<name>.toml) or a path to a .toml file."""
    path = Path(name_or_path)
    if not path.suffix:
        try:
            path = resources.resource("prompts", f"{name_or_path}.toml")
        except FileNotFoundError:
            names = ", ".join(n[:-5] for n in resources.list_resources("prompts", ".toml"))
            raise TemplateError(f"unknown template {name_or_path!r}; shipped templates: {names}") from None
    if not storage.is_file(path):
        raise TemplateError(f"template file {path} does not exist")
    raw = storage.read_bytes(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TemplateError(f"{path}: not a valid TOML template ({e})") from None
    fmt = data.get("format", COMPLETION)
    if fmt == CHAT:
        return _chat_template(path, data, raw)
    if fmt != COMPLETION:
        raise TemplateError(f"{path}: `format` must be {COMPLETION!r} or {CHAT!r}, got {fmt!r}")
    fields = ("instruction", "example", "separator", "query")
    _require_strings(path, data, fields)
    if "{caption}" not in data["query"] or "{source}" not in data["example"] or "{target}" not in data["example"]:
        raise TemplateError(f"{path}: `query` needs {{caption}}, `example` needs {{source}} and {{target}}")
    if "\n" in data["query"].partition("{caption}")[2]:
        raise TemplateError(f"{path}: `query` may not end with a line break (the rewrite ends at the first one)")
    return Template(name=path.stem, digest=hashlib.sha256(raw).hexdigest(), **{f: data[f] for f in fields})


def _require_strings(path: Path, data: dict, fields: Sequence[str]) -> None:
    missing = [f for f in fields if not isinstance(data.get(f), str)]
    if missing:
        raise TemplateError(f"{path}: missing string field(s) {', '.join(missing)}")


def _chat_template(path: Path, data: dict, raw: bytes) -> Template:
    examples_as = data.get("examples", "turns")
    if examples_as == "turns":
        needs = [("example", "{source}"), ("answer", "{target}")]
    elif examples_as == "message":
        needs = [("example", "{source}"), ("example", "{target}"), ("separator", "")]
    else:
        raise TemplateError(f"{path}: `examples` must be \"turns\" or \"message\", got {examples_as!r}")
    needs += [("instruction", ""), ("query", "{caption}")]
    _require_strings(path, data, sorted({field for field, _ in needs}))
    for field, mark in needs:
        if mark not in data[field]:
            raise TemplateError(f"{path}: `{field}` needs {mark}")
    return Template(name=path.stem, digest=hashlib.sha256(raw).hexdigest(), format=CHAT, examples_as=examples_as,
                    instruction=data["instruction"], example=data["example"], separator=data.get("separator", "\n"),
                    query=data["query"], answer=data.get("answer", ""))


def normalise_caption(caption: str) -> str:
    """One line, no `=>`: the caption as it may appear in a prompt without breaking its format."""
    return " ".join(caption.replace(ARROW, ARROW_REPLACEMENT).split())  # (runs of any whitespace as one space)


_QUOTES = {'"': '"', "\u201c": "\u201d", "'": "'"}


def parse_completion(completion: str) -> str:
    """The rewrite: the completion up to its first line break, stripped, and out of the quotes an
    instruct model may put around its whole answer."""
    text = completion.split("\n", 1)[0].strip()
    close = _QUOTES.get(text[:1])
    if close and len(text) > 2 and text.endswith(close) and close not in text[1:-1] and text[:1] not in text[1:-1]:
        text = text[1:-1].strip()
    return text


CHARS_PER_TOKEN_BOUND = 32  # no token of a usual vocabulary is longer: a huge caption is cut by characters first


Fitted = tuple[str, list[int], bool]  # a caption as it goes into prompts, its token ids, whether it was cut


def cap_caption(
    caption: str, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str], max_tokens: int,
) -> tuple[str, bool]:
    """The caption as it goes into a prompt (one line, no `=>`), cut at the token level to at most
    `max_tokens`. Returns (text, was_cut). Only the first max_tokens x 32 characters are ever
    tokenized, so a megabyte of text costs no more than a long caption."""
    text, _, cut = cap_captions([caption], lambda texts: [encode(t) for t in texts], encode, decode, max_tokens)[0]
    return text, cut


def cap_captions(
    captions: Sequence[str], encode_many: Callable[[list[str]], list[list[int]]], encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str], max_tokens: int,
) -> list[Fitted]:
    """`cap_caption` for many captions, tokenized in one call, each with its token ids."""
    bound = max_tokens * CHARS_PER_TOKEN_BOUND
    texts = [normalise_caption(caption[:bound]) for caption in captions]
    out = []
    for caption, text, ids in zip(captions, texts, encode_many(texts)):
        if len(ids) <= max_tokens:
            out.append((text, ids, len(caption) > bound))
        else:
            cut = decode(ids[:max_tokens]).strip()
            out.append((cut, encode(cut), True))
    return out


def prompt_text(template: Template, examples: Sequence[Example], caption: str, chat: ChatRender | None = None) -> str:
    """The whole prompt's text, uncut: what `fit_prompt` tokenizes first."""
    head, tail = template.frame(examples, chat)
    return head + normalise_caption(caption) + tail


def fit_prompt(
    template: Template,
    examples: Sequence[Example],
    caption: str,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    max_tokens: int,
    chat: ChatRender | None = None,
) -> tuple[str, list[int], bool]:
    """The prompt, cut at the token level when longer than `max_tokens`; the cut falls in the caption,
    so the prompt still ends with the query's tail (` =>`). Returns (prompt, its token ids, was_cut):
    the engine takes the ids as they are, so a prompt is tokenized once."""
    prompt = prompt_text(template, examples, caption, chat)
    ids = encode(prompt)
    if len(ids) <= max_tokens:
        return prompt, ids, False
    head, tail = template.frame(examples, chat)
    room = max_tokens - len(encode(head)) - len(encode(tail)) - 1
    if room < 1:
        raise TemplateError(
            f"the prompt's examples alone need more than {max_tokens} tokens: raise the model length or lower k"
        )
    cut = decode(encode(normalise_caption(caption))[:room]).strip()
    text = head + cut + tail
    return text, encode(text), True


# Captions the assembly of prompt ids is checked with (after normalise_caption): how a caption starts and
# ends is what could join it to the pieces around it in a tokenizer that merges across a boundary.
PROBE_CAPTIONS = ("a dog", "A Dog RUNS fast", "3 cats on 2 mats", "'quoted' words", '"double quotes"', "(in brackets)",
                  "-a dash first", "ends with a period.", "it's a dog's life", "#tag @user 100%", "http://x.org/a.jpg",
                  "café au lait", "日本語のキャプション", "an emoji 🐶", "...", "x", "ends with =", "ends with -",
                  "ÉCOLE", "tab\tand  spaces")


class PromptIds:
    """A completion template's prompt token ids, put together from ids of its pieces rather than by
    tokenizing each prompt whole (most of a prompt is its instruction and examples, the same few
    strings again and again): ids(instruction), then ids(separator + example) per example, then the
    separator and the query's start as they tokenize before a caption, the caption's own ids, and
    ids(the query's end). That equals tokenizing the prompt only where the tokenizer never merges
    across those boundaries (byte-level BPE with a GPT-2 or LLaMA-3 split: a line break or space
    starts a new piece); `assemble` checks it on every example and probe caption and gives None
    where it does not hold (SentencePiece's leading "▁", say): prompts are then tokenized whole."""

    def __init__(self, template: Template, encode: Callable[[str], list[int]]):
        self.template, self.encode = template, encode
        self.instruction = encode(template.instruction)
        before, _, after = template.query.partition("{caption}")
        lead, probe = encode(template.separator + before + "a"), encode("a")
        self.lead = lead[:-len(probe)] if lead[-len(probe):] == probe else None
        self.after = encode(after)
        self.examples: dict[Example, list[int]] = {}

    def _piece(self, example: Example) -> str:
        return self.template.separator + self.template.example.format(source=example[0], target=example[1])

    def ids(self, examples: Sequence[Example], caption_ids: Sequence[int]) -> list[int]:
        out = list(self.instruction)
        for example in examples:
            piece = self.examples.get(example)
            if piece is None:
                piece = self.examples[example] = self.encode(self._piece(example))
            out += piece
        out += self.lead
        out += caption_ids
        out += self.after
        return out

    def learn(self, examples: Sequence[Example], encode_many: Callable[[list[str]], list[list[int]]]) -> None:
        """The ids of the pieces of `examples` not known yet, in one call of `encode_many`."""
        fresh = [e for e in dict.fromkeys(examples) if e not in self.examples]
        if fresh:
            self.examples.update(zip(fresh, encode_many([self._piece(e) for e in fresh])))

    def agrees(self, examples: Sequence[Example], k: int,
               encode_many: Callable[[list[str]], list[list[int]]] | None = None) -> bool:
        """Whether assembled ids equal whole-prompt ids for every example and every probe caption: in
        windows of k examples that overlap by one (k > 1), so that each example follows the one before
        it and is followed by the next, after the instruction or an example and before an example or
        the query. `encode_many` (`encode` of many texts in one call) makes the check's hundreds of
        tokenizations one call each: it runs as a run starts, while the engine waits for its first
        requests."""
        if self.lead is None or not examples:
            return False
        many = encode_many or (lambda texts: [self.encode(t) for t in texts])
        self.learn(examples, many)
        stride = max(1, k - 1)
        starts = list(range(0, len(examples), stride)) + list(range(len(PROBE_CAPTIONS)))
        windows = [([examples[(j + m) % len(examples)] for m in range(k)],
                    normalise_caption(PROBE_CAPTIONS[n % len(PROBE_CAPTIONS)]))
                   for n, j in enumerate(starts)]
        captions = list(dict.fromkeys(caption for _, caption in windows))
        caption_ids = dict(zip(captions, many(captions)))
        wholes = many([self.template.render(shown, caption) for shown, caption in windows])
        return all(self.ids(shown, caption_ids[caption]) == whole for (shown, caption), whole in zip(windows, wholes))


_ASSEMBLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encode's owner -> {key: PromptIds | None}


def assemble(template: Template, encode: Callable[[str], list[int]], examples: Sequence[Example], k: int,
             key: str, encode_many: Callable[[list[str]], list[list[int]]] | None = None) -> PromptIds | None:
    """The checked PromptIds of `template` with the examples a meta set gives (`key` names the set: its
    digest), kept with the tokenizer's owner (the engine) like chat frames; None for a chat template
    or where assembly does not agree with tokenizing whole (see PromptIds)."""
    if template.chat:
        return None
    owner = getattr(encode, "__self__", encode)
    found = _ASSEMBLERS.setdefault(owner, {})
    if (template, key) not in found:
        assembler = to_check(template, encode)
        found[template, key] = assembler if assembler is not None and assembler.agrees(list(examples), k, encode_many) else None
    return found[template, key]


def to_check(template: Template, encode: Callable[[str], list[int]]) -> PromptIds | None:
    """The PromptIds that `assemble` checks, unchecked; None where it can only find them wrong (a chat
    template; a query whose start does not tokenize as a piece of its own)."""
    if template.chat:
        return None
    assembler = PromptIds(template, encode)
    return assembler if assembler.lead is not None else None
