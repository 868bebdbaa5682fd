"""Training the autoregressive image model: `genlab train ar-image`.

Next-token prediction, exactly as for text (autoregressive/train_lm.py): each image becomes the sequence
[class word, pixel 1, ..., pixel 64] and the loss is the cross-entropy of each pixel given
everything before it. The class word is only ever an input: position 0 predicts pixel 1
and nothing predicts the class. Held-out bits/dim, the exact NLL, is reported at every checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import check
from ..data.digits import ImageData, load_images
from .pixel_gpt import PixelGpt, build_model
from ..store import atomic_dir
from .train_lm import next_token_loss
from ..training.loop import StepStats, TrainConfig
from ..training.options import ArImageOptions
from ..training.run import Run


def split_images(source: str, side: int) -> tuple[ImageData, ImageData]:
    """(train, held out): the digits' own split, or every tenth picture of a folder held out."""
    if source == "digits":
        return load_images("digits", side, "train"), load_images("digits", side, "test")
    data = load_images(source, side)
    held = torch.arange(len(data.x)) % 10 == 9
    check(held.any() and (~held).any(), f"--data {source!r} needs at least 10 images")
    return (ImageData(data.x[~held], data.labels[~held], data.class_names),
            ImageData(data.x[held], data.labels[held], data.class_names))


class ArImageRun(Run):
    """out/checkpoints/step-N, out/model (a Hugging Face folder plus genlab.json), out/samples."""

    kind, Options = "ar-image", ArImageOptions
    _bits: tuple = (None, 0.0)  # (step, held-out bits/dim there)

    def build(self) -> torch.nn.Module:
        o = self.options
        self.data, self.held_out = split_images(o.data, o.resolution)
        check(self.data.x.shape[1] == 1, f"ar-image models greyscale pictures; {o.data!r} has colour")
        torch.manual_seed(o.seed)  # the initial weights
        classes = max(1, len(self.data.class_names))
        model = build_model(o.levels, classes, o.resolution, o.width, o.layers, o.heads)
        self.gpt = PixelGpt(model, o.levels, o.resolution, self.data.class_names)
        return model

    def train_config(self) -> TrainConfig:
        o = self.options
        return TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=o.lr, warmup=max(1, o.steps // 20),
                           weight_decay=0.1, ema_decay=o.ema, seed=o.seed)

    def steps(self) -> Iterator[StepStats]:
        def loss(model, g: torch.Generator) -> torch.Tensor:
            idx = torch.randint(len(self.data.x), (self.trainer.batch,), generator=g)
            x = self.gpt.sequences(self.data.x[idx], self.data.labels[idx])  # (B, 1 + H*W)
            return next_token_loss(model, x)  # position j predicts token j + 1: the 64 pixels

        yield from self.trainer.run(loss)

    def ema(self) -> PixelGpt:
        import copy

        model = copy.deepcopy(self.gpt.model)
        model.load_state_dict(self.trainer.ema.shadow)
        return PixelGpt(model.eval(), self.gpt.levels, self.gpt.side, self.gpt.class_names)

    def held_out_bits(self) -> float:
        if self._bits[0] != self.trainer.step:
            self._bits = (self.trainer.step, self.ema().bits_per_dim(self.held_out.x, self.held_out.labels))
        return self._bits[1]

    def save_model(self) -> None:
        with atomic_dir(self.out / "model") as tmp:
            self.ema().save(tmp, step=self.trainer.step, train_seconds=round(self.trainer.seconds, 1),
                            options=dataclasses.asdict(self.options),
                            held_out_bits_per_dim=round(self.held_out_bits(), 4))

    def sample_grid(self, path: Path, per_class: int = 4) -> Path:
        """EMA samples at temperature 1, one column per class, seed 0; held-out bits/dim in a .txt beside it."""
        from ..image.canvas import grid, save_png, to_pil, upscale

        gpt = self.ema()
        n = max(1, len(gpt.class_names))
        images = to_pil(gpt.generate(torch.arange(n).repeat(per_class), seed=0))
        save_png(upscale(grid(images, columns=n), max(1, 64 // gpt.side)), path, "sample grid")
        path.with_suffix(".txt").write_text(f"held-out bits/dim {self.held_out_bits():.4f}\n")
        return path
