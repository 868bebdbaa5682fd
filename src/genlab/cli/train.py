"""genlab train diffusion: train an image diffusion model from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genlab.cli import train_app
from genlab.progress import console, step_progress


@train_app.command()
def diffusion(
    data: Annotated[str, typer.Option(help="'digits' (scikit-learn's handwritten digits) or a folder of images; "
                                           "subfolder names become class labels.")] = "digits",
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (use it with genlab image --model).")] = Path("runs/diffusion"),
    steps: Annotated[int, typer.Option(help="Optimizer steps in total (with --resume: the new total).")] = 4000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per step.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay).")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed for the initial weights and every random draw in training.")] = 0,
    resolution: Annotated[Optional[int], typer.Option(help="Resize images to N x N (digits: default 16; folders: "
                                                           "required when sizes differ).")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and model/ every N steps.")] = 500,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Save a grid of samples every N steps; 0 = never.")] = 500,
    prediction: Annotated[str, typer.Option(help="Training target: v (velocity, Salimans & Ho 2022) or eps (the noise, DDPM).")] = "v",
    schedule: Annotated[str, typer.Option(help="Forward process: cosine (Nichol & Dhariwal 2021), linear (DDPM) or flow "
                                                "(rectified flow: the model learns the velocity eps - x0; sample with euler or heun).")] = "cosine",
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train a class-conditional diffusion model (UNet, v-prediction, cosine schedule, EMA).

    Example: genlab train diffusion --data digits --steps 4000 --out runs/digits
    Then:    genlab image "a handwritten 7" --model runs/digits
    """
    from genlab.errors import check
    from genlab.train.diffusion import DiffusionRun
    from genlab.train.loop import TrainConfig

    check(checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    check(sample_every >= 0, f"--sample-every must be 0 or more, got {sample_every}")
    if resume:
        run = DiffusionRun.resume(out, steps)
        console.print(f"resuming {out} at step {run.trainer.step} of {run.trainer.config.steps}")
    else:
        from genlab.image.denoiser import DiffusionConfig

        model_config = DiffusionConfig(prediction=prediction, schedule=schedule)
        run = DiffusionRun.start(TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed), data, out, resolution, model_config)
    c, n = run.model.config, sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.data.x)} images of {c.channels}x{c.resolution}x{c.resolution}, "
                  f"{c.num_classes or 'no'} classes · UNet {n / 1e6:.2f}M parameters · {c.prediction}-prediction, {c.schedule} schedule")
    total = run.trainer.config.steps
    smooth = None
    with step_progress("training", total, start=run.trainer.step) as update:
        for s in run.steps():
            smooth = s.loss if smooth is None else 0.98 * smooth + 0.02 * s.loss
            update(s.step, f"loss {smooth:.4f} · {1 / s.seconds:.1f} it/s · lr {s.lr:.1e}")
            if s.step % checkpoint_every == 0 or s.step == total:
                run.save()
            if sample_every and (s.step % sample_every == 0 or s.step == total):
                run.sample_grid(out / "samples" / f"step-{s.step:07d}.png")
    console.print(f"model saved in {out / 'model'}; try: genlab image \"{(c.class_names or ['x'])[-1]}\" --model {out}")
