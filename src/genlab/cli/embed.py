"""genlab embed: sentence embeddings on stdout, as a summary with cosine similarities or as JSON vectors."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from genlab.cli import app, flag
from genlab.errors import GenlabError


@app.command()
def embed(
    texts: Annotated[list[str], typer.Argument(help="The texts to embed; give several to compare them.")],
    model: Annotated[str, typer.Option("--model", "-m", help="all-minilm-l6-v2 (a sentence encoder), or a text model "
                                                             "(smollm2-135m-instruct, a .gguf file, a Hugging Face "
                                                             "folder): its mean-pooled last hidden states.")] = "all-minilm-l6-v2",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with every vector.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
):
    """Embed texts as unit-length vectors: their size, norms and cosine similarities, or --json for the vectors.

    Example: genlab embed "a cat on a mat" "a kitten on a rug" "stock prices fell"
    """
    from genlab.text.embed import Embedder

    try:
        embedder = Embedder(model, device=device)
        t0 = time.perf_counter()
        out = embedder.embed(texts)
    except GenlabError as e:  # the library calls the texts `input`; here they are the TEXT arguments
        raise GenlabError(e.renamed(lambda name: "TEXT" if name == "input" else flag(name))) from None
    seconds = time.perf_counter() - t0
    if as_json:
        data = [{"index": i, "text": t, "tokens": n, "embedding": v}
                for i, (t, n, v) in enumerate(zip(texts, out.tokens, out.vectors.tolist()))]
        print(json.dumps({"model": out.model, "dimensions": embedder.dimensions, "data": data}))
        return
    print(f"{out.model}: {len(texts)} text(s) -> {embedder.dimensions}-dimensional vectors in {seconds:.2f} s")
    norms = out.vectors.norm(dim=1).tolist()
    for i, (t, n, norm) in enumerate(zip(texts, out.tokens, norms)):
        print(f"  [{i}] {n:4d} tokens, norm {norm:.4f}  {t[:70]!r}")
    if len(texts) > 1:
        print("cosine similarity:")
        print("       " + "".join(f"{f'[{j}]':>8}" for j in range(len(texts))))
        for i, row in enumerate(out.similarity().tolist()):
            print(f"  {f'[{i}]':>5}" + "".join(f"{s:8.4f}" for s in row))
