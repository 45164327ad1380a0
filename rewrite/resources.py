"""Files shipped with the package (prompt templates, meta sets, the demo captions).

In the repository they live in top-level folders (prompts/, meta_pairs/, demo/); pyproject.toml installs
them as the packages rewrite.prompts, rewrite.meta_pairs and rewrite.demo_data, so an installed copy
finds them the same way.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from . import storage


def resource(package: str, name: str) -> Path:
    """Path of a shipped file, e.g. resource("meta_pairs", "chatgpt.jsonl")."""
    path = Path(str(resources.files(f"rewrite.{package}").joinpath(name)))
    if not storage.is_file(path):
        raise FileNotFoundError(f"shipped file {package}/{name} is missing from the installed package")
    return path


def list_resources(package: str, suffix: str) -> list[str]:
    root = resources.files(f"rewrite.{package}")
    return sorted(p.name for p in root.iterdir() if p.name.endswith(suffix))
