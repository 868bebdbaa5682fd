"""Spatial control for the shapes model: a ControlNet branch that reads a layout or a sketch.

    genlab train control --out runs/shapes-control          # the bundled shapes model stays frozen
    genlab image --layout layout.json --model shapes        # boxes: colour, shape, where (data/layouts.py)
    genlab image "a red circle" --control sketch.png        # a sketch, edge map or mask

ControlNet (Zhang et al. 2023): a trainable copy of the frozen UNet's encoder reads the noisy
latent and the control maps, and adds its features to the UNet's skip connections through
convolutions initialised to zero, so training starts from the base model exactly and the branch
learns only what the control adds:

    (zt, t, text) --frozen UNet encoder--> h_i ...................> decoder --> eps or v
    (zt, t, text, control maps) --copy--> zero conv_i --> + h_i  (each level, and the middle)

The control maps (data/layouts.py) have a channel per colour and per shape, a box mask and a
sketch channel; training draws random layouts of 1-3 objects, renders each as the shapes world
would, and teaches the branch from layout, sketch or both (so one file serves either), with the
caption naming the objects but not their places. With a layout, the base's own semantic input (text2image.py's PromptLayout class maps: which colour,
shape and size covers each latent position, otherwise guessed from the caption) is given exactly,
from the boxes: the caption names the objects but not where they go, and the base's guess of where
fought the branch (measured: docs/control.md). ControlNet rather than GLIGEN's gated box tokens:
diffusers' ControlNetModel already joins a UNet2DConditionModel, and one branch takes both boxes
and drawn sketches (GLIGEN reads boxes only).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.layouts import CONTROL_CHANNELS, Layout, control_maps, random_layout
from ..data.shapes import render
from ..errors import check
from ..store import atomic_dir
from ..training.loop import StepStats
from ..training.options import ControlOptions
from ..training.run import Run
from .text2image import CONTROL_DIR
from .train import P_UNCOND, denoising_loss

EMBEDDING = (16, 32, 64)  # the control maps' encoder: 32x32 -> 8x8, the latent's size, in two stride-2 convolutions
MODES = ("layout", "sketch", "both")  # what a training example shows the branch (equally often)


def new_branch(unet) -> torch.nn.Module:
    """A ControlNet copied from the UNet's encoder (its weights too), with zero convolutions out."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_channels=CONTROL_CHANNELS, conditioning_embedding_out_channels=EMBEDDING)


def sketch_of(layout: Layout, outline: bool) -> torch.Tensor:
    """What a person would draw for this layout: the objects' silhouettes, or their outlines. (32, 32) in [0, 1]."""
    import numpy as np
    from PIL import ImageChops, ImageFilter

    gray = render(layout.scene()).convert("L").point(lambda v: 255 if v > 40 else 0)
    if outline:  # the silhouette less its 3x3 erosion: a one-pixel stroke
        gray = ImageChops.subtract(gray, gray.filter(ImageFilter.MinFilter(3)))
    return torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255)


@dataclass
class ControlPool:
    latents: torch.Tensor  # (P, 4, 8, 8) scaled VAE latents of the rendered layouts
    states: torch.Tensor  # (P, L, 384) float16 caption states
    null: torch.Tensor  # (L, 384) the empty prompt's states
    maps: torch.Tensor  # (P, CONTROL_CHANNELS, 32, 32) uint8 control maps, the sketch channel holding silhouette or outline
    classes: torch.Tensor | None = None  # (P, 14, 8, 8) float16: what covers each latent position, for a base with class maps


def build_pool(model, images: int, seed: int, on_progress=None, chunk: int = 250) -> ControlPool:
    """`images` random layouts (data/layouts.py), each rendered, encoded and captioned once."""
    from ..image.canvas import from_pil

    from ..data.layouts import class_maps

    semantic = bool(model.config.layout_classes)
    latents, states, maps, classes, cache = [], [], [], [], {}
    with torch.no_grad():
        for start in range(0, images, chunk):
            layouts = [random_layout(random.Random(f"control/{seed}/{i}")) for i in range(start, min(start + chunk, images))]
            latents.append(model.encode(torch.cat([from_pil(render(lay.scene())) for lay in layouts])))
            captions = [lay.prompt() for lay in layouts]
            new = sorted(set(captions) - cache.keys())
            if new:
                cache |= dict(zip(new, model.encoder(new)[0].half()))
            states.append(torch.stack([cache[c] for c in captions]))
            maps.append(torch.stack([(control_maps(lay, sketch_of(lay, outline=i % 2 == 1)) * 255).round().to(torch.uint8)
                                     for i, lay in enumerate(layouts, start)]))
            if semantic:
                classes.append(torch.stack([class_maps(lay.scene(), model.config.latent_size) for lay in layouts]).half())
            if on_progress:
                on_progress(min(start + chunk, images))
    return ControlPool(torch.cat(latents), torch.cat(states), model.encoder([""])[0][0], torch.cat(maps),
                       torch.cat(classes) if semantic else None)


