"""Training a diffusion model: the loss, and the run behind `genlab train diffusion`.

The loss is DDPM's "simple" objective (Ho et al. 2020, Algorithm 1): pick an image x0,
a timestep t and noise eps, make x_t with the forward process, and regress the model's
output onto eps (or onto v, Salimans & Ho 2022) with MSE. Labels are dropped to the
"no class" index 10% of the time, which teaches the same network the unconditional
model that classifier-free guidance needs.

    run = DiffusionRun.create(Path("runs/digits"), DiffusionOptions(steps=4000))
    for stats in fit(run):
        ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import check
from ..data.digits import ImageData, load_images
from .denoiser import DiffusionConfig, Denoiser, save_model
from .schedules import FlowSchedule, NoiseSchedule
from ..store import atomic_dir
from ..training.loop import StepStats, TrainConfig
from ..training.options import DiffusionOptions
from ..training.run import Run
P_UNCOND = 0.1  # how often the label is dropped (Ho & Salimans 2022 use 0.1-0.2)


def diffusion_loss(model: Denoiser, schedule: NoiseSchedule | FlowSchedule, data: ImageData, batch_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """One batch of DDPM Algorithm 1, with the target chosen by model.config.prediction."""
    idx = torch.randint(data.x.shape[0], (batch_size,), generator=generator)
    x0, labels = data.x[idx], data.labels[idx]  # (B, C, H, W), (B,)

    def denoise(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dropped = labels
        if model.config.num_classes:  # drawn after t and eps: the order the bundled model was trained with
            drop = torch.rand(batch_size, generator=generator) < P_UNCOND
            dropped = torch.where(drop, torch.full_like(labels, model.config.num_classes), labels)
        return model(xt, t, dropped)

    return denoising_loss(denoise, schedule, x0, model.config.prediction, generator)


def denoising_loss(denoise, schedule: NoiseSchedule | FlowSchedule, x0: torch.Tensor, prediction: str,
                   generator: torch.Generator) -> torch.Tensor:
    """MSE between denoise(xt, t) and its target, for a random t per image: the one line of
    diffusion training, shared by pixel and latent models. x0: (B, C, H, W)."""
    T, B = schedule.num_steps, x0.shape[0]
    if isinstance(schedule, FlowSchedule):  # rectified flow: t in [0, 1], the model sees 1000 t
        t = schedule.draw_t(B, generator)
        eps = torch.randn(x0.shape, generator=generator)
        xt, target, t_model = schedule.add_noise(x0, eps, t), schedule.velocity(x0, eps), t * T
    else:
        t = torch.randint(T, (B,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        xt = schedule.add_noise(x0, eps, t)  # DDPM eq. 4
        target = eps if prediction == "eps" else schedule.velocity(x0, eps, t)
        t_model = t
    return F.mse_loss(denoise(xt, t_model), target)


class DiffusionRun(Run):
    """out/checkpoints/step-N, out/model (the EMA weights, for `genlab image --model`), out/samples."""

    kind, Options = "diffusion", DiffusionOptions

    def build(self) -> Denoiser:
        o = self.options
        self.data = load_images(o.data, o.resolution)
        check(self.data.x.shape[-1] == self.data.x.shape[-2],
              f"images must be square, got {tuple(self.data.x.shape[-2:])}; pass --resolution N")
        shape = {k: tuple(v) for k, v in (("widths", o.widths), ("attention_levels", o.attention_levels), ("dit", o.dit))
                 if v is not None}
        c = DiffusionConfig(**shape, backbone=o.backbone, prediction=o.prediction, schedule=o.schedule, dropout=o.dropout, upsample=o.upsample,
                            resolution=self.data.x.shape[-1], channels=self.data.x.shape[1], class_names=self.data.class_names)
        torch.manual_seed(o.seed)  # the initial weights
        self.model = Denoiser(c)
        return self.model

    def train_config(self) -> TrainConfig:
        o = self.options
        return TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=o.lr, warmup=o.warmup, seed=o.seed)

    def steps(self) -> Iterator[StepStats]:
        schedule = self.model.config.noise_schedule()
        loss = lambda model, g: diffusion_loss(model, schedule, self.data, self.trainer.batch, g)  # noqa: E731
        yield from self.trainer.run(loss)

    def save_model(self) -> None:
        """out/model: the EMA weights, ready for `genlab image`."""
        with atomic_dir(self.out / "model") as tmp:
            save_model(self.model, tmp, self.trainer.ema.shadow)
            (tmp / "genlab-train.json").write_text(json.dumps({"step": self.trainer.step,
                                                               "train_seconds": round(self.trainer.seconds, 1)}))

    def sample_grid(self, path: Path, per_class: int = 4, steps: int = 20):
        """A grid of EMA samples, one column per class, with the model's default sampler, seed 0."""
        import copy

        from ..image.canvas import grid, save_png, upscale
        from ..image.generator import ImageGenerator

        ema = copy.deepcopy(self.model)
        ema.load_state_dict(self.trainer.ema.shadow)
        gen = ImageGenerator.from_model(ema)
        c = self.model.config
        columns = [gen.generate(name, n=per_class, steps=steps, seed=0) for name in c.class_names] or \
                  [gen.generate("anything", n=per_class, steps=steps, seed=0)]
        cells = [column[row] for row in range(per_class) for column in columns]  # row-major: classes across
        save_png(upscale(grid(cells, columns=len(columns)), max(1, 64 // ema.pixel_shape[-1])), path, "sample grid")
        self.model.train()
        return path
