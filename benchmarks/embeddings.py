"""Sentence embeddings: genlab's Embedder against the reference implementations, same weights, same sentences.

    python benchmarks/embeddings.py [--sentences 128] [--repeats 5]

  - all-minilm-l6-v2: genlab (text/embed.py) vs sentence-transformers' SentenceTransformer.encode
    on the bundled folder, both in batches of 32;
  - smollm2-135m-instruct: genlab's transformer (float32, from the bundled GGUF) vs transformers'
    LlamaModel on the same weights, both mean-pooling the final hidden states over the same
    length-sorted batches of 32, right-padded.
The sentences are real English: the first N of 20 to 300 characters from Python's own docs
(pydoc_data, shipped with Python). For each model it prints sentences/s for both sides, the
ratio (genlab's speed over the reference's), the largest difference between their vectors, and
the mean cosine similarity between different sentences (how far apart unrelated texts land).
The two sides take turns, run by run, and each side's quickest run counts (the one least disturbed
by other work on a shared machine).
The figures in docs/server.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import re
import time

os.environ.setdefault("GENLAB_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def sentences(n: int) -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for text in topics.values():
        for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 20 <= len(s) <= 300 and s[0].isupper():
                out.append(s)
    return out[:n]


def timed(fn_a, fn_b, repeats):
    """The quickest run's seconds of each of two functions, run alternately; each is warmed up once first."""
    fns, times, outs = (fn_a, fn_b), ([], []), [fn_a(), fn_b()]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t)
    return min(times[0]), outs[0], min(times[1]), outs[1]


def transformers_pooled(folder, texts: list[str], batch_size: int = 32):
    """The reference for a text model: transformers' LlamaModel, its last_hidden_state (after the final norm)
    averaged over the attention mask and scaled to length 1, in length-sorted batches as genlab's."""
    from transformers import AutoModel, AutoTokenizer

    from genlab.text.embed import pool

    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "right"
    lengths = [len(tokenizer(t).input_ids) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])

    def embed():
        out = torch.empty(len(texts), model.config.hidden_size)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt")
            with torch.no_grad():
                out[rows] = pool(model(**batch).last_hidden_state, batch.attention_mask.bool())
        return out

    return embed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    from genlab import Embedder
    from genlab.text.embed import encoder_folder
    from genlab.text.sources import resolve

    texts = sentences(args.sentences)
    print(f"{len(texts)} sentences from Python's docs, {sum(map(len, texts)) / len(texts):.0f} characters on average; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, sentence-transformers "
          f"{sentence_transformers.__version__}, transformers {transformers.__version__}")
    print(f"{'model':<22} {'tokens/sent':>11} {'genlab sent/s':>13} {'reference':<22} {'ref sent/s':>10} {'ratio':>6} {'max |diff|':>10} {'mean cos':>8}")

    minilm = Embedder("all-minilm-l6-v2", device="cpu")
    st = SentenceTransformer(str(encoder_folder("all-minilm-l6-v2")), device="cpu")
    rows = [("all-minilm-l6-v2", minilm, "sentence-transformers",
             lambda: st.encode(texts, batch_size=32, convert_to_tensor=True))]
    smol = Embedder("smollm2-135m-instruct", device="cpu")
    rows.append(("smollm2-135m-instruct", smol, "transformers LlamaModel",
                 transformers_pooled(resolve("smollm2-135m-instruct"), texts)))
    for name, embedder, reference, theirs in rows:
        ours_s, ours, theirs_s, ref = timed(lambda: embedder.embed(texts), theirs, args.repeats)
        tokens = sum(ours.tokens) / len(texts)
        diff = (ours.vectors - ref.cpu()).abs().max().item()
        sim = ours.similarity()
        mean_cos = (sim.sum() - sim.diagonal().sum()).item() / (len(texts) * (len(texts) - 1))
        print(f"{name:<22} {tokens:11.1f} {len(texts) / ours_s:13.1f} {reference:<22} {len(texts) / theirs_s:10.1f} "
              f"{theirs_s / ours_s:6.2f} {diff:10.2e} {mean_cos:8.2f}")


if __name__ == "__main__":
    main()
