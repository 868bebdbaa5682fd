"""Structured output: text that must match a JSON Schema, a regex, a list of choices or a grammar.

The model still chooses every token; at each step a grammar matcher says which tokens could
continue a valid output, and the rest get logit -inf before the sampling filters (sampling.py):

    spec (schema / regex / choice / grammar) --compile--> matcher, on the model's tokenizer
    each step:   logits[not allowed] = -inf   ->  filters  ->  draw  ->  matcher.consume(token)
    at the end:  only the end-of-turn token is allowed once the output is complete

So the output is valid by construction, whatever the sampling settings, and a seed still
reproduces it. Speculative decoding checks the draft's guesses against the matcher too, and
stops guessing at the first one the grammar refuses (speculative.py).

The matcher comes from llguidance, chosen by measurement among the grammar engines built for
this (benchmarks/grammar_engines.py, docs/structured.md): per-token masks of xgrammar, llguidance
and outlines-core all cost well under 1% of a decoding step here, llguidance compiles a schema
fastest (under 1 ms; outlines-core 90 ms), takes JSON Schema, regexes and Lark grammars, and
installs with no dependencies (xgrammar needs triton and transformers).

    from genlab import TextGenerator
    TextGenerator().generate("A person, as JSON", json_schema={"type": "object", ...})
    TextGenerator().generate("Is the sky blue?", choice=["yes", "no"])
"""

from __future__ import annotations

import json
import re

import torch

from genlab.errors import GenlabError, check

FORMATS = ("json_schema", "regex", "choice", "grammar")  # SamplingParams fields; at most one per request

# JSON is written the way json.dumps writes it: ", " and ": ", no other whitespace (a small model
# allowed free whitespace can spend its whole budget on newlines)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_of(field: str, spec) -> str:
    """The llguidance grammar for one structured-output field, checked: a GenlabError names what is
    invalid or unsupported. spec: a JSON Schema (dict, or True for any JSON object), a regex, a list
    of choices, or a grammar in Lark or GBNF syntax."""
    import llguidance

    M = llguidance.LLMatcher
    if field == "json_schema":
        check(isinstance(spec, dict) or spec is True, "json_schema must be a JSON Schema object", "json_schema")
        schema = {"type": "object"} if spec is True else closed(spec)  # True: OpenAI's json_object, any JSON object
        try:
            grammar = M.grammar_from_json_schema(json.dumps(schema), overrides=JSON_STYLE)
        except (ValueError, TypeError) as e:
            raise GenlabError(f"json_schema is not a valid JSON Schema: {_first_line(e)}", "json_schema") from None
    elif field == "regex":
        check(isinstance(spec, str) and spec != "", "regex must be a non-empty regular expression", "regex")
        grammar = M.grammar_from_regex(spec)
    elif field == "choice":
        check(isinstance(spec, list) and spec and all(isinstance(c, str) and c for c in spec),
              "choice must be a non-empty list of non-empty strings", "choice")
        grammar = M.grammar_from_regex("|".join(re.escape(c) for c in spec))
    elif field == "grammar":
        check(isinstance(spec, str) and spec.strip() != "", "grammar must be a non-empty grammar text (Lark or GBNF syntax)",
              "grammar")
        if "::=" in spec:  # GBNF (llama.cpp's grammar format)
            from llguidance.gbnf_to_lark import gbnf_to_lark

            try:
                spec = gbnf_to_lark(spec)
            except Exception as e:  # its parser raises bare exceptions on malformed input
                raise GenlabError(f"grammar is not valid GBNF: {_first_line(e)}", "grammar") from None
        grammar = M.grammar_from_lark(spec)
    else:
        raise GenlabError(f"unknown structured-output field {field!r}; use one of {', '.join(FORMATS)}")
    problem = M.validate_grammar(grammar)
    if problem:
        raise GenlabError(f"{field} is invalid or unsupported: {_explain(problem)}", field)
    return grammar


# an email address within RFC 5321's lengths (local part <= 64, labels <= 63): JSON Schema's "email" format
# bounds nothing, and a model that misses its "@" can write a local part until the tokens run out
EMAIL = r"^[A-Za-z0-9._%+-]{1,64}@([A-Za-z0-9-]{1,63}\.){1,4}[A-Za-z]{2,24}$"