def shown(maps: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A batch of uint8 maps as the branch sees them in training: each example's layout, sketch or both (MODES)."""
    x = maps.float() / 255  # (B, C, 32, 32)
    mode = torch.randint(len(MODES), (len(x),), generator=g)
    x[mode == 0, -1] = 0  # layout only: no sketch
    x[mode == 1, :-1] = 0  # sketch only: no boxes
    return x


class ControlRun(Run):
    """out/checkpoints/step-N (the branch), and out/model: the base model's folder with control/ added."""

    kind, Options = "control", ControlOptions
    pool: ControlPool | None = None

    def build(self) -> torch.nn.Module:
        from ..registry import locate
        from .text2image import load_text2image

        ref = locate(self.options.base, "image")
        check(ref.kind.name == "text2image", f"base must be a genlab text-to-image model (shapes, or a genlab train "
              f"text2image folder); {self.options.base!r} is a {ref.kind.title}", "base")
        self.base_folder = ref.path
        self.model = load_text2image(ref.path)  # frozen: only the branch trains
        check(self.model.unet is not None, "base must have a UNet backbone: ControlNet copies a UNet's encoder", "base")
        torch.manual_seed(self.options.seed)
        self.branch = new_branch(self.model.unet).train()
        return self.branch

    def prepare(self, on_progress=None) -> None:
        if self.pool is None:
            self.pool = build_pool(self.model, self.options.images, self.trainer.config.seed, on_progress)

    def steps(self) -> Iterator[StepStats]:
        self.prepare()
        pool, c, batch, m = self.pool, self.model.config, self.trainer.batch, self.model
        schedule = c.noise_schedule()

        def loss(branch, g: torch.Generator) -> torch.Tensor:
            idx = torch.randint(len(pool.latents), (batch,), generator=g)
            z0, states = pool.latents[idx], pool.states[idx].float()
            drop = torch.rand(batch, generator=g) < P_UNCOND  # the empty prompt, for guidance; the control stays
            cond = torch.where(drop[:, None, None], pool.null.float(), states)
            with torch.no_grad():
                layout = m.layout(cond) if m.layout is not None else None
                classes = None
                if pool.classes is not None:  # captioned: the layout's class maps, as a layout request gives them (below)
                    guess = m.layout.unet_input(layout)[:, m.layout.channels:]
                    classes = torch.where(drop[:, None, None, None], guess, pool.classes[idx].float())
            control = shown(pool.maps[idx], g)
            return denoising_loss(lambda zt, t: m(zt, t, cond, layout, control=control, branch=branch, classes=classes),
                                  schedule, z0, c.prediction, g)

        yield from self.trainer.run(loss)

    def ema(self) -> torch.nn.Module:
        branch = copy.deepcopy(self.branch).eval()
        branch.load_state_dict(self.trainer.ema.shadow)
        return branch

    def save_model(self) -> None:
        """out/model: a copy of the base model's folder with this branch in control/ (a model `genlab image` loads)."""
        import shutil

        with atomic_dir(self.out / "model") as tmp:
            shutil.copytree(self.base_folder, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CONTROL_DIR))
            self.ema().save_pretrained(Path(tmp) / CONTROL_DIR)

    def sample_grid(self, path: Path) -> Path:
        """Eight held-out layouts (top row: the layouts as the shapes world draws them) and their samples."""
        from ..image.canvas import grid, save_png, upscale
        from ..image.generator import ImageGenerator

        from .text2image import TextToImage

        m = self.model
        model = TextToImage(m.config, m.vae, m.encoder, m.unet, m.layout)
        model.control = self.ema()
        gen = ImageGenerator.from_model(model)
        layouts = [random_layout(random.Random(f"control-samples/{i}")) for i in range(8)]
        cells = [render(lay.scene()) for lay in layouts] + [gen.generate(lay.prompt(), layout=lay, seed=0)[0] for lay in layouts]
        save_png(upscale(grid(cells, columns=8), 2), path, "layouts and samples")
        self.branch.train()
        return path
