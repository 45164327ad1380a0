"""transformers on CPU (or one GPU): batched `generate` with left padding, stopping at a line break.

Each row samples with its own seeded generator (see `SeededSampler`), so a row's rewrite does not
depend on which other rows share its batch.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import model as model_lib
from ..settings import BATCH_SIZE, Sampling
from .base import Completion, EngineError, Request, TokenizerEngine


class SeededSampler:
    """A logits processor that samples each row with its own torch.Generator (temperature, then
    top-p) and leaves only the chosen token: greedy decoding then picks it. Generation settings stay
    deterministic per row whatever the batch composition."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        sorted_probs = sorted_probs.masked_fill(cumulative - sorted_probs >= self.top_p, 0.0)
        sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
        draws = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(scores.device)
        positions = torch.searchsorted(sorted_probs.cumsum(dim=-1), draws.unsqueeze(-1))
        positions = positions.clamp(max=sorted_probs.shape[-1] - 1)
        chosen = order.gather(-1, positions)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)


class TransformersEngine(TokenizerEngine):
    name = "transformers"

    def __init__(self, model: str | None, batch_size: int = BATCH_SIZE, dtype: str = "float32",
                 device: str | None = None, max_model_len: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = model_lib.resolve(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model)
            self.lm = AutoModelForCausalLM.from_pretrained(self.model, dtype=getattr(torch, dtype))
        except OSError as e:
            raise EngineError(f"cannot load model {self.model}: {e}") from None
        self.lm.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        context = getattr(self.lm.config, "max_position_embeddings", None) or 2048
        self._context = min(context, max_model_len) if max_model_len else context

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList

        out: list[Completion | None] = [None] * len(requests)
        # Similar lengths share a batch: less padding to compute.
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=sampling.max_new_tokens,
            stop_strings=["\n"],
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            batch = [requests[i] for i in idx]
            enc = self.tokenizer([r.prompt for r in batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            sampler = SeededSampler([r.seed for r in batch], sampling.temperature, sampling.top_p)
            with torch.inference_mode():
                ids = self.lm.generate(**enc, generation_config=config, tokenizer=self.tokenizer,
                                       logits_processor=LogitsProcessorList([sampler]))
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            new = ids[:, enc["input_ids"].shape[1]:].tolist()
            for i, row, plen in zip(idx, new, prompt_lens):
                out[i] = self._completion(row, plen, sampling.max_new_tokens)
        return out  # type: ignore[return-value]

    def _completion(self, row: list[int], prompt_tokens: int, max_new: int) -> Completion:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        tokens: list[int] = []
        for t in row:
            if t == eos:
                tokens.append(t)
                break
            tokens.append(t)
        # After a row stops, generate pads it with pad_token_id (the eos here): drop that padding.
        while tokens and tokens[-1] == pad and pad != eos:
            tokens.pop()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        stopped = "\n" in text or (tokens and tokens[-1] == eos)
        return Completion(text=text, prompt_tokens=prompt_tokens, generated_tokens=len(tokens),
                          finish_reason="stop" if stopped or len(tokens) < max_new else "length")

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model, "device": self.device,
                "dtype": str(self.lm.dtype).replace("torch.", ""), "batch_size": self.batch_size}


def create(model: str | None, **options) -> TransformersEngine:
    return TransformersEngine(model, **options)
