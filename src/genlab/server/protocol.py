"""The OpenAI wire format: request bodies, response and stream-chunk shapes, error bodies.

Requests are pydantic models that reject unknown fields, so a typo ("max_token") is a
clear 422 instead of a silently ignored option. Fields the OpenAI SDK may send but genlab
has no use for (`user`, zero penalties) are accepted; ones that would change the answer
in a way genlab cannot honour (`tools`, `echo`, a non-zero frequency penalty) are refused.
The extensions (top_k, min_p, repetition_penalty, seed for images, steps, sampler, ...)
follow llama.cpp's server and AUTOMATIC1111's names where they exist.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genlab.errors import GenlabError, check
from genlab.autoregressive.decode import TokenStep


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer options (include_obfuscation) change nothing here
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = "response"
    description: Optional[str] = None
    json_schema: dict = Field(default_factory=dict, alias="schema")  # `schema` would shadow pydantic's method
    strict: Optional[bool] = None  # genlab's output always follows the schema (structured.py)


class ResponseFormat(Strict):
    """OpenAI's response_format: free text, any JSON object, or JSON valid under a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    def fields(self) -> dict:
        """As SamplingParams fields."""
        if self.type == "json_object":
            return {"json_schema": True}
        if self.type == "json_schema":
            check(self.json_schema is not None, "response_format of type json_schema needs a json_schema: "
                  "{\"name\": ..., \"schema\": {...}}", "response_format")
            return {"json_schema": self.json_schema.json_schema or True}
        return {}


class TextParams(Strict):
    """What /v1/completions and /v1/chat/completions share. Omitted sampling fields take
    genlab's defaults (SamplingParams), so a request and `genlab text` with the same seed agree."""

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: Optional[int] = 1
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    # extensions, as in llama.cpp's server
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    speculative: Optional[str] = None  # off, lookup or auto: genlab's speculative decoding (same text, faster)
    ignore_eos: Optional[bool] = None  # keep writing past the end-of-turn token: replies of a fixed length, for benchmarks
    logit_bias: Optional[dict[str, float]] = None  # OpenAI's: token id (as a string) -> bias added to its logit, -100 to 100
    guidance_scale: Optional[float] = None  # extensions: classifier-free guidance for text (1 = off) ...
    negative_prompt: Optional[str] = None  # ... and the text it steers away from
    response_format: Optional[ResponseFormat] = None  # OpenAI's: json_object or json_schema (structured.py)
    regex: Optional[str] = None  # extensions: the answer matches this regex, ...
    choice: Optional[list[str]] = None  # ... is one of these strings, ...
    grammar: Optional[str] = None  # ... or follows this Lark or GBNF grammar (llama.cpp's server has `grammar` too)
    # accepted for compatibility; only their neutral values
    frequency_penalty: Optional[float] = 0.0
    presence_penalty: Optional[float] = 0.0
    user: Optional[str] = None

    @field_validator("n", mode="before")
    @classmethod
    def _one_by_default(cls, v):
        return 1 if v is None else v  # OpenAI allows an explicit null

    @field_validator("stream", mode="before")
    @classmethod
    def _off_by_default(cls, v):
        return False if v is None else v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _neutral(cls, v: float | None) -> float | None:
        if v:
            raise ValueError("only 0 is supported; use repetition_penalty (e.g. 1.1) to discourage repeats")
        return v

    def sampling(self, max_new_tokens: int, top_logprobs: int, choice: int) -> dict:
        """SamplingParams keyword arguments; choice i of n uses seed + i, so n=1 matches the CLI."""
        fields = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p,
                  "repetition_penalty": self.repetition_penalty, "speculative": self.speculative,
                  "ignore_eos": self.ignore_eos, "guidance_scale": self.guidance_scale,
                  "negative_prompt": self.negative_prompt, "regex": self.regex, "choice": self.choice, "grammar": self.grammar}
        kwargs = {k: v for k, v in fields.items() if v is not None}
        if self.response_format is not None:
            kwargs.update(self.response_format.fields())
        if self.logit_bias:
            bad = [k for k in self.logit_bias if not k.strip().isdigit()]
            check(not bad, f"logit_bias keys must be token ids (integers as strings), got {bad[0] if bad else ''!r}", "logit_bias")
            kwargs["logit_bias"] = {int(k): v for k, v in self.logit_bias.items()}
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        check(len(stop) <= 4, f"stop takes at most 4 strings, got {len(stop)}")
        return dict(kwargs, max_new_tokens=max_new_tokens, stop=stop, top_logprobs=top_logprobs,
                    seed=None if self.seed is None else self.seed + choice)


