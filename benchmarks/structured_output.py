"""Structured output: how many outputs are valid, and what the grammar mask costs per token.

    python benchmarks/structured_output.py [--repeats 3] [--json docs/structured.json]

On the bundled SmolLM2 (default engine), for every held-out spec of tests/data/structured_specs.json
(JSON Schemas, regexes, choice lists written before genlab was run on them):
  * validity: generate at the default settings (temperature 0.7, 256 tokens, speculative auto,
    seed = spec index) and check the text with a JSON Schema validator (jsonschema) or the regex;
  * overhead: decode the constrained answer with speculative decoding off, then the same number of
    tokens with no constraint (ignore_eos), alternating, best of --repeats; the ratio of their
    per-token decode times (after the first token) is the mask's cost. Time spent inside the mask
    (computing it, applying it, recording the token) is also measured directly.
Figures: docs/structured.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENLAB_QUIET", "1")
SPECS = Path(__file__).resolve().parent.parent / "tests" / "data" / "structured_specs.json"


def valid(spec: dict, text: str) -> bool:
    import jsonschema

    try:
        if "json_schema" in spec:
            jsonschema.validate(json.loads(text), spec["json_schema"], format_checker=jsonschema.FormatChecker())
            return True
        if "regex" in spec:
            return re.fullmatch(spec["regex"], text) is not None
        return text in spec["choice"]
    except (ValueError, jsonschema.ValidationError):
        return False


class MaskTimer:
    """Time spent in Constraint.allowed and .consume (wrapped, so nothing else is counted)."""

    def __init__(self):
        from genlab.autoregressive import structured

        self.seconds, self.calls = 0.0, 0
        for name in ("allowed", "consume"):
            original = getattr(structured.Constraint, name)
            setattr(structured.Constraint, name, self.timed(original, name == "allowed"))

    def timed(self, fn, count: bool):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            self.calls += count
            return out

        return wrapper


def decode_seconds(gen, prompt: str, **kw) -> tuple[float, int, str]:
    """Seconds after the first token, tokens after the first, and the text."""
    out = gen.complete(prompt, **kw)
    return out.stats.total_s - out.stats.ttft_s, out.stats.completion_tokens - 1, out.text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    from genlab.text.generator import TextGenerator

    specs = json.loads(SPECS.read_text())
    gen = TextGenerator()
    timer = MaskTimer()
    rows = []
    for i, spec in enumerate(specs):
        fields = {k: v for k, v in spec.items() if k != "prompt"}
        out = gen.complete(spec["prompt"], seed=i, **fields)  # validity, at the defaults
        ok = out.finish_reason == "stop" and valid(spec, out.text)
        row = {"kind": next(iter(fields)), "prompt": spec["prompt"], "text": out.text, "valid": ok,
               "tokens": out.stats.completion_tokens}
        if out.stats.completion_tokens >= 8:  # enough tokens for a decode rate
            best_c = best_u = float("inf")
            for _ in range(args.repeats):
                mask_before = timer.seconds
                s, n, _ = decode_seconds(gen, spec["prompt"], seed=i, speculative="off", **fields)
                best_c = min(best_c, s / n)
                row["mask_ms_per_token"] = (timer.seconds - mask_before) / (n + 1) * 1e3
                s, n_u, _ = decode_seconds(gen, spec["prompt"], seed=i, speculative="off", ignore_eos=True,
                                           max_new_tokens=n + 1)
                best_u = min(best_u, s / n_u)
            row.update(constrained_ms=best_c * 1e3, free_ms=best_u * 1e3, overhead=best_c / best_u - 1)
        rows.append(row)
        print(f"{i:3d} {row['kind']:11} valid={ok!s:5} {row['tokens']:4d} tokens "
              + (f"{row['constrained_ms']:6.2f} vs {row['free_ms']:6.2f} ms/token ({row['overhead']:+.1%}), "
                 f"mask {row['mask_ms_per_token']:.3f} ms" if "overhead" in row else "") + f"  {out.text[:60]!r}")
    timed = [r for r in rows if "overhead" in r]
    weights = [r["tokens"] for r in timed]
    summary = {
        "specs": len(rows), "valid": sum(r["valid"] for r in rows),
        "by_kind": {k: [sum(r["valid"] for r in rows if r["kind"] == k), sum(r["kind"] == k for r in rows)]
                    for k in sorted({r["kind"] for r in rows})},
        "timed_specs": len(timed),
        "overhead_token_weighted": sum(r["overhead"] * w for r, w in zip(timed, weights)) / sum(weights),
        "constrained_ms_per_token": sum(r["constrained_ms"] * w for r, w in zip(timed, weights)) / sum(weights),
        "free_ms_per_token": sum(r["free_ms"] * w for r, w in zip(timed, weights)) / sum(weights),
        "mask_ms_per_token": sum(r["mask_ms_per_token"] * w for r, w in zip(timed, weights)) / sum(weights),
    }
    print(f"\nvalid: {summary['valid']} of {summary['specs']} {summary['by_kind']}")
    print(f"decode: {summary['constrained_ms_per_token']:.2f} ms/token constrained vs {summary['free_ms_per_token']:.2f} free "
          f"({summary['overhead_token_weighted']:+.1%}); inside the mask {summary['mask_ms_per_token']:.3f} ms/token")
    if args.json:
        from grammar_engines import _cpu

        Path(args.json).write_text(json.dumps({"cpu": _cpu(), "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
