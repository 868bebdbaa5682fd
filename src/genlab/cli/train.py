"""genlab train diffusion: train an image diffusion model from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genlab.cli import train_app
from genlab.progress import console, step_progress


# What a run is made of. With --resume these come from the checkpoint; giving one that
# differs is an error, since the run could not then continue bit for bit.
DEFAULTS = {"data": "digits", "steps": 4000, "batch_size": 128, "lr": 2e-3, "seed": 0, "resolution": None,
            "prediction": "v", "schedule": "cosine"}


@train_app.command()
def diffusion(
    data: Annotated[Optional[str], typer.Option(help="'digits' (scikit-learn's handwritten digits) or a folder of images; "
                                                     "subfolder names become class labels. [default: digits]")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (use it with genlab image --model).")] = Path("runs/diffusion"),
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total; with --resume, a larger total extends the run. "
                                                      "[default: 4000]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per step. [default: 128]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay). [default: 2e-3]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the initial weights and every random draw in training. [default: 0]")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Resize images to N x N (digits: default 16; folders: "
                                                           "required when sizes differ).")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and model/ every N steps.")] = 500,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Save a grid of samples every N steps; 0 = never.")] = 500,
    prediction: Annotated[Optional[str], typer.Option(help="Training target: v (velocity, Salimans & Ho 2022) or eps "
                                                           "(the noise, DDPM). [default: v]")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Forward process: cosine (Nichol & Dhariwal 2021), linear (DDPM) or "
                                                         "flow (rectified flow: the model learns the velocity eps - x0; sample "
                                                         "with euler or heun). [default: cosine]")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train a class-conditional diffusion model (UNet, v-prediction, cosine schedule, EMA).

    Example: genlab train diffusion --data digits --steps 4000 --out runs/digits
    Then:    genlab image "a handwritten 7" --model runs/digits
    """
    from genlab.errors import check
    from genlab.train.diffusion import DiffusionRun

    check(checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    check(sample_every >= 0, f"--sample-every must be 0 or more, got {sample_every}")
    given = {k: v for k, v in dict(data=data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, resolution=resolution,
                                   prediction=prediction, schedule=schedule).items() if v is not None}
    if resume:
        run = DiffusionRun.resume(out, given)
        console.print(f"resuming {out} at step {run.trainer.step} of {run.trainer.config.steps}")
    else:
        run = DiffusionRun.create(out, DEFAULTS | given)
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
    example = (c.class_names or ["anything"])[-1]
    console.print(f"model saved in {out / 'model'}; try: genlab image {example!r} --model {out}")
