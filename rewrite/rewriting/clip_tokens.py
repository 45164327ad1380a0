"""Counting CLIP text tokens with the BPE tokenizer that ships inside the open-clip-torch package.

Only open_clip's tokenizer module is loaded, from its file: importing the `open_clip` package would
import its models, transforms and torchvision, none of which counting needs. Nothing is downloaded:
the BPE vocabulary is a file inside the package.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

INSTALL_HINT = "pip install --no-deps open-clip-torch ftfy"


class ClipTokenizerError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def _tokenizer():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ClipTokenizerError(f"checking rewrites against CLIP's 77 tokens needs open-clip-torch: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("rewrite._open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ImportError as e:
        raise ClipTokenizerError(f"open_clip's tokenizer needs {e.name}: {INSTALL_HINT}") from None
    return module.SimpleTokenizer()


def count(text: str) -> int:
    """Tokens CLIP's text encoder sees for `text`, its start and end tokens included."""
    return len(_tokenizer().encode(text)) + 2


def check_available() -> None:
    _tokenizer()
