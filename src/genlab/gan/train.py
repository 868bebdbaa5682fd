"""Training a GAN: the min-max step, and the run behind `genlab train gan`.

A GAN is two networks playing a game (Goodfellow et al. 2014). The discriminator D learns
to score real images high and generated ones low; the generator G learns to make images D
scores high. `gan_step` is the one place the game is written down, as two turns:

    D's turn:  hinge  mean(relu(1 - D(real))) + mean(relu(1 + D(G(z))))   non-saturating  softplus(-D(real)) + softplus(D(G(z)))
    G's turn:  hinge  -mean(D(G(z)))                                      non-saturating  softplus(-D(G(z)))

It yields D's loss, the shared Trainer steps D, then it yields G's loss computed against the
updated D, and the Trainer steps G (alternating updates, as in Goodfellow et al.'s
Algorithm 1). Each loss reaches only its own player: D's sees G(z) detached, and G's runs
D with D's weights frozen, so the gradient flows through D into the image but not into D.
Adam's beta1 is 0.5, as in DCGAN. (Updating both players from one summed loss instead,
simultaneously, left this model circling: sharp raw weights, and an EMA that averaged
them into one blurred digit per class.)

With the default mode-seeking weight, G also pays when two noises give the same image
(Mao et al. 2019): without it this generator collapsed to one drawing per class.

Instability is measured, not hidden: every step logs both losses and D's mean score on
real and generated images (out/log.jsonl), and sample grids show collapse when it happens.

    run = GanRun.create(Path("runs/gan"), GanOptions())
    for stats in fit(run): ...
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import check
from ..data.digits import load_images
from .model import Gan, GanConfig
from ..store import atomic_dir
from ..training.loop import StepStats, TrainConfig
from ..training.options import GanOptions
from ..training.run import Run


def gan_step(gan: Gan, real: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
             log: dict | None = None) -> Iterator[torch.Tensor]:
    """One round of the game on a batch: yields D's loss, then (after the Trainer has stepped D) G's.
    `log` receives the numbers worth plotting: both losses and D's mean scores."""
    G, D = gan.generator, gan.discriminator
    log = {} if log is None else log
    z = gan.noise(len(real), generator)
    fake = G(z, labels)

    # D's turn: real up, generated down. fake.detach(): this loss does not reach G.
    d_real, d_fake = D(real, labels), D(fake.detach(), labels)
    if gan.config.loss == "hinge":
        d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    else:
        d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    log |= {"d_loss": d_loss.item(), "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}
    yield d_loss

    # G's turn, against the D that just learned: make D score G's images as real. D's weights are
    # frozen for this pass, so this loss reaches G only (its gradient still flows through D into the image).
    D.requires_grad_(False)
    d_gen = D(fake, labels)
    D.requires_grad_(True)
    g_loss = -d_gen.mean() if gan.config.loss == "hinge" else F.softplus(-d_gen).mean()
    log["g_loss"] = g_loss.item()
    if gan.config.mode_seeking:
        # Mode seeking (Mao et al. 2019): two noises for the same labels should give two different
        # images. A generator that ignores z (mode collapse within a class) pays for it here.
        z2 = gan.noise(len(real), generator)
        ratio = (G(z2, labels) - fake).abs().mean() / (z2 - z).abs().mean()
        g_loss = g_loss + gan.config.mode_seeking / (ratio + 1e-5)
        log["mode_ratio"] = ratio.item()
    yield g_loss


class GanRun(Run):
    """out/checkpoints/step-N, out/model (the generator's EMA weights), out/samples, out/log.jsonl."""

    kind, Options = "gan", GanOptions

    def build(self) -> Gan:
        o = self.options
        self.data = load_images(o.data, o.resolution)
        check(self.data.x.shape[-1] == self.data.x.shape[-2],
              f"images must be square, got {tuple(self.data.x.shape[-2:])}; pass --resolution N")
        config = GanConfig(resolution=self.data.x.shape[-1], channels=self.data.x.shape[1], latent=o.latent, width=o.width,
                           class_names=self.data.class_names, loss=o.loss, d_lr_scale=o.d_lr_scale,
                           mode_seeking=o.mode_seeking)
        torch.manual_seed(o.seed)  # the initial weights
        self.gan = Gan(config)
        return self.gan

    def train_config(self) -> TrainConfig:
        o = self.options
        return TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=o.lr, warmup=0, ema_decay=o.ema, seed=o.seed,
                           betas=(0.5, 0.999))

    def steps(self) -> Iterator[StepStats]:
        def loss(gan: Gan, g: torch.Generator) -> Iterator[torch.Tensor]:
            idx = torch.randint(len(self.data.x), (self.trainer.batch,), generator=g)
            return gan_step(gan, self.data.x[idx], self.data.labels[idx], g, self.parts)

        yield from self.trainer.run(loss)

    def ema(self) -> Gan:
        gan = copy.deepcopy(self.gan)
        gan.load_state_dict(self.trainer.ema.shadow)
        return gan.eval()

    def save_model(self) -> None:
        """out/model: the generator's EMA weights, with the loss curve for `genlab compare`."""
        with atomic_dir(self.out / "model") as tmp:
            self.ema().save(tmp, step=self.trainer.step, train_seconds=round(self.trainer.seconds, 1),
                            options=dataclasses.asdict(self.options),
                            curve=self.curve(("step", "d_loss", "g_loss", "d_real", "d_fake")))

    def sample_grid(self, path: Path, per_class: int = 4) -> Path:
        """EMA samples, one column per class, the same noise (seed 0) at every checkpoint."""
        from ..image.canvas import grid, save_png, to_pil, upscale

        gan = self.ema()
        n = gan.config.num_classes
        labels = torch.arange(n).repeat(per_class)  # row-major: classes across
        images = to_pil(gan.generate(labels, seed=0))
        save_png(upscale(grid(images, columns=n), max(1, 64 // gan.config.resolution)), path, "sample grid")
        return path
