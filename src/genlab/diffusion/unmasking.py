"""Text from a masked-diffusion LM through TextGenerator: the same calls as a GPT, another sampler.

    gen = TextGenerator("pydoc-mdlm")
    gen.generate("The for statement", max_new_tokens=32, steps=32, seed=0)
    for frame in gen.unfold("The for statement", max_new_tokens=32, steps=8): print(frame)

A GPT's text comes out one token per network call, left to right; here the whole block of
max_new_tokens starts masked and `steps` calls reveal it in any order (diffusion/masked_lm.py
holds the model, its loss and the unmasking sampler). So a stream has one piece, at the end,
and unfold() shows the frames between. Temperature and top-k apply to each guess; options
that only mean something left to right (stop strings, repetition penalty, per-token
logprobs, a chat template) are refused in one line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from genlab.errors import check
from genlab.autoregressive.decode import DecodeStats, TextPiece
from genlab.autoregressive.sampling import SamplingParams

DEFAULT_TOKENS = 64  # the block a request without max_new_tokens fills


class UnmaskingText:
    """A DiffusionLm behind TextGenerator's interface."""

    def __init__(self, folder):
        from genlab.diffusion.masked_lm import DiffusionLm

        self.lm = DiffusionLm.load(folder)
        self.tokenizer = self.lm.tokenizer
        self.context_length = self.lm.model.cfg.max_seq_len
        self.num_parameters = sum(p.numel() for p in self.lm.model.parameters())

    def prompt_ids(self, prompt: str | None, messages, system, raw: bool) -> list[int]:
        check(messages is None and system is None, "a masked-diffusion LM has no chat template: send a plain prompt "
                                                   "(genlab text, /v1/completions), not messages or a system prompt")
        check(isinstance(prompt, str), "the prompt must be a string")
        return self.tokenizer.encode(prompt).ids

    def check(self, params: SamplingParams, steps: int | None) -> None:
        what = "a masked-diffusion LM reveals its tokens in any order, so it cannot honour "
        check(not params.stop, what + "stop strings; leave them out")
        check(params.repetition_penalty == 1.0, what + "a repetition penalty; leave it at 1")
        check(params.top_p == 1.0 and params.min_p == 0.0, "a masked-diffusion LM samples with temperature and top_k only; "
                                                           "leave top_p at 1 and min_p at 0")
        check(params.top_logprobs == 0, what + "per-token logprobs; leave them out")
        check(not params.logit_bias, "logit_bias is for causal LMs; a masked-diffusion LM samples with temperature and "
              "top_k only; leave it out", "logit_bias")
        check(params.guidance_scale == 1, "guidance_scale is for causal LMs here (each step of classifier-free guidance "
              "scores one next token); leave it at 1 for a masked-diffusion LM", "guidance_scale")
        check(params.structure is None, what + f"{params.structure} (a grammar reads the text left to right); use a causal "
              "LM such as the bundled smollm2 for structured output", params.structure or "")
        check(steps is None or isinstance(steps, int) and 1 <= steps <= 1024,
              f"steps must be an integer between 1 and 1024 (unmasking steps), got {steps!r}")

    def unfold(self, ids: list[int], params: SamplingParams, seed: int, steps: int | None) -> Iterator:
        """The sampler's UnmaskStep after each network call."""
        from genlab.diffusion.masked_lm import unmask

        tokens = params.max_new_tokens
        check(len(ids) + tokens <= self.context_length,
              f"max_new_tokens={tokens} does not fit: the prompt has {len(ids)} tokens and the context window is "
              f"{self.context_length}, so at most {max(self.context_length - len(ids), 0)} new tokens are possible")
        yield from unmask(self.lm.model, ids, self.lm.mask_id, tokens, steps or tokens, params.temperature, params.top_k, seed)

    def stream(self, ids: list[int], params: SamplingParams, seed: int, steps: int | None, stats: DecodeStats,
               on_frame=None) -> Iterator[TextPiece]:
        """One TextPiece with the whole block, after the last step; on_frame(step, text) sees each step."""
        start, last = time.perf_counter(), None
        for last in self.unfold(ids, params, seed, steps):
            if stats.ttft_s == 0.0:
                stats.ttft_s = time.perf_counter() - start  # the first network call: the first tokens appear
            if on_frame:
                on_frame(last, self.lm.show(last.ids[len(ids):]))
        stats.completion_tokens = params.max_new_tokens
        stats.total_s = time.perf_counter() - start
        yield TextPiece(self.lm.show(last.ids[len(ids):]), [], "length")
