"""An autoregressive image model (ImageGPT, Chen et al. 2020): a GPT over quantised pixels.

An 8x8 digit is a sentence of 64 "words", its pixel levels in raster order, after one word
naming the class. The same transformer as genlab's text GPT (nn/transformer.py) learns
p(pixel_i | class, pixels before i), and images are sampled one pixel at a time with the
text decoder's filters (temperature, top-k, top-p, min-p) and the transformer's own KV
cache: 64 network evaluations per image, each on one new token.

    gpt = PixelGpt.load("runs/ar-image/model")     # or PixelGpt.bundled()
    images = gpt.generate(torch.tensor([7, 3]), seed=0)   # (2, 1, 8, 8) in [-1, 1]
    gpt.bits_per_dim(images, labels)                       # exact negative log-likelihood

Unlike a GAN or a diffusion model, the likelihood is exact: log p(x | c) is the sum of the
64 log-probabilities of the pixels actually there. scikit-learn's digits have 17 grey levels
(0..16), so with levels=17 the quantisation loses nothing and bits/dim is the true discrete
NLL; a model that knows nothing scores log2(17) = 4.09.

Tokens: 0..levels-1 are pixel levels, levels + c names class c.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import check
from ..nn.transformer import Transformer, load_hf, save_hf
from .sampling import SamplingParams, filtered_logits
from ..store import bundled_weights

CONFIG_FILE = "genlab.json"


def quantise(x: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1] -> (B, H*W) integer levels 0..levels-1, raster order."""
    return ((x.flatten(1) + 1) / 2 * (levels - 1)).round().long().clamp(0, levels - 1)


def dequantise(tokens: torch.Tensor, levels: int, side: int) -> torch.Tensor:
    """(B, H*W) levels -> (B, 1, H, W) in [-1, 1]."""
    return (tokens.float() / (levels - 1) * 2 - 1).view(-1, 1, side, side)


def build_model(levels: int, classes: int, side: int, width: int, layers: int, heads: int) -> Transformer:
    """The text GPT's decoder with a vocabulary of pixel levels and class words."""
    from .train_lm import build_model as build_gpt

    return build_gpt(levels + classes, side * side + 1, width, layers, heads)


class PixelGpt:
    def __init__(self, model: Transformer, levels: int, side: int, class_names: list[str], info: dict | None = None):
        self.model, self.levels, self.side, self.class_names = model, levels, side, class_names
        self.info = info or {}

    def sequences(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) images and (B,) labels -> (B, 1 + H*W) tokens: the class word, then the pixels."""
        return torch.cat([(labels + self.levels)[:, None], quantise(images, self.levels)], dim=1)

    @torch.no_grad()
    def bits_per_dim(self, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
        """Exact -log2 p(pixels | class), averaged over pixels: the cross-entropy of each pixel given those before it."""
        total = 0.0
        for i in range(0, len(images), batch):
            x = self.sequences(images[i:i + batch], labels[i:i + batch])
            logits = self.model(x[:, :-1])[..., :self.levels]  # position j predicts pixel j
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
        return total / (len(images) * self.side ** 2) / math.log(2)

    @torch.no_grad()
    def unfold(self, labels: torch.Tensor, params: SamplingParams | None = None, seed: int = 0) -> Iterator[torch.Tensor]:
        """Sample pixel by pixel, yielding the (B, H*W) tokens so far after each (-1 where not yet drawn).
        One network evaluation per pixel, with a KV cache so each sees only its new token."""
        params = params or SamplingParams(temperature=1.0)
        g = torch.Generator().manual_seed(seed)
        n = self.side * self.side
        tokens = torch.full((len(labels), n), -1)
        cache = self.model.new_cache(n, batch=len(labels))  # the class word and pixels 1..n-1 go in
        step_input = (labels + self.levels)[:, None]  # (B, 1): start from the class word
        was = self.model.training
        self.model.eval()
        for i in range(n):
            logits = self.model(step_input, cache)[:, -1, :self.levels]  # pixel levels only: a class word is never drawn
            logits = filtered_logits(logits, torch.empty(0, dtype=torch.long), params)
            if params.greedy:
                tokens[:, i] = logits.argmax(-1)
            else:
                tokens[:, i] = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
            step_input = tokens[:, i:i + 1]
            yield tokens.clone()
        self.model.train(was)

    def generate(self, labels: torch.Tensor, params: SamplingParams | None = None, seed: int = 0) -> torch.Tensor:
        """(B,) labels -> (B, 1, H, W) images in [-1, 1]."""
        for tokens in self.unfold(labels, params, seed):
            pass
        return dequantise(tokens, self.levels, self.side)

    def label_of(self, name: str) -> int:
        check(name in self.class_names, f"unknown class {name!r}; this model knows {', '.join(self.class_names)}")
        return self.class_names.index(name)

    # --- files: a Hugging Face model folder plus genlab.json ---------------------------

    def save(self, folder: Path, **info) -> None:
        save_hf(self.model, folder, bos_token_id=None, eos_token_id=None)  # no token starts or ends an image
        meta = {"kind": "ar-image", "levels": self.levels, "side": self.side, "class_names": self.class_names, **info}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "PixelGpt":
        folder = Path(folder).expanduser()
        path = folder / CONFIG_FILE
        meta = json.loads(path.read_text()) if path.is_file() else {}
        check(meta.get("kind") == "ar-image",
              f"{folder} is not an autoregressive image model folder (genlab train ar-image writes one in --out/model)")
        model = load_hf(folder).requires_grad_(False)
        info = {k: v for k, v in meta.items() if k not in ("kind", "levels", "side", "class_names")}
        return cls(model, meta["levels"], meta["side"], meta["class_names"], info)

    @classmethod
    def bundled(cls) -> "PixelGpt":
        return cls.load(bundled_weights("digits-ar", "genlab train ar-image --out runs/ar-image"))
