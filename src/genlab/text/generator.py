"""The Python API for text: load a model once, then generate, stream or chat.

    from genlab import TextGenerator
    gen = TextGenerator()                      # the bundled SmolLM2, offline
    print(gen.generate("Explain attention", max_new_tokens=100, temperature=0.7, top_p=0.9))
    for piece in gen.stream("Write a haiku"): print(piece.text, end="")
    gen.chat([{"role": "user", "content": "Hi"}])

The CLI and the server call the same methods, so a given seed gives the same text everywhere.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Iterator

from genlab.errors import GenlabError, check
from genlab.autoregressive import speculative
from genlab.autoregressive.decode import TextPiece, DecodeStats, TokenStep, decode, detokenize, timed
from genlab.autoregressive.sampling import SamplingParams
from genlab.autoregressive.structured import constraint_for
from genlab.text.sources import DEFAULT_TEXT_MODEL, resolve
from genlab.text.tokenizer import check_messages


@dataclass
class Generation:
    """Everything about one finished generation."""

    text: str
    finish_reason: str
    stats: DecodeStats  # seed, token counts and timings
    tokens: list[TokenStep] = field(default_factory=list)


class TextGenerator:
    def __init__(self, model: str = DEFAULT_TEXT_MODEL, device: str = "auto", dtype: str = "auto", adapter: str | None = None,
                 engine: str = "auto", draft: str | None = None):
        """`model`: a bundled name (`genlab models`), a .gguf file, a model folder or a cached hub id.
        `adapter`: a LoRA adapter folder (genlab finetune text, or any PEFT LoRA for this model), merged on load.
        `engine`: auto, onnx (a GGUF's 4-bit weights on ONNX Runtime, CPU) or torch (float; text/engine.py).
        `draft`: a draft model folder (genlab train draft) for speculative="draft"."""
        from genlab.registry import text_kind
        from genlab.text.engine import load_language_model, pick_dtype, pick_engine, resolve_device
        from genlab.text.sources import gguf_file

        t0 = time.perf_counter()
        dev = resolve_device(device)
        pick_dtype(dev, dtype)  # reject a bad device, dtype or engine before any slow work
        gguf = gguf_file(model)
        self.engine = pick_engine(engine, dev, dtype, gguf)
        self.device, self.dtype, self.adapter = dev, dtype, adapter and str(adapter)  # what a receipt records (receipts.py)
        self.model_name = model
        self.kind = text_kind(model)
        self.folder = resolve(model)
        self.weights_path = gguf or self.folder  # the file the numbers come from, for the receipt's digest
        if self.kind.name == "diffusion-lm":  # unmasking.py: the same calls, another sampler
            from genlab.diffusion.unmasking import UnmaskingText

            check(adapter is None, "adapter works with causal LMs; a masked-diffusion LM takes no LoRA adapter yet", "adapter")
            check(engine in ("auto", "torch"), "engine onnx runs causal GGUF models; a masked-diffusion LM runs on the torch engine", "engine")
            self.lm = self.unmasker = UnmaskingText(self.folder)
        else:
            from genlab.lora.adapter import Adapter

            lora = Adapter.for_model(adapter, model) if adapter else None
            self.unmasker = None
            self.lm = load_language_model(self.folder, device=device, dtype=dtype, adapter=lora, engine=engine, gguf=gguf)
        self.tokenizer = self.lm.tokenizer
        self.draft = None
        if draft is not None:
            from genlab.autoregressive.speculative import ModelDraft

            check(self.unmasker is None, "draft models guess for causal LMs; a masked-diffusion LM takes no draft", "draft")
            self.draft = ModelDraft(draft, self.tokenizer)
        self.load_s = time.perf_counter() - t0

    # -- prompts -----------------------------------------------------------------
    def prompt_ids(self, prompt: str | None = None, messages: list[dict] | None = None,
                   system: str | None = None, raw: bool = False) -> list[int]:
        """Token ids for a plain prompt (wrapped in the chat template unless raw) or for messages."""
        if self.unmasker:
            return self.unmasker.prompt_ids(prompt, messages, system, raw)
        if messages is None:
            check(isinstance(prompt, str) and prompt.strip() != "", "the prompt is empty; give some text to continue or answer")
            if raw or not self.tokenizer.chat_template:
                return self.tokenizer.encode(prompt, add_special_tokens=True)
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        check_messages(messages)
        return self.tokenizer.encode(self.tokenizer.chat_prompt(messages))

    # -- generation ----------------------------------------------------------------
    def stream(self, prompt: str | None = None, *, messages: list[dict] | None = None, system: str | None = None,
               raw: bool = False, stats: DecodeStats | None = None, steps: int | None = None, on_frame=None,
               **sampling) -> Iterator[TextPiece]:
        """Yield TextPieces as they are decoded. Keyword arguments are SamplingParams fields.
        A masked-diffusion LM also takes `steps` (unmasking steps; default one per token) and
        calls on_frame(step, text) after each, for a view of the text unfolding."""
        params = sampling.pop("params", None) or SamplingParams(**sampling)
        ids = self.prompt_ids(prompt, messages, system, raw)
        if self.unmasker:
            self.unmasker.check(params, steps)
            check(params.speculative not in ("lookup", "draft"), "speculative lookup and draft guess for causal LMs; a masked-diffusion LM "
                  "already writes many tokens a step, so only off and auto apply", "speculative")
        else:
            check(steps is None, "steps (unmasking steps) are for masked-diffusion LMs; a causal LM takes one step per token")
        self.check_fits(ids, params.max_new_tokens)
        self.check_bias(params)
        stats = stats if stats is not None else DecodeStats()
        stats.seed = params.seed if params.seed is not None else secrets.randbits(63)
        stats.prompt_tokens = len(ids)
        if self.unmasker:
            yield from self.unmasker.stream(ids, params, stats.seed, steps, stats, on_frame)
            return
        constraint = constraint_for(params, self.tokenizer, self.lm.stop_token_ids)  # structured output, or None
        guidance = self.guidance(params, ids, system, raw)  # classifier-free guidance, or None
        drafter = speculative.drafter_for(self.lm, params, self.draft)  # guess ahead, check in one pass: the same tokens
        if drafter is None:
            tokens = decode(self.lm, ids, params, stats.seed, constraint, guidance)
        else:
            tokens = speculative.decode(self.lm, ids, params, stats.seed, drafter, stats, constraint, guidance)
        tokens = timed(tokens, stats)
        yield from detokenize(self.tokenizer, tokens, params.stop)

    def guidance(self, params: SamplingParams, ids: list[int], system: str | None, raw: bool):
        """The unconditional branch for params.guidance_scale (guidance.py): the negative prompt, written as
        the prompt is (chat template, system message), or else the prompt's last token."""
        if params.guidance_scale == 1:
            return None
        from genlab.autoregressive.guidance import Guidance

        uncond = ids[-1:] if params.negative_prompt is None else self.prompt_ids(params.negative_prompt, system=system, raw=raw)
        check(len(uncond) + params.max_new_tokens <= self.lm.context_length,
              f"the negative prompt has {len(uncond)} tokens: with max_new_tokens={params.max_new_tokens} it does not fit "
              f"the context window of {self.lm.context_length}", "negative_prompt")
        return Guidance(self.lm, uncond, params.guidance_scale, params.max_new_tokens)

    def room(self, ids: list[int]) -> int:
        """How many new tokens fit in the context window after the prompt `ids`."""
        return max(self.lm.context_length - len(ids), 0)

    def check_bias(self, params: SamplingParams) -> None:
        if not params.logit_bias:  # (a masked-diffusion LM has refused one already: unmasking.py)
            return
        vocab = self.tokenizer.vocab_size
        outside = [t for t in params.logit_bias if t >= vocab]
        check(not outside, f"logit_bias names token {outside[0] if outside else 0}, outside this model's vocabulary "
              f"(token ids 0 to {vocab - 1})", "logit_bias")

    def check_fits(self, ids: list[int], max_new_tokens: int) -> None:
        check(max_new_tokens <= self.room(ids),
              f"max_new_tokens={max_new_tokens} does not fit: the prompt has {len(ids)} tokens and the "
              f"context window is {self.lm.context_length}, so at most {self.room(ids)} new tokens are possible")

    def complete(self, prompt: str | None = None, **kwargs) -> Generation:
        """Run to the end: text, finish reason, stats (seed, counts, timings) and per-token details."""
        stats = DecodeStats()
        text, tokens, finish = [], [], "length"
        for piece in self.stream(prompt, stats=stats, **kwargs):
            text.append(piece.text)
            tokens.extend(piece.tokens)
            finish = piece.finish_reason or finish
        return Generation("".join(text), finish, stats, tokens)

    def generate(self, prompt: str, **kwargs) -> str:
        """The generated text for `prompt` (chat-formatted for chat models unless raw=True)."""
        return self.complete(prompt, **kwargs).text

    def chat(self, messages: list[dict], **kwargs) -> str:
        """The assistant's reply to a conversation given as [{'role': ..., 'content': ...}, ...]."""
        if not isinstance(messages, list):
            raise GenlabError("messages must be a list of {'role': ..., 'content': ...}")
        return self.complete(messages=messages, **kwargs).text

    @property
    def num_parameters(self) -> int:
        return self.lm.num_parameters
