"""Classifier-free guidance for text ("Stay on topic with Classifier-Free Guidance", Sanchez et al. 2023).

The same idea as for images (diffusion/samplers.py): run the model twice, once with the prompt
and once without it (or with a negative prompt), and push the next-token distribution away from
the second, towards what the prompt in particular asks for (their eq. 7, in log-probabilities):

    log p_cfg(x) = log p(x | uncond) + gamma * (log p(x | prompt) - log p(x | uncond))

gamma = 1 gives back the model's own distribution (guidance off), gamma > 1 follows the prompt
more closely, 0 <= gamma < 1 follows it less. The unconditional text is the negative prompt,
or, without one, the prompt's last token alone, as transformers' `generate(guidance_scale=...)`
does; each written token is appended to both. The guided log-probabilities then go through the
usual filters (sampling.py), so a seed draws what transformers draws (tests/test_guidance.py).
The price: a second pass of the model per step, with its own KV cache.
"""

from __future__ import annotations

import torch


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Sanchez et al. eq. 7 on logits (..., V): the guided log-probabilities."""
    log_c, log_u = cond.log_softmax(dim=-1), uncond.log_softmax(dim=-1)
    return scale * (log_c - log_u) + log_u


class Guidance:
    """The unconditional branch of one generation: its own KV cache, fed every token the text gets."""

    def __init__(self, lm, uncond_ids: list[int], scale: float, max_new_tokens: int):
        self.lm, self.scale = lm, scale
        self.cache = lm.new_cache(len(uncond_ids) + max_new_tokens)
        self.length = 0  # positions in the cache
        self.uncond_ids = uncond_ids
        self.last: list[int] = []  # the ids of the latest pass

    def prefill(self) -> torch.Tensor:
        """The unconditional logits (V,) for the first new token."""
        return self.feed(self.uncond_ids)[-1]

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Append ids; the unconditional logits (len(ids), V) after each of them (only the last row,
        (1, V), on an engine that scores one position per pass: speculative decoding never uses those)."""
        if len(ids) == 1 or not hasattr(self.lm, "forward_all"):
            rows = self.lm.forward(ids, self.cache).unsqueeze(0)
        else:
            rows = self.lm.forward_all(ids, self.cache, len(ids))
        self.length += len(ids)
        self.last = list(ids)
        return rows

    def keep(self, count: int) -> None:
        """Of the latest pass's ids, keep the first `count` (speculative decoding rejected the rest)."""
        self.length -= len(self.last) - count
        self.lm.rewind(self.cache, self.length)

    def __call__(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return guided(cond, uncond, self.scale)
