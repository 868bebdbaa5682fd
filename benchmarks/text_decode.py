"""Text decoding speed: genlab vs transformers (and llama.cpp when installed), one run, same prompt.

    python benchmarks/text_decode.py [--tokens 128] [--repeats 3]

For each engine it measures load time, time to first token (prefill + one token) and the
steady decode rate, on the bundled SmolLM2-135M-Instruct with greedy decoding, and prints
the ratios against transformers. The figures in docs/benchmarks.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENLAB_QUIET", "1")

import torch  # noqa: E402

PROMPT = "Explain transformer attention in simple terms"


def best_of(fn, repeats):
    """Run fn() `repeats` times; return the run with the highest decode rate (least disturbed)."""
    runs = [fn() for _ in range(repeats)]
    return max(runs, key=lambda r: r["decode_tok_s"])


def bench_genlab(tokens, repeats, dtype):
    from genlab import TextGenerator
    from genlab.autoregressive.decode import DecodeStats

    t = time.perf_counter()
    gen = TextGenerator(dtype=dtype)
    load = time.perf_counter() - t

    def once():
        stats = DecodeStats()
        # greedy, past the end-of-turn token, so every engine decodes exactly `tokens` tokens
        for _ in gen.stream(PROMPT, temperature=0, max_new_tokens=tokens, ignore_eos=True, stats=stats):
            pass
        return {"ttft_s": stats.ttft_s, "decode_tok_s": stats.decode_tokens_per_s, "n": stats.completion_tokens}

    r = best_of(once, repeats)
    return {"engine": f"genlab ({str(gen.lm.dtype).removeprefix('torch.')})", "load_s": load, **r}


def bench_transformers(tokens, repeats, folder, gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    load_gguf = time.perf_counter() - t
    t = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(folder).eval()
    load_folder = time.perf_counter() - t
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids

    def once():
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, do_sample=False)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            total = time.perf_counter() - t0
        n = out.shape[1] - ids.shape[1]
        return {"ttft_s": ttft, "decode_tok_s": (n - 1) / (total - ttft), "n": n}

    r = best_of(once, repeats)
    return {"engine": "transformers generate (float32)", "load_s": load_gguf, "load_note": f"{load_folder:.2f} s from safetensors", **r}


def bench_llama_cpp(tokens, repeats, gguf):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    t = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=1024, n_threads=os.cpu_count(), verbose=False)
    load = time.perf_counter() - t
    messages = [{"role": "user", "content": PROMPT}]

    def once():
        llm.reset()
        t0, ttft, n = time.perf_counter(), None, 0
        for chunk in llm.create_chat_completion(messages, max_tokens=tokens, temperature=0, stream=True):
            if not chunk["choices"][0]["delta"].get("content"):
                continue  # the opening chunk names the role and carries no token
            n += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return {"ttft_s": ttft, "decode_tok_s": (n - 1) / (total - ttft) if n > 1 else 0.0, "n": n}

    r = best_of(once, repeats)
    return {"engine": "llama.cpp (Q4_1, llama-cpp-python)", "load_s": load, **r}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from genlab.text.sources import DEFAULT_TEXT_MODEL, bundled_file, resolve

    folder, gguf = resolve(DEFAULT_TEXT_MODEL), bundled_file(DEFAULT_TEXT_MODEL)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.tokens} greedy tokens, best of {args.repeats}\n")
    rows = [bench_transformers(args.tokens, args.repeats, folder, gguf),
            bench_genlab(args.tokens, args.repeats, "auto"),
            bench_genlab(args.tokens, args.repeats, "float32")]
    cpp = bench_llama_cpp(args.tokens, args.repeats, gguf)
    if cpp:
        rows.append(cpp)
    else:
        print("(llama.cpp not installed: pip install -e '.[bench]' to include it)\n")
    base = rows[0]
    print("| engine | load (s) | time to first token (ms) | decode (tok/s) | decode vs transformers |")
    print("|---|---|---|---|---|")
    for r in rows:
        load = f"{r['load_s']:.2f}" + (f" ({r['load_note']})" if "load_note" in r else "")
        print(f"| {r['engine']} | {load} | {r['ttft_s'] * 1000:.0f} | {r['decode_tok_s']:.1f} | "
              f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x |")
    print(f"\ngenlab warm load {rows[1]['load_s']:.2f} s (bar: <= 2 s)")


if __name__ == "__main__":
    main()
