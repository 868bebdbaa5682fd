"""Training latent text-to-image on the shapes world: the VAE first, then the UNet in its latent space.

    genlab train vae --out runs/shapes-vae
    genlab train text2image --vae runs/shapes-vae --out runs/shapes

The VAE sees freshly drawn pictures at every step (data/shapes.py makes any number).
The UNet learns from a pool of `images` captioned pictures encoded once when the run
starts: latents by the VAE, captions by the frozen text encoder. Running MiniLM on every
batch would cost more than the UNet step itself; a resumed run rebuilds the same pool.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import check
from . import autoencoder
from ..data.layouts import LAYOUT_CLASSES, class_maps  # noqa: F401  (LAYOUT_CLASSES: part of this module's API)
from ..data.shapes import ShapesWorld, render
from .text2image import TextToImage, TextToImageConfig, save_text2image
from ..store import atomic_dir
from .train import P_UNCOND, denoising_loss
from ..training.loop import EMA, StepStats, TrainConfig
from ..training.options import Text2ImageOptions, VaeOptions
from ..training.run import Run

# The prompt layout's first channels learn, besides what the UNet asks of them, to guess the
# latent picture from the prompt alone (its mean over all pictures that fit the caption): a
# direct signal for "which object goes where", which the denoising loss alone did not teach.
LAYOUT_WEIGHT = 1.0  # layout_loss's weight next to the denoising loss


def layout_loss(layout, raw: torch.Tensor, z0: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """What the layout learns besides what the UNet asks of it: its first channels guess the
    clean latent (mean squared error), and each class group, if any, the share of each class
    in each cell (cross-entropy against those shares)."""
    loss = torch.nn.functional.mse_loss(raw[:, :z0.shape[1]], z0)
    if classes is not None:
        targets = classes.float().split(layout.classes, dim=1)
        for logits, target in zip(layout.class_logits(raw), targets):
            loss = loss + -(target * logits.log_softmax(1)).sum(1).mean()
    return loss


SAMPLE_PROMPTS = ["a red circle", "two blue squares", "a green triangle on the left", "a yellow square at the bottom",
                  "a purple circle above an orange triangle", "a blue triangle to the left of a red square",
                  "a big green circle", "a small yellow triangle and a blue circle"]


def shapes_batch(world: ShapesWorld, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
    """Pictures (B, 3, 32, 32) in [-1, 1] and their captions, for these example indices."""
    scenes, captions = zip(*(world.example(i) for i in indices))
    return pictures(scenes), list(captions)


def pictures(scenes) -> torch.Tensor:
    """The scenes rendered: (B, 3, 32, 32) in [-1, 1]."""
    from ..image.canvas import from_pil

    return torch.cat([from_pil(render(s)) for s in scenes])


# --- the VAE -----------------------------------------------------------------------------------


class VaeRun(Run):
    """out/checkpoints/step-N, and out/model: the EMA weights as a diffusers AutoencoderKL folder."""

    kind, Options = "vae", VaeOptions

    def build(self) -> torch.nn.Module:
        torch.manual_seed(self.options.seed)  # the initial weights
        self.vae = autoencoder.build_vae()
        return self.vae

    def steps(self) -> Iterator[StepStats]:
        world, batch = ShapesWorld("train", self.trainer.config.seed), self.trainer.batch

        def loss(vae, g: torch.Generator) -> torch.Tensor:
            x, _ = shapes_batch(world, torch.randint(2**31 - 1, (batch,), generator=g).tolist())
            return autoencoder.vae_loss(vae, x, g)

        yield from self.trainer.run(loss)

    def ema(self) -> torch.nn.Module:
        vae = copy.deepcopy(self.vae).eval()
        vae.load_state_dict(self.trainer.ema.shadow)
        return vae

    def save_model(self) -> None:
        """out/model, with the latent scale measured on 500 training pictures."""
        vae = self.ema()
        x, _ = shapes_batch(ShapesWorld("train", seed=12345), list(range(500)))
        vae.register_to_config(scaling_factor=autoencoder.measure_scaling(vae, x))
        with atomic_dir(self.out / "model") as tmp:
            vae.save_pretrained(tmp)

    def sample_grid(self, path: Path) -> Path:
        """Held-out pictures (top row) above their reconstructions (bottom row)."""
        from ..image.canvas import grid, save_png, to_pil, upscale

        x, _ = shapes_batch(ShapesWorld("heldout-combo", 0), list(range(8)))
        with torch.no_grad():
            vae = self.ema()
            recon = autoencoder.decode(vae, autoencoder.encode(vae, x))
        save_png(upscale(grid(to_pil(torch.cat([x, recon.clamp(-1, 1)])), columns=8), 2), path, "reconstructions")
        return path


# --- the text-conditioned UNet -----------------------------------------------------------------


@dataclass
class Pool:
    latents: torch.Tensor  # (P, 4, 8, 8) scaled VAE latents
    states: torch.Tensor  # (P, max_tokens, 384) float16 text-encoder states of the captions
    null: torch.Tensor  # (max_tokens, 384) the empty prompt's states, for caption dropout
    classes: torch.Tensor | None = None  # (P, 14, 8, 8) float16 class_maps, for a semantic layout


def build_pool(model: TextToImage, images: int, seed: int, on_progress=None, chunk: int = 250) -> Pool:
    """Encode `images` training examples once: pictures through the VAE, captions through the text encoder."""
    world, semantic = ShapesWorld("train", seed), bool(model.config.layout_classes)
    latents, states, classes, cache = [], [], [], {}
    with torch.no_grad():
        for start in range(0, images, chunk):
            scenes, captions = zip(*(world.example(i) for i in range(start, min(start + chunk, images))))
            latents.append(model.encode(pictures(scenes)))
            if semantic:
                classes.append(torch.stack([class_maps(s, model.config.latent_size) for s in scenes]).half())
            new = sorted(set(captions) - cache.keys())
            if new:  # the same caption twice is encoded once
                cache |= dict(zip(new, model.encoder(new)[0].half()))
            states.append(torch.stack([cache[c] for c in captions]))
            if on_progress:
                on_progress(min(start + chunk, images))
    return Pool(torch.cat(latents), torch.cat(states), model.encoder([""])[0][0], torch.cat(classes) if semantic else None)


class Text2ImageRun(Run):
    """out/checkpoints/step-N (the UNet), and out/model: the whole pipeline folder (text2image.py)."""

    kind, Options = "text2image", Text2ImageOptions
    pool: Pool | None = None
    warmed = False

    def build(self) -> torch.nn.Module:
        o = self.options
        self.images, self.warmup = o.images, o.layout_warmup
        self.model = self._model(o.vae, o.seed, o.layout, o.layout_classes, o.backbone)
        return self.model.denoiser()

    @staticmethod
    def _model(vae_folder: str, seed: int, layout: int, semantic: bool, backbone: str = "unet") -> TextToImage:
        from diffusers import AutoencoderKL

        if vae_folder == "shapes":  # the bundled model's VAE
            from ..registry import locate

            vae_folder = str(locate("shapes").path / "vae")
        folder = Path(vae_folder)
        folder = folder / "model" if (folder / "model" / "config.json").is_file() else folder  # a `train vae` --out folder
        check((folder / "config.json").is_file(), f"--vae {vae_folder}: no trained VAE there; run `genlab train vae` first")
        vae = AutoencoderKL.from_pretrained(folder).eval()
        torch.manual_seed(seed)  # the UNet's initial weights
        classes = tuple(len(names) for names in LAYOUT_CLASSES.values()) if semantic else ()
        return TextToImage(TextToImageConfig(layout_channels=layout, layout_classes=classes, backbone=backbone), vae)

    def prepare(self, on_progress=None) -> None:
        """Encode the training pool (steps() does it too, if not done yet)."""
        if self.pool is None:
            self.pool = build_pool(self.model, self.images, self.trainer.config.seed, on_progress)

    @property
    def warm_steps(self) -> int:
        """Steps of the layout's warm-up still to do: all of them in a new layout run, else none."""
        return self.warmup if self.model.layout is not None and self.trainer.step == 0 and not self.warmed else 0

    def warm_layout(self, on_progress=None) -> None:
        """Before the UNet's first step, a new layout learns its guess of the picture by itself
        (`warmup` steps of the run's batch size and peak learning rate): a minute's work, after
        which the UNet reads a map that already says what goes where, not noise it learns to
        ignore. A resumed run skips this: its checkpoint holds the warmed layout."""
        if not self.warm_steps:
            return
        self.prepare()
        pool, cfg, layout = self.pool, self.trainer.config, self.model.layout
        g = torch.Generator().manual_seed(cfg.seed + 2)  # its own stream: the trainer's draws stay as they were
        opt = torch.optim.AdamW(layout.parameters(), lr=cfg.lr)
        schedule = TrainConfig(steps=self.warmup, batch_size=cfg.batch_size, lr=cfg.lr, warmup=min(200, self.warmup // 5))
        for step in range(self.warmup):
            for group in opt.param_groups:
                group["lr"] = schedule.lr_at(step)
            idx = torch.randint(len(pool.latents), (cfg.batch_size,), generator=g)
            classes = None if pool.classes is None else pool.classes[idx]
            loss = layout_loss(layout, layout(pool.states[idx].float()), pool.latents[idx], classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_progress:
                on_progress(step + 1, loss.item())
        self.trainer.ema = EMA(self.trainer.model, cfg.ema_decay)  # the average starts from here
        self.warmed = True

    def steps(self) -> Iterator[StepStats]:
        self.prepare()
        self.warm_layout()
        pool, c, batch = self.pool, self.model.config, self.trainer.batch
        schedule = c.noise_schedule()

        def loss(_denoiser, g: torch.Generator) -> torch.Tensor:  # the trainer's module is self.model's UNet and layout
            idx = torch.randint(len(pool.latents), (batch,), generator=g)
            z0, states = pool.latents[idx], pool.states[idx].float()  # (B, 4, 8, 8), (B, L, 384)
            classes = None if pool.classes is None else pool.classes[idx]  # (B, 14, 8, 8)

            drop = torch.rand(batch, generator=g) < P_UNCOND  # the empty prompt, for guidance
            cond = torch.where(drop[:, None, None], pool.null.float(), states)
            layout = None if self.model.layout is None else self.model.layout(cond)  # (B, C, 8, 8)
            loss = denoising_loss(lambda zt, t: self.model(zt, t, cond, layout), schedule, z0, c.prediction, g)
            if layout is None:
                return loss
            captioned = None if classes is None else classes[~drop]
            return loss + LAYOUT_WEIGHT * layout_loss(self.model.layout, layout[~drop], z0[~drop], captioned)

        yield from self.trainer.run(loss)

    def ema(self) -> TextToImage:
        """The model with the EMA weights of the UNet and layout (sharing the VAE and the text encoder)."""
        denoiser = copy.deepcopy(self.trainer.model).eval()
        denoiser.load_state_dict(self.trainer.ema.shadow)
        net, layout = (denoiser["unet"], denoiser["layout"]) if self.model.layout is not None else (denoiser, None)
        return TextToImage(self.model.config, self.model.vae, self.model.encoder, net, layout)

    def save_model(self) -> None:
        with atomic_dir(self.out / "model") as tmp:
            save_text2image(self.ema(), tmp)

    def sample_grid(self, path: Path, steps: int | None = None) -> Path:
        """One sample per prompt in SAMPLE_PROMPTS, seed 0, the default sampler and guidance."""
        from ..image.canvas import grid, save_png, upscale
        from ..image.generator import ImageGenerator

        gen = ImageGenerator.from_model(self.ema())
        cells = [gen.generate(p, steps=steps, seed=0)[0] for p in SAMPLE_PROMPTS]
        save_png(upscale(grid(cells, columns=len(cells)), 2), path, "sample grid")
        self.trainer.model.train()
        return path
