"""Embedding similarity between a caption and its rewrite, with a model the user already has on disk
(never downloaded): a CLIP checkpoint in Hugging Face form (its text tower: the space CLIP trains in)
or a sentence-embedding / encoder model (mean of its last hidden states over the tokens)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .. import storage

BATCH = 64


class EmbeddingError(ValueError):
    pass


class Embedder:
    def __init__(self, model_dir: str | Path, max_tokens: int = 77):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(model_dir)
        if not storage.is_dir(path):
            raise EmbeddingError(f"--embedding-model {model_dir}: not a local model folder (nothing is downloaded)")
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            if config.model_type == "clip":
                from transformers import CLIPModel

                self.model, self.clip = CLIPModel.from_pretrained(path, local_files_only=True), True
            else:
                self.model, self.clip = AutoModel.from_pretrained(path, local_files_only=True), False
        except (OSError, ValueError) as e:
            raise EmbeddingError(f"--embedding-model {model_dir}: cannot load it ({e})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.torch, self.max_tokens, self.name = torch, max_tokens, str(path)

    def embed(self, texts: Sequence[str]):
        """Unit vectors, one per text."""
        torch = self.torch
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        with torch.inference_mode():
            if self.clip:
                vectors = self.model.get_text_features(**batch)
            else:
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vectors = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(vectors.float(), dim=-1)

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Cosine similarity of each (caption, rewrite), in batches."""
        out: list[float] = []
        for start in range(0, len(pairs), BATCH):
            chunk = pairs[start:start + BATCH]
            a, b = self.embed([p[0] for p in chunk]), self.embed([p[1] for p in chunk])
            out += [v for v in (a * b).sum(-1).tolist() if not math.isnan(v)]
        return out