def closed(schema):
    """The schema as genlab writes it: `additionalProperties: false` wherever an object lists its properties
    and says nothing about others, as OpenAI's strict mode and xgrammar's default read it (JSON Schema
    would allow any extra key, and a small model, allowed them, invents keys until it runs out of
    tokens), and emails within RFC 5321's lengths. An output valid under the closed schema is valid
    under the original one."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if out.get("format") == "email" and "pattern" not in out:
        del out["format"]
        out["pattern"] = EMAIL
    if "properties" in out and "additionalProperties" not in out and out.get("type", "object") == "object":
        out["additionalProperties"] = False
    for key in ("items", "prefixItems", "anyOf", "oneOf", "allOf", "additionalProperties", "not"):
        if key in out:
            out[key] = closed(out[key])
    for key in ("properties", "$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {name: closed(s) for name, s in out[key].items()}
    return out


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _explain(problem: str) -> str:
    """llguidance's multi-line report as one line: the regex parser's `error: ...` line if it has one."""
    lines = [line.strip() for line in problem.strip().splitlines() if line.strip()]
    detail = next((line[len("error: "):] for line in lines if line.startswith("error: ")), None)
    head = re.sub(r"^at \d+\(\d+\): ", "", lines[0])
    if detail:
        return f"{head.split(' (in ')[0].rstrip(':')}: {detail}"
    return head.replace("Unimplemented keys", "keywords genlab's grammar engine (llguidance) does not implement")


class Constraint:
    """The grammar state of one generation: which tokens may come next, and what has been written."""

    def __init__(self, grammar: str, tokenizer, stop_token_ids: set[int]):
        import llguidance

        ll_tokenizer = _ll_tokenizer(tokenizer, stop_token_ids)
        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise GenlabError(f"the output format cannot be used with this model: {_explain(self.matcher.get_error())}")
        self.words = (ll_tokenizer.vocab_size + 31) // 32
        self.bits = torch.zeros(self.words, dtype=torch.int32)  # one bit per token, as llguidance writes it
        self.shifts = torch.arange(32, dtype=torch.int32)

    def allowed(self, size: int) -> torch.Tensor:
        """(size,) bool, for logits of `size` entries: the tokens that keep the output valid from here
        (only end-of-turn once it is complete). Rows past the tokenizer's vocabulary (padding) are never allowed."""
        self.matcher.unsafe_compute_mask_ptr(self.bits.data_ptr(), self.words * 4)
        mask = ((self.bits.unsqueeze(-1) >> self.shifts) & 1).bool().flatten()  # (words, 32) -> (words * 32,)
        if size > mask.numel():
            mask = torch.cat([mask, mask.new_zeros(size - mask.numel())])
        return mask[:size]

    def consume(self, token: int) -> None:
        """Record a written token (it was allowed: the mask chose it)."""
        if not self.matcher.is_stopped():
            self.matcher.consume_token(token)

    def valid_prefix(self, guesses: list[int]) -> int:
        """How many of a draft's guesses, from the start, the grammar allows (nothing is consumed)."""
        return self.matcher.validate_tokens(guesses) if guesses else 0


def _ll_tokenizer(tokenizer, stop_token_ids: set[int]):
    """llguidance's view of a genlab Tokenizer, made once per tokenizer (it indexes the vocabulary, ~0.3 s)."""
    import llguidance

    key = tuple(sorted(stop_token_ids))
    cached = getattr(tokenizer, "_llguidance", None)
    if cached is None or cached[0] != key:
        cached = (key, llguidance.LLTokenizer(tokenizer.to_json(), eos_token=list(key)))
        tokenizer._llguidance = cached
    return cached[1]


def constraint_for(params, tokenizer, stop_token_ids: set[int]) -> Constraint | None:
    """The Constraint that params' structured-output field asks for (a fresh one per generation), or None."""
    if params.structure is None:
        return None
    return Constraint(params.grammar_text, tokenizer, stop_token_ids)
