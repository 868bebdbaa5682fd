"""Autoregressive decoding: the whole idea of LLM text generation, in one loop.

    prompt ids --(one forward pass over all of them: "prefill")--> logits for the next token
    repeat: pick a token from the logits (sampling.py), feed just that token back
            (the KV cache holds everything earlier), get the next logits

`decode()` yields one TokenStep per generated token (speculative.py yields the same tokens
with fewer passes of the model, by checking guesses); `detokenize()` turns those into
text pieces, waiting out half-finished UTF-8 characters and cutting at stop strings.
The CLI, the Python API, the server and the benchmarks all consume these two generators.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Protocol

import torch

from genlab.autoregressive.sampling import SamplingParams, next_token

if TYPE_CHECKING:
    from genlab.autoregressive.guidance import Guidance
    from genlab.autoregressive.structured import Constraint
    from genlab.text.tokenizer import Tokenizer


class LanguageModel(Protocol):
    """What the loop needs from an engine. genlab's own Llama and transformers' models
    implement it (engine.py); another backend, llama.cpp say, only has to do the same."""

    tokenizer: Tokenizer
    context_length: int
    stop_token_ids: set[int]

    def new_cache(self, max_len: int): ...

    def forward(self, ids: list[int], cache) -> torch.Tensor:
        """Append ids to the cache; return the logits (V,) float32 for the position after them."""
        ...

    # optional, for speculative decoding (speculative.py): an engine without them decodes plainly
    def forward_all(self, ids: list[int], cache, count: int) -> torch.Tensor:
        """Append ids; return the logits (count, V) for the positions after each of the last `count` ids."""
        ...

    def rewind(self, cache, length: int) -> None:
        """Forget every position from `length` on (the keys and values of rejected guesses)."""
        ...


@dataclass
class TokenStep:
    token_id: int
    logprob: float  # log-probability of this token under the model's raw distribution (temperature 1, no filters)
    top: list[tuple[int, float]]  # the top candidates at this step: (token id, probability), raw distribution
    finish_reason: str | None = None  # "stop" (end-of-turn token) or "length" on the last step


@dataclass
class TextPiece:
    text: str  # the text that these tokens added (may be "" while a character or stop string is pending)
    tokens: list[TokenStep] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" or "length" on the last piece


def decode(lm: LanguageModel, prompt_ids: list[int], params: SamplingParams, seed: int,
           constraint: Constraint | None = None, guidance: Guidance | None = None) -> Iterator[TokenStep]:
    """Generate up to params.max_new_tokens tokens after prompt_ids, one TokenStep each.
    `constraint`: a structured output's grammar state (structured.py), which masks each step's logits;
    `guidance`: classifier-free guidance's unconditional branch (guidance.py).
    (speculative.py writes the same tokens with fewer passes of the model.)"""
    rng = torch.Generator().manual_seed(seed)
    cache = lm.new_cache(len(prompt_ids) + params.max_new_tokens)
    seen = torch.tensor(prompt_ids, dtype=torch.long)  # for the repetition penalty
    logits = lm.forward(prompt_ids, cache)  # prefill: (V,)
    uncond = guidance.prefill() if guidance else None
    for i in range(params.max_new_tokens):
        allowed = constraint.allowed(logits.shape[-1]) if constraint else None
        scores = guidance(logits, uncond) if guidance else logits
        token = next_token(scores, seen, params, rng, allowed)
        if constraint:
            constraint.consume(token)
        step = token_step(lm, logits, token, params, i)
        yield step
        if step.finish_reason:
            return
        if params.repetition_penalty != 1.0:
            seen = torch.cat([seen, torch.tensor([token])])
        logits = lm.forward([token], cache)
        if guidance:
            uncond = guidance.feed([token])[-1]


def token_step(lm: LanguageModel, logits: torch.Tensor, token: int, params: SamplingParams, i: int) -> TokenStep:
    """The record of choosing `token` from `logits` (V,) as the i-th new token: its log-probability,
    the top candidates, and whether it ends the reply."""
    logprobs = logits.log_softmax(dim=-1)
    top = []
    if params.top_logprobs:
        values, ids = logprobs.topk(params.top_logprobs)
        top = [(int(t), float(v.exp())) for t, v in zip(ids, values)]
    ended = token in lm.stop_token_ids and not params.ignore_eos
    finish = "stop" if ended else "length" if i == params.max_new_tokens - 1 else None
    return TokenStep(token, float(logprobs[token]), top, finish)


def detokenize(tokenizer, steps: Iterator[TokenStep], stop: list[str] = ()) -> Iterator[TextPiece]:
    """Turn token steps into text pieces; end at the first stop string, which is not emitted.

    Text that might be the start of a stop string is held back until it is known not to be.
    """
    ids: list[int] = []
    pending: list[TokenStep] = []
    emitted = 0  # characters of the text already yielded
    for step in steps:
        pending.append(step)
        ids.append(step.token_id)
        text = tokenizer.decode(ids)  # special tokens (end of turn) decode to ""
        for s in stop:
            cut = text.find(s, max(0, emitted - len(s) + 1))
            if cut >= 0:
                yield TextPiece(text[emitted:cut], pending, "stop")
                return
        if step.finish_reason:
            yield TextPiece(text[emitted:], pending, step.finish_reason)
            return
        if text.endswith("\ufffd"):  # the bytes of a character are split across tokens: wait
            continue
        safe = len(text) - _stop_prefix_len(text, stop)
        if safe > emitted:
            yield TextPiece(text[emitted:safe], pending)
            emitted, pending = safe, []


def _stop_prefix_len(text: str, stop) -> int:
    """Length of the longest end of `text` that is the beginning of some stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


@dataclass
class DecodeStats:
    """What one generation cost, in the units people quote, and the seed that reproduces it."""

    seed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0  # time to first token: prefill plus one sampling step
    total_s: float = 0.0
    draft_tokens: int = 0  # speculative decoding: tokens the draft proposed ...
    accepted_tokens: int = 0  # ... and those the model kept

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first one: the steady decoding rate."""
        after_first = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / after_first if self.completion_tokens > 1 and after_first > 0 else 0.0


def timed(steps: Iterator[TokenStep], stats: DecodeStats) -> Iterator[TokenStep]:
    """Pass steps through, recording ttft, token count and total time into `stats`."""
    t0 = time.perf_counter()
    for step in steps:
        if stats.completion_tokens == 0:
            stats.ttft_s = time.perf_counter() - t0
        stats.completion_tokens += 1  # the end-of-turn token counts: the model computed it
        stats.total_s = time.perf_counter() - t0
        yield step
