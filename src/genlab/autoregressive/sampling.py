"""Next-token sampling: how a distribution over the vocabulary becomes one token.

An LLM's output at each step is a vector of logits, one per vocabulary entry. The
filters below reshape that distribution before one token is drawn from it, in the
order transformers applies them (so the same seed draws the same token):

    [grammar mask] -> repetition penalty -> [logit bias] -> temperature -> top-k -> top-p -> min-p -> draw

(the grammar mask is structured output's, structured.py; logit bias is OpenAI's logit_bias).

Each filter takes logits (..., V) and returns logits with the removed tokens set to -inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.autoregressive.structured import FORMATS, grammar_of
from genlab.errors import check, check_number, check_text

SPECULATIVE = ("off", "lookup", "draft", "auto")  # speculative.py: how many tokens a pass may write; never what they are


@dataclass
class SamplingParams:
    """How to pick each next token; validated on creation, so every front end shares the checks.

    temperature 0 means greedy (always the most likely token).
    """

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # None = a fresh random seed, reported back so a run can be repeated
    top_logprobs: int = 0  # how many top candidates to report at each step
    ignore_eos: bool = False  # keep going past the end-of-turn token (benchmarks want fixed lengths)
    speculative: str = "auto"  # off, lookup (guess from n-grams of the text so far), draft (a draft model) or auto
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (OpenAI's field)
    guidance_scale: float = 1.0  # classifier-free guidance (guidance.py): 1 = off, > 1 follows the prompt more closely
    negative_prompt: str | None = None  # guidance's unconditional text (default: the prompt's last token)
    # structured output (structured.py), at most one: the text must match it
    json_schema: dict | bool | None = None  # a JSON Schema; True = any JSON object (OpenAI's json_object)
    regex: str | None = None
    choice: list[str] | None = None  # exactly one of these strings
    grammar: str | None = None  # a Lark or GBNF grammar
    grammar_text: str | None = field(default=None, init=False, repr=False, compare=False)  # compiled from the above

    def __post_init__(self):
        check_number("max_new_tokens", self.max_new_tokens, 1, integer=True)
        check_number("temperature", self.temperature, 0, 100)  # 0 = greedy
        check_number("top_k", self.top_k, 0, integer=True)  # 0 = off
        check_number("top_p", self.top_p, 0, 1, above=True)  # 1 = off
        check_number("min_p", self.min_p, 0, 1)  # 0 = off
        check_number("repetition_penalty", self.repetition_penalty, 0, 100, above=True)  # 1 = off
        check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        for s in self.stop:
            check_text("a stop string", s)
        check_number("top_logprobs", self.top_logprobs, 0, 20, integer=True)
        check(self.speculative in SPECULATIVE,
              f"speculative must be one of {', '.join(SPECULATIVE)}, got {self.speculative!r}", "speculative")
        check(isinstance(self.logit_bias, dict), "logit_bias must map token ids to biases", "logit_bias")
        for token, bias in self.logit_bias.items():
            check(isinstance(token, int) and not isinstance(token, bool) and token >= 0,
                  f"logit_bias keys must be token ids (integers of at least 0), got {token!r}", "logit_bias")
            check(isinstance(bias, (int, float)) and not isinstance(bias, bool) and -100 <= bias <= 100,
                  f"logit_bias values must be numbers between -100 and 100, got {bias!r} for token {token}", "logit_bias")
        check_number("guidance_scale", self.guidance_scale, 0, 100)  # 1 = off; infinity would be all argmax of a difference
        if self.negative_prompt is not None:
            check(isinstance(self.negative_prompt, str) and self.negative_prompt.strip() != "",
                  "negative_prompt must be non-empty text", "negative_prompt")
            check_text("negative_prompt", self.negative_prompt)
            check(self.guidance_scale != 1, "negative_prompt works through guidance: give a guidance_scale other than 1 "
                  "(e.g. 1.5)", "negative_prompt", "guidance_scale")
        given = [f for f in FORMATS if getattr(self, f) not in (None, False)]
        check(len(given) <= 1, f"give one output format at a time, not {' and '.join(given)}", *given)
        if given:
            check(not self.ignore_eos, f"ignore_eos cannot be combined with {given[0]}: a structured output ends "
                  "when it is complete", "ignore_eos")
            self.grammar_text = grammar_of(given[0], getattr(self, given[0]))
        check(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**63),
              f"seed must be an integer in [0, 2^63) (got {self.seed!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def structure(self) -> str | None:
        """The structured-output field in use (json_schema, regex, choice or grammar), or None."""
        return next((f for f in FORMATS if getattr(self, f) not in (None, False)), None)


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens already in `seen` less likely (CTRL, Keskar et al. 2019, eq. 1):
    a positive logit is divided by the penalty, a negative one multiplied."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    old = logits.gather(-1, seen)
    new = torch.where(old < 0, old * penalty, old / penalty)
    return logits.scatter(-1, seen, new)


def biased(logits: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """OpenAI's logit_bias: add each listed token's bias to its logit before sampling. -100 all but
    bans a token and +100 all but forces it; values between nudge it. logits: (..., V)."""
    if not bias:
        return logits
    out = logits.clone()
    out[..., list(bias)] += torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    return out


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits (ties with the k-th are kept too)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens
    whose probabilities add up to at least p. 0.5/0.3/0.2 with p=0.7 keeps two tokens."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= 1 - p  # the unlikely tail that holds at most 1-p of the mass
    drop_sorted[..., -1] = False  # always keep the most likely token
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens at least min_p times as likely as the most likely one (Nguyen et al. 2024)."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def filtered_logits(logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams,
                    allowed: torch.Tensor | None = None) -> torch.Tensor:
    """All the filters, in order. Temperature divides before the truncations, as in transformers.
    allowed (V,) bool: a structured output's grammar mask (structured.py), applied first, so the
    truncations share out the probability among valid tokens only."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    logits = biased(repetition_penalty(logits, seen, params.repetition_penalty), params.logit_bias)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def next_token(logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams, rng: torch.Generator,
               allowed: torch.Tensor | None = None) -> int:
    """Pick the next token id from one step's logits (V,); `allowed`: a grammar mask (structured.py)."""
    logits = filtered_logits(logits, seen, params, allowed)
    if params.greedy:
        return int(logits.argmax())
    probs = logits.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng))
