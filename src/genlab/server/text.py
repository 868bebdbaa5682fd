"""POST /v1/chat/completions and /v1/completions: TextGenerator behind OpenAI's shapes.

Each choice is one call of the same TextGenerator.stream() the CLI uses, with the same
SamplingParams, so a request with seed S gives `genlab text --seed S`'s text. Choice i of
n uses seed S + i. A stream sends one chunk per text piece and ends with `data: [DONE]`.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from genlab.errors import check
from genlab.receipts import fingerprint, text_record
from genlab.server.admission import DONE, error_event, event_stream, in_thread, sse
from genlab.server.protocol import (ChatRequest, CompletionRequest, chat_logprobs, completion_logprobs, new_id, now,
                                    usage)
from genlab.autoregressive.decode import DecodeStats
from genlab.autoregressive.sampling import SamplingParams
from genlab.text.batching import Batcher
from genlab.text.generator import Generation

router = APIRouter()
MAX_CHOICES = 16


def _record(gen, choices: list[Choice], stats: list[DecodeStats]) -> dict:
    """The request's receipt: each choice's input and the seed it used (genlab replay runs it again)."""
    inputs = [{"index": c.index, **c.prompt, "steps": c.steps, "seed": s.seed} for c, s in zip(choices, stats)]
    return text_record(gen, choices[0].params, inputs)


@dataclass
class Choice:
    """One answer to produce: what to feed TextGenerator.stream and how to sample."""

    index: int
    prompt: dict  # {"messages": [...]} or {"prompt": str, "raw": True}
    params: SamplingParams
    steps: int | None = None  # a masked-diffusion LM's unmasking steps


def plan(gen, body, prompts: list[dict], limit: int, default_tokens: int | None) -> list[Choice]:
    """Validate everything before any work starts, so bad input is a 400 and never half a stream."""
    check(1 <= body.n <= MAX_CHOICES, f"n must be between 1 and {MAX_CHOICES}, got {body.n}")
    check(len(prompts) * body.n <= MAX_CHOICES, f"a request may ask for at most {MAX_CHOICES} generations: "
          f"{len(prompts)} prompts times n {body.n} is {len(prompts) * body.n}; send fewer prompts or a smaller n")
    requested = body.token_limit()
    check(requested is None or requested <= limit,
          f"max_tokens must be at most {limit} on this server (its --max-tokens), got {requested}")
    top = body.top_k_logprobs()
    choices = []
    for p, prompt in enumerate(prompts):
        ids = gen.prompt_ids(**prompt)
        if gen.unmasker:  # a masked-diffusion LM fills a block, by default as large as `genlab text`'s
            from genlab.diffusion.unmasking import DEFAULT_TOKENS

            default_tokens = default_tokens or DEFAULT_TOKENS
        tokens = requested if requested is not None else min(default_tokens or limit, limit, max(gen.room(ids), 1))
        steps = getattr(body, "steps", None)
        for i in range(body.n):
            params = SamplingParams(**body.sampling(tokens, top, i))
            check(params.speculative != "draft" or getattr(gen, "draft", None) is not None,
                  "speculative draft needs a draft model, and this server's model has none; use lookup, auto or off", "speculative")
            gen.check_fits(ids, params.max_new_tokens)
            if gen.unmasker:
                gen.unmasker.check(params, steps)
            else:
                check(steps is None, "steps (unmasking steps) are for masked-diffusion LMs; this model writes one token per step")
            choices.append(Choice(p * body.n + i, prompt, params, steps))
    return choices


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    name, gen = request.app.state.models.pick("text", body.model)
    messages = [m.plain() for m in body.messages]
    choices = plan(gen, body, [{"messages": messages}], request.app.state.config.max_tokens, None)
    return await respond(request, gen, name, body, choices, chat=True)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    name, gen = request.app.state.models.pick("text", body.model)
    prompts = [{"prompt": p, "raw": True} for p in body.prompts()]
    choices = plan(gen, body, prompts, request.app.state.config.max_tokens, 16)  # OpenAI's default max_tokens
    return await respond(request, gen, name, body, choices, chat=False)


async def respond(request: Request, gen, name: str, body, choices: list[Choice], chat: bool):
    ticket = request.app.state.admission.ticket("text", batched=isinstance(gen.lm, Batcher))
    if body.stream:
        return event_stream(_stream(ticket, gen, name, body, choices, chat), ticket)
    done = await ticket.run(request, lambda: _complete_all(ticket, gen, choices))
    if done is None:
        return Response(status_code=499)  # the client went away; its decoding has stopped
    out = []
    for c, g in zip(choices, done):
        logprobs = _logprobs(gen, body, c, g.tokens, chat, 0)
        answer = {"message": {"role": "assistant", "content": g.text}} if chat else {"text": g.text}
        out.append({"index": c.index, **answer, "logprobs": logprobs, "finish_reason": g.finish_reason})
    prompt_tokens = sum(g.stats.prompt_tokens for c, g in zip(choices, done) if c.index % body.n == 0)
    return {"id": new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion" if chat else "text_completion",
            "created": now(), "model": name, "system_fingerprint": fingerprint(gen), "choices": out,
            "usage": usage(prompt_tokens, sum(g.stats.completion_tokens for g in done), [g.stats for g in done]),
            "seed": body.seed, "record": _record(gen, choices, [g.stats for g in done]),
            "timings": _timings(done[0].stats)}


async def _stream(ticket, gen, name: str, body, choices: list[Choice], chat: bool):
    """SSE chunks: for chat, a role delta, content deltas, a finish chunk; then usage if asked; then [DONE]."""
    cid, created = new_id("chatcmpl" if chat else "cmpl"), now()
    kind = "chat.completion.chunk" if chat else "text_completion"
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def chunk(choice: dict | None, **extra) -> str:
        return sse({"id": cid, "object": kind, "created": created, "model": name, "system_fingerprint": fingerprint(gen),
                    "choices": [choice] if choice else [], **extra})

    prompt_tokens = completion_tokens = 0
    every = []  # each choice's DecodeStats, for the usage chunk
    try:
        async with ticket.slot():
            for c in choices:
                stats, offset = DecodeStats(), 0  # characters of this choice's text already sent
                every.append(stats)
                if chat:
                    yield chunk({"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None})
                finish = "length"
                async with aclosing(_pieces(ticket, gen, c, stats)) as pieces:  # closed at once if the client leaves
                    async for piece in pieces:
                        logprobs = _logprobs(gen, body, c, piece.tokens, chat, offset) if piece.tokens else None
                        offset += len(piece.text)
                        finish = piece.finish_reason or finish
                        if piece.text or logprobs:
                            payload = {"delta": {"content": piece.text}} if chat else {"text": piece.text}
                            yield chunk({"index": c.index, **payload, "logprobs": logprobs, "finish_reason": None})
                end = {"delta": {}} if chat else {"text": ""}
                # the last finish chunk carries the request's receipt (receipts.py), as genlab's extension
                last = {"record": _record(gen, choices, every)} if c is choices[-1] else {}
                yield chunk({"index": c.index, **end, "logprobs": None, "finish_reason": finish}, timings=_timings(stats), **last)
                prompt_tokens += stats.prompt_tokens if c.index % body.n == 0 else 0
                completion_tokens += stats.completion_tokens
        if include_usage:
            yield chunk(None, usage=usage(prompt_tokens, completion_tokens, every))
    except Exception as e:
        yield error_event(e)
    yield DONE


async def _complete_all(ticket, gen, choices: list[Choice]) -> list[Generation]:
    """TextGenerator.complete for each choice, fed piece by piece from the decoding thread, so that
    a client who leaves stops the decoding within a step (Ticket.run cancels this)."""
    done = []
    for c in choices:
        stats, text, tokens, finish = DecodeStats(), [], [], "length"
        async for piece in _pieces(ticket, gen, c, stats):
            text.append(piece.text)
            tokens.extend(piece.tokens)
            finish = piece.finish_reason or finish
        done.append(Generation("".join(text), finish, stats, tokens))
    return done


def _pieces(ticket, gen, c: Choice, stats: DecodeStats):
    """One choice's TextPieces from its own thread. A decoding step is a forward pass: a speculative
    pass that keeps k guesses makes k + 1 tokens, so passes = tokens - kept guesses."""
    return in_thread(gen.stream(**c.prompt, params=c.params, stats=stats, steps=c.steps), ticket,
                     steps=lambda: stats.completion_tokens - stats.accepted_tokens)


def _logprobs(gen, body, choice: Choice, tokens, chat: bool, offset: int) -> dict | None:
    """The choice's logprobs in the route's format, or None when the request did not ask.
    `offset`: characters of the answer before these tokens (the legacy text_offset also counts the prompt)."""
    if not body.wants_logprobs():
        return None
    if chat:
        return chat_logprobs(gen.tokenizer, tokens)
    return completion_logprobs(gen.tokenizer, tokens, len(choice.prompt["prompt"]) + offset)


def _timings(stats: DecodeStats) -> dict:
    """genlab's extension, as llama.cpp's server reports: the cost of one choice."""
    return {"prompt_tokens": stats.prompt_tokens, "ttft_s": round(stats.ttft_s, 4), "total_s": round(stats.total_s, 4),
            "decode_tokens_per_s": round(stats.decode_tokens_per_s, 2), "seed": stats.seed,
            "draft_tokens": stats.draft_tokens, "accepted_tokens": stats.accepted_tokens}
