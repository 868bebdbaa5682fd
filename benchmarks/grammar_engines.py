"""Which grammar engine computes genlab's structured-output token mask: xgrammar, llguidance or outlines-core.

    python benchmarks/grammar_engines.py [--json docs/grammar_engines.json]

Each engine turns a JSON Schema or a regex into a matcher that says, at every step, which of the
model's 49152 tokens may come next. On the bundled SmolLM2's tokenizer, for the same specs, this
script measures what decoding pays for that:
  * setup: preparing the tokenizer once per model;
  * compile: turning one spec into a matcher (paid per request, unless cached);
  * mask: computing the allowed-token mask at one step, walking a valid answer token by token
    (paid at every generated token; decoding one token on genlab's CPU engine takes about 10 ms).
It also checks that each engine accepts the valid answer and rejects a broken one.
Engines that are not installed are skipped: `pip install xgrammar llguidance outlines-core`.
Figures: docs/structured.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}
SPECS = [  # (kind, spec, a valid answer)
    ("schema", PERSON, {"name": "Ada Lovelace", "age": 36}),
    ("schema", {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                                                  "count": {"type": "integer", "maximum": 9}},
                "required": ["colour", "count"], "additionalProperties": False}, {"colour": "green", "count": 3}),
    ("schema", {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 5}, [3, 1, 4, 1, 5]),
    ("schema", {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 40},
        "tags": {"type": "array", "items": {"type": "string"}},
        "author": {"type": "object", "properties": {"first": {"type": "string"}, "last": {"type": "string"}},
                   "required": ["first", "last"], "additionalProperties": False},
        "rating": {"type": "number"}, "published": {"type": "boolean"}},
        "required": ["title", "tags", "author", "rating", "published"], "additionalProperties": False},
     {"title": "On Computable Numbers", "tags": ["logic", "machines"], "author": {"first": "Alan", "last": "Turing"},
      "rating": 4.5, "published": True}),
    ("schema", {"type": "object", "properties": {"objects": {"type": "array", "maxItems": 4, "items": {
        "type": "object", "properties": {"shape": {"enum": ["circle", "square", "triangle"]},
                                         "box": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 31},
                                                 "minItems": 4, "maxItems": 4}},
        "required": ["shape", "box"], "additionalProperties": False}}}, "required": ["objects"], "additionalProperties": False},
     {"objects": [{"shape": "circle", "box": [2, 3, 14, 15]}, {"shape": "square", "box": [16, 16, 30, 30]}]}),
    ("regex", r"\d{3}-\d{3}-\d{4}", "555-867-5309"),
    ("regex", r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", "2026-12-06"),
    ("regex", r"(yes|no|maybe)", "maybe"),
    ("regex", r"[A-Z][a-z]+( [A-Z][a-z]+){0,3}\.", "Generative Models Draw."),
]


def answer_text(kind, answer) -> str:
    return json.dumps(answer) if kind == "schema" else answer  # json.dumps separators: ", " and ": "


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer_json: str, vocab: list[str], eos: int):
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo(vocab, xgr.VocabType.BYTE_LEVEL, stop_token_ids=[eos])  # SmolLM2: GPT-2 bytes
        self.compiler = xgr.GrammarCompiler(self.info, cache_enabled=False)
        self.bitmask = xgr.allocate_token_bitmask(1, len(vocab))

    def compile(self, kind, spec):
        g = (self.compiler.compile_json_schema(json.dumps(spec), any_whitespace=False) if kind == "schema"
             else self.compiler.compile_regex(spec))
        return self.xgr.GrammarMatcher(g)

    def mask(self, m):
        m.fill_next_token_bitmask(self.bitmask)
        return self.bitmask[0]

    def accept(self, m, token) -> bool:
        return m.accept_token(token)


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer_json: str, vocab: list[str], eos: int):
        import llguidance

        self.ll = llguidance
        self.tok = llguidance.LLTokenizer(tokenizer_json, eos_token=eos)
        self.bitmask = torch.zeros((len(vocab) + 31) // 32, dtype=torch.int32)

    def compile(self, kind, spec):
        M = self.ll.LLMatcher
        if kind == "schema":
            grammar = M.grammar_from_json_schema(spec, overrides={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        else:
            grammar = M.grammar_from_regex(spec)
        return M(self.tok, grammar)

    def mask(self, m):
        m.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.bitmask.numel() * 4)
        return self.bitmask

    def accept(self, m, token) -> bool:
        return m.consume_token(token) and not m.is_error()


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer_json: str, vocab: list[str], eos: int):
        import outlines_core

        self.oc = outlines_core
        byte_of = _byte_decoder()
        tokens: dict[bytes, list[int]] = {}
        for i, t in enumerate(vocab):
            if i != eos:
                tokens.setdefault(bytes(byte_of[c] for c in t) if all(c in byte_of for c in t) else t.encode(), []).append(i)
        self.vocab = outlines_core.Vocabulary(eos, tokens)
        self.bitmask = torch.zeros((len(vocab) + 31) // 32, dtype=torch.int32)

    def compile(self, kind, spec):
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(spec), whitespace_pattern="[ ]?") if kind == "schema" else spec
        return self.oc.Guide(self.oc.Index(regex, self.vocab))

    def mask(self, m):
        m.write_mask_into(self.bitmask.data_ptr(), self.bitmask.numel(), 4)
        return self.bitmask

    def accept(self, m, token) -> bool:
        try:
            m.advance(token, return_tokens=False)
            return True
        except ValueError:
            return False


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: each byte is written as one printable character in the vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def allowed(bitmask: torch.Tensor, token: int) -> bool:
    return bool((int(bitmask[token // 32]) >> (token % 32)) & 1)


def measure(engine_cls, tokenizer, tokenizer_json, vocab, eos) -> dict:
    t0 = time.perf_counter()
    engine = engine_cls(tokenizer_json, vocab, eos)
    row = {"engine": engine_cls.name, "setup_s": time.perf_counter() - t0, "specs": []}
    for kind, spec, answer in SPECS:
        text = answer_text(kind, answer)
        ids = tokenizer.encode(text)
        t0 = time.perf_counter()
        try:
            m = engine.compile(kind, spec)
        except Exception as e:  # an engine that cannot take this spec: recorded, not fatal
            row["specs"].append({"spec": text[:40], "error": str(e).splitlines()[0][:120]})
            continue
        compile_s = time.perf_counter() - t0
        times, ok = [], True
        for t in ids + [eos]:
            t0 = time.perf_counter()
            bm = engine.mask(m)
            times.append(time.perf_counter() - t0)
            ok = ok and allowed(bm, t)
            if t != eos:
                ok = ok and engine.accept(m, t)
        broken = engine.compile(kind, spec)  # the answer with its last character dropped must not end
        for t in tokenizer.encode(text[:-1]):
            engine.accept(broken, t)
        rejects = not allowed(engine.mask(broken), eos)
        row["specs"].append({"spec": text[:40], "tokens": len(ids), "compile_ms": compile_s * 1e3,
                             "mask_ms_mean": statistics.mean(times) * 1e3, "mask_ms_max": max(times) * 1e3,
                             "accepts_valid": ok, "rejects_unfinished": rejects})
    done = [s for s in row["specs"] if "error" not in s]
    row["compile_ms_mean"] = statistics.mean(s["compile_ms"] for s in done) if done else None
    row["mask_ms_mean"] = (sum(s["mask_ms_mean"] * (s["tokens"] + 1) for s in done) / sum(s["tokens"] + 1 for s in done)
                           if done else None)
    row["correct"] = all(s.get("accepts_valid") and s.get("rejects_unfinished") for s in row["specs"])
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    from genlab.text.sources import DEFAULT_TEXT_MODEL, resolve
    from genlab.text.tokenizer import Tokenizer

    folder = resolve(DEFAULT_TEXT_MODEL)
    tokenizer = Tokenizer.from_folder(folder)
    tokenizer_json = (folder / "tokenizer.json").read_text()
    by_id = {i: t for t, i in tokenizer.vocab().items()}
    vocab = [by_id[i] for i in range(tokenizer.vocab_size)]
    rows = []
    for cls in (XGrammar, LLGuidance, OutlinesCore):
        try:
            rows.append(measure(cls, tokenizer, tokenizer_json, vocab, tokenizer.eos_token_id))
        except ImportError:
            print(f"{cls.name}: not installed, skipped")
    print(f"{'engine':14} {'setup s':>8} {'compile ms':>11} {'mask ms/token':>14} {'correct':>8} {'specs refused':>14}")
    for r in rows:
        refused = sum("error" in s for s in r["specs"])
        print(f"{r['engine']:14} {r['setup_s']:8.2f} {r['compile_ms_mean'] or 0:11.1f} {r['mask_ms_mean'] or 0:14.3f} "
              f"{str(r['correct']):>8} {refused:>14}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": _cpu(), "rows": rows}, f, indent=1)


def _cpu() -> str:
    try:
        info = open("/proc/cpuinfo").read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        return f"{name}, {'AVX-512' if 'avx512f' in info else 'no AVX-512'}, {os.cpu_count()} cores"
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