class Message(Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[dict]]
    name: Optional[str] = None

    def plain(self) -> dict:
        """{'role', 'content'} with text content parts joined; other part types are refused."""
        content = self.content
        if isinstance(content, list):
            kinds = [p.get("type") for p in content]
            check(all(k == "text" for k in kinds), "message content parts must be of type 'text'; got "
                  + ", ".join(sorted({json.dumps(k) for k in kinds if k != "text"})))
            content = "".join(str(p.get("text", "")) for p in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(TextParams):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None  # the newer name of max_tokens
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = None

    def top_k_logprobs(self) -> int:
        """How many candidates to report per token (validated)."""
        check(self.top_logprobs is None or self.logprobs, "top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else 0

    def wants_logprobs(self) -> bool:
        return bool(self.logprobs)

    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(TextParams):
    prompt: Union[str, list[str]]
    logprobs: Optional[int] = None  # the legacy form: how many top candidates, 0-5
    steps: Optional[int] = None  # extension, masked-diffusion LMs only: unmasking steps (default one per token)
    echo: bool = False
    suffix: Optional[str] = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported; the prompt is not repeated in the answer")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        return v

    def top_k_logprobs(self) -> int:
        """How many candidates to report per token (validated)."""
        top = self.logprobs or 0
        check(0 <= top <= 5, f"logprobs must be between 0 and 5 for completions, got {top}")
        return top

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None  # logprobs: 0 still reports each chosen token's logprob

    def token_limit(self) -> Optional[int]:
        return self.max_tokens

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        check(len(prompts) >= 1, "prompt is an empty list; give a string or a list of strings")
        return prompts


class ImagesRequest(Strict):
    prompt: str
    model: Optional[str] = None
    n: int = 1
    size: Optional[str] = None
    response_format: Optional[str] = None
    user: Optional[str] = None
    # extensions, with AUTOMATIC1111's meaning
    seed: Optional[int] = None
    steps: Optional[int] = None  # None: the model's default, as in `genlab image`
    sampler: Optional[str] = None
    guidance_scale: Optional[float] = None
    negative_prompt: Optional[str] = None
    stream: bool = False  # SSE: a partial image after each step, as OpenAI's image streaming does
    partial_images: Optional[int] = None  # how many previews to stream (evenly spaced); default every step
    # spatial control (diffusion/control.py), for models with a control branch (shapes)
    layout: Union[dict, list, None] = None  # {"objects": [{"color", "shape", "box": [x0, y0, x1, y1]}, ...]}; prompt may be ""
    control: Optional[str] = None  # a sketch, edge map or mask: a base64-encoded PNG (or a data: URL)
    control_scale: Optional[float] = None  # 0 = off, 1 = as trained (default), up to 2
    plan: bool = False  # the LLM plans the prompt's layout first (genlab image --plan); the answer carries the plan

    def control_png(self) -> bytes | None:
        """The control picture's bytes, checked to be base64."""
        if self.control is None:
            return None
        import binascii

        data = self.control.split(",", 1)[1] if self.control.startswith("data:") else self.control
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise GenlabError("control must be a base64-encoded PNG (or a data: URL holding one)", "control") from None

    @field_validator("response_format")
    @classmethod
    def _b64_only(cls, v):
        if v not in (None, "b64_json"):
            raise ValueError("only 'b64_json' is supported: genlab returns the PNG in the response and hosts no URLs")
        return v


# -- responses ------------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, stats: list | None = None) -> dict:
    """OpenAI's usage, and genlab's extension: of the tokens speculative decoding guessed, how many were kept."""
    out = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens}
    if stats is not None:
        out["speculative"] = {"draft_tokens": sum(s.draft_tokens for s in stats),
                              "accepted_tokens": sum(s.accepted_tokens for s in stats)}
    return out


def chat_logprobs(tokenizer, steps: list[TokenStep]) -> dict:
    """The chat form: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    import math

    def entry(token_id: int, logprob: float) -> dict:
        text = tokenizer.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    def logprob(step: TokenStep, token_id: int, p: float) -> float:  # the chosen token's exact value, not via exp/log
        return step.logprob if token_id == step.token_id else math.log(max(p, 1e-45))

    return {"content": [dict(entry(s.token_id, s.logprob),
                             top_logprobs=[entry(i, logprob(s, i, p)) for i, p in s.top]) for s in steps]}


def completion_logprobs(tokenizer, steps: list[TokenStep], offset: int) -> dict:
    """The legacy completions form: parallel lists, top candidates as {token: logprob}."""
    import math

    tokens = [tokenizer.token_text(s.token_id) for s in steps]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": [s.logprob for s in steps],
            "top_logprobs": [{tokenizer.token_text(i): s.logprob if i == s.token_id else math.log(max(p, 1e-45))
                              for i, p in s.top} for s in steps],
            "text_offset": offsets}


# -- errors -----------------------------------------------------------------------------------------------

class APIError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        if status in (429, 503):  # "busy" and "not ready yet" are temporary: every one says when to come back
            headers = {"Retry-After": "1", **(headers or {})}
        self.status, self.message, self.type, self.param, self.code, self.headers = status, message, type, param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def from_genlab(cls, e: GenlabError) -> "APIError":
        """A 400 naming the request field the library's check was about (by its name in the request)."""
        return cls(400, e.renamed(request_field), param=request_field(e.fields[0].split()[0]) if e.fields else None)


REQUEST_FIELDS = {"guidance": "guidance_scale", "max_new_tokens": "max_tokens", "json_schema": "response_format",
                  "init_image": "image"}  # library field -> request field


def request_field(name: str) -> str:
    return REQUEST_FIELDS.get(name, name)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line from pydantic's error list, naming the field: ("max_tokens: Input should be ...", "max_tokens")."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})", None
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    if param is None and first.get("type") == "missing":
        return "the request body is empty; send a JSON object (see the OpenAI API reference)", None
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return "the request body must be a JSON object, not a list, string or number", None
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field; see the OpenAI API reference and genlab's extensions in docs/server.md"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return (f"{param}: {message}{more}" if param else message + more), param
