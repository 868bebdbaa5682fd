"""Training a diffusion model: the loss, and the run behind `genlab train diffusion`.

The loss is DDPM's "simple" objective (Ho et al. 2020, Algorithm 1): pick an image x0,
a timestep t and noise eps, make x_t with the forward process, and regress the model's
output onto eps (or onto v, Salimans & Ho 2022) with MSE. Labels are dropped to the
"no class" index 10% of the time, which teaches the same network the unconditional
model that classifier-free guidance needs.

    run = DiffusionRun.start(TrainConfig(steps=4000), data="digits", out=Path("runs/digits"))
    for stats in run.steps():
        ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import check
from ..image.data import ImageData, load_images
from ..image.denoiser import DiffusionConfig, Denoiser, save_model
from ..image.schedules import FlowSchedule, NoiseSchedule
from ..store import atomic_dir
from .loop import StepStats, Trainer, TrainConfig

P_UNCOND = 0.1  # how often the label is dropped (Ho & Salimans 2022 use 0.1-0.2)


def diffusion_loss(model: Denoiser, schedule: NoiseSchedule | FlowSchedule, data: ImageData, batch_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """One batch of DDPM Algorithm 1, with the target chosen by model.config.prediction."""
    n, T = data.x.shape[0], schedule.num_steps
    idx = torch.randint(n, (batch_size,), generator=generator)
    x0, labels = data.x[idx], data.labels[idx]  # (B, C, H, W), (B,)
    if isinstance(schedule, FlowSchedule):  # rectified flow: t in [0, 1], the model sees 1000 t
        t = schedule.draw_t(batch_size, generator)
        eps = torch.randn(x0.shape, generator=generator)
        xt, target, t_model = schedule.add_noise(x0, eps, t), schedule.velocity(x0, eps), t * T
    else:
        t = torch.randint(T, (batch_size,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        xt = schedule.add_noise(x0, eps, t)  # DDPM eq. 4
        target = eps if model.config.prediction == "eps" else schedule.velocity(x0, eps, t)
        t_model = t
    if model.config.num_classes:
        drop = torch.rand(batch_size, generator=generator) < P_UNCOND
        labels = torch.where(drop, torch.full_like(labels, model.config.num_classes), labels)
    return F.mse_loss(model(xt, t_model, labels), target)


@dataclass
class DiffusionRun:
    """A training run on disk: out/checkpoints/step-N, out/model (the EMA weights), out/samples."""

    trainer: Trainer
    model: Denoiser
    data: ImageData
    out: Path

    @classmethod
    def start(cls, config: TrainConfig, data: str, out: Path, resolution: int | None = None,
              model_config: DiffusionConfig | None = None) -> "DiffusionRun":
        images = load_images(data, resolution)
        c = model_config or DiffusionConfig()
        c = dataclasses.replace(c, resolution=images.x.shape[-1], channels=images.x.shape[1],
                                class_names=images.class_names)
        check(images.x.shape[-1] == images.x.shape[-2], f"images must be square, got {tuple(images.x.shape[-2:])}; pass --resolution N")
        torch.manual_seed(config.seed)  # the initial weights
        model = Denoiser(c)
        extra = {"data": data, "resolution": resolution, "model": dataclasses.asdict(c)}
        return cls(Trainer(model, config, extra), model, images, out)

    @classmethod
    def resume(cls, out: Path, steps: int | None = None) -> "DiffusionRun":
        checkpoint = Trainer.latest(out / "checkpoints")
        check(checkpoint is not None, f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume")
        extra = Trainer.read_meta(checkpoint)["extra"]
        model = Denoiser(DiffusionConfig(**extra["model"]))
        trainer = Trainer.resume(model, checkpoint, steps)
        return cls(trainer, model, load_images(extra["data"], extra["resolution"]), out)

    def steps(self) -> Iterator[StepStats]:
        schedule = self.model.config.noise_schedule()
        loss = lambda model, g: diffusion_loss(model, schedule, self.data, self.trainer.config.batch_size, g)  # noqa: E731
        yield from self.trainer.run(loss)

    def save(self) -> Path:
        """A checkpoint to resume from, and out/model: the EMA weights, ready for `genlab image`."""
        path = self.trainer.save(self.out / "checkpoints")
        with atomic_dir(self.out / "model") as tmp:
            save_model(self.model, tmp, self.trainer.ema.shadow)
        return path

    @torch.inference_mode()
    def sample_grid(self, path: Path, per_class: int = 4, steps: int = 20):
        """A grid of EMA samples, one column per class (DPM-Solver++ or, for flow, Euler; guidance 3, seed 0)."""
        from ..image.canvas import grid, to_pil, upscale
        from ..image.generator import guided
        from ..image.samplers import SAMPLERS, make_plan

        c = self.model.config
        ema = Denoiser(c)
        ema.load_state_dict(self.trainer.ema.shadow)
        ema.eval()
        k = max(1, c.num_classes)
        labels = torch.arange(k).repeat(per_class) if c.num_classes else None
        g = torch.Generator().manual_seed(0)
        x = torch.randn((k * per_class, c.channels, c.resolution, c.resolution), generator=g)
        sampler = "euler" if c.schedule == "flow" else "dpmpp"
        plan = make_plan(sampler, c.noise_schedule(), steps, c.prediction)
        for step in SAMPLERS[sampler](guided(ema, labels, None, 3.0), x, plan, generator=g):
            x = step.xt
        path.parent.mkdir(parents=True, exist_ok=True)
        upscale(grid(to_pil(x), columns=k), max(1, 64 // c.resolution)).save(path)
        return path
