"""Text decoding speed: genlab's engines against llama.cpp and transformers, in one run, same GGUF.

    python benchmarks/text_decode.py [--tokens 128] [--repeats 3] [--no-transformers]

For each engine: load time, time to first token on a 40-token and a 400-token prompt (prefill
plus the first token), and the steady decode rate over `--tokens` greedy tokens of a chat
reply, decoded plainly (`speculative="off"`; one row adds genlab's default speculative
decoding, benchmarks/speculative.py measures it in full). The engines take turns within each repeat (so a busy moment hurts all of them alike),
and each figure is the best of `--repeats`. Ratios are against llama.cpp when it is installed
(`pip install -e '.[bench]'`), else against transformers. docs/benchmarks.md holds the figures.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENLAB_QUIET", "1")

import torch  # noqa: E402

PROMPT = "Explain transformer attention in simple terms"


def pydoc_ids(tokenizer_encode, n: int) -> list[int]:
    """The first n tokens of Python's own documentation text: a prompt of an exact length."""
    import pydoc_data.topics

    text = "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)[:40])
    return tokenizer_encode(text)[:n]


class Genlab:
    def __init__(self, engine: str, dtype: str = "auto", speculative: str = "off"):
        from genlab import TextGenerator

        t = time.perf_counter()
        self.gen = TextGenerator(engine=engine, dtype=dtype)
        self.load_s = time.perf_counter() - t
        kind = str(self.gen.lm.dtype).removeprefix("torch.")
        self.speculative = speculative
        self.name = f"genlab {engine} engine ({kind}{', speculative ' + speculative if speculative != 'off' else ''})"

    def encode(self, text):
        return self.gen.tokenizer.encode(text)

    def first_token_s(self, ids: list[int]) -> float:
        lm = self.gen.lm
        t = time.perf_counter()
        int(lm.forward(ids, lm.new_cache(len(ids) + 1)).argmax())
        return time.perf_counter() - t

    def decode(self, tokens: int) -> tuple[float, int]:
        from genlab.autoregressive.decode import DecodeStats

        stats = DecodeStats()
        # greedy, past the end-of-turn token, so every engine decodes exactly `tokens` tokens
        for _ in self.gen.stream(PROMPT, temperature=0, max_new_tokens=tokens, ignore_eos=True, stats=stats,
                                 speculative=self.speculative):
            pass
        return stats.decode_tokens_per_s, stats.completion_tokens


class LlamaCpp:
    def __init__(self, gguf):
        from llama_cpp import Llama

        t = time.perf_counter()
        self.llm = Llama(model_path=str(gguf), n_ctx=1024, n_batch=512, n_threads=len(os.sched_getaffinity(0)), verbose=False)
        self.load_s = time.perf_counter() - t
        import llama_cpp

        self.name = f"llama.cpp (Q4_1, llama-cpp-python {llama_cpp.__version__})"

    def encode(self, text):
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def first_token_s(self, ids: list[int]) -> float:
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(ids)
        int(self.llm.scores[len(ids) - 1].argmax())
        return time.perf_counter() - t

    def decode(self, tokens: int) -> tuple[float, int]:
        self.llm.reset()
        messages = [{"role": "user", "content": PROMPT}]
        first, n = None, 0
        for chunk in self.llm.create_chat_completion(messages, max_tokens=tokens, temperature=0, stream=True):
            if not chunk["choices"][0]["delta"].get("content"):
                continue  # the opening chunk names the role and carries no token
            n += 1
            if first is None:
                first = time.perf_counter()
        return ((n - 1) / (time.perf_counter() - first) if n > 1 else 0.0), n


class Transformers:
    def __init__(self, folder):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.load_s = time.perf_counter() - t
        self.name = "transformers generate (float32, from safetensors)"
        text = self.tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
        self.chat_ids = self.tok(text, return_tensors="pt", add_special_tokens=False).input_ids

    def encode(self, text):
        return self.tok(text, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def first_token_s(self, ids: list[int]) -> float:
        t = time.perf_counter()
        self.model.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False)
        return time.perf_counter() - t

    @torch.inference_mode()
    def decode(self, tokens: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        self.model.generate(self.chat_ids, max_new_tokens=1, do_sample=False)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = self.model.generate(self.chat_ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        n = out.shape[1] - self.chat_ids.shape[1]
        return (n - 1) / (time.perf_counter() - t0 - first), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-transformers", action="store_true", help="leave transformers out (its runs are the slowest)")
    args = ap.parse_args()

    from genlab.text.engine import cpu_model
    from genlab.text.sources import DEFAULT_TEXT_MODEL, bundled_file, resolve

    folder, gguf = resolve(DEFAULT_TEXT_MODEL), bundled_file(DEFAULT_TEXT_MODEL)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"# {cpu_model()} ({'AVX-512' if 'avx512f' in flags else 'AVX2 only' if 'avx2' in flags else 'no AVX2'}), "
          f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}; {args.tokens} greedy tokens, "
          f"engines taking turns, best of {args.repeats}\n")
    engines = []
    try:
        engines.append(LlamaCpp(gguf))
    except ImportError:
        print("(llama.cpp not installed: pip install -e '.[bench]' to include it)\n")
    # plain decoding for each engine (the bar), and the default onnx engine with speculative decoding on
    engines += [Genlab("onnx"), Genlab("onnx", speculative="auto"), Genlab("torch"), Genlab("torch", "float32")]
    if not args.no_transformers:
        engines.append(Transformers(folder))
    prompts = {n: pydoc_ids(engines[0].encode, n) for n in (40, 400)}
    best = {e.name: {"decode": 0.0, 40: float("inf"), 400: float("inf")} for e in engines}
    for _ in range(args.repeats):
        for e in engines:
            b = best[e.name]
            for n, ids in prompts.items():
                b[n] = min(b[n], e.first_token_s(ids))
            rate, count = e.decode(args.tokens)
            assert count == args.tokens, (e.name, count)
            b["decode"] = max(b["decode"], rate)
    base = best[engines[0].name]
    print(f"| engine | load (s) | first token, 40-token prompt (ms) | first token, 400-token prompt (ms) | "
          f"decode (tok/s) | decode vs {engines[0].name.split(' (')[0]} |")
    print("|---|---|---|---|---|---|")
    for e in engines:
        b = best[e.name]
        print(f"| {e.name} | {e.load_s:.2f} | {b[40] * 1000:.0f} ({b[40] / base[40]:.2f}x) | "
              f"{b[400] * 1000:.0f} ({b[400] / base[400]:.2f}x) | {b['decode']:.1f} | {b['decode'] / base['decode']:.2f}x |")


if __name__ == "__main__":
    main()
