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
            "prediction": "v", "schedule": "cosine", "dropout": 0.0}


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
    dropout: Annotated[Optional[float], typer.Option(help="Dropout in the UNet's residual blocks while training: "
                                                          "regularises small datasets. [default: 0]")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train a class-conditional diffusion model (UNet, v-prediction, cosine schedule, EMA).

    Example: genlab train diffusion --data digits --steps 4000 --out runs/digits
    Then:    genlab image "a handwritten 7" --model runs/digits
    """
    from genlab.train.diffusion import DiffusionRun

    check_every(checkpoint_every, sample_every)
    given = {k: v for k, v in dict(data=data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, resolution=resolution,
                                   prediction=prediction, schedule=schedule, dropout=dropout).items() if v is not None}
    if resume:
        run = DiffusionRun.resume(out, given)
        console.print(f"resuming {out} at step {run.trainer.step} of {run.trainer.config.steps}")
    else:
        run = DiffusionRun.create(out, DEFAULTS | given)
    c, n = run.model.config, sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.data.x)} images of {c.channels}x{c.resolution}x{c.resolution}, "
                  f"{c.num_classes or 'no'} classes · UNet {n / 1e6:.2f}M parameters · {c.prediction}-prediction, {c.schedule} schedule")
    fit(run, out, checkpoint_every, sample_every)
    example = (c.class_names or ["anything"])[-1]
    console.print(f"model saved in {out / 'model'}; try: genlab image {example!r} --model {out}")


def fit(run, out: Path, checkpoint_every: int, sample_every: int) -> None:
    """Drive a run's step generator: the progress bar, checkpoints and sample grids (every trainer's loop)."""
    total, smooth = run.trainer.config.steps, None
    with step_progress("training", total, start=run.trainer.step) as update:
        for s in run.steps():
            smooth = s.loss if smooth is None else 0.98 * smooth + 0.02 * s.loss
            update(s.step, f"loss {smooth:.4f} · {1 / s.seconds:.1f} it/s · lr {s.lr:.1e}")
            if s.step % checkpoint_every == 0 or s.step == total:
                run.save()
            if sample_every and (s.step % sample_every == 0 or s.step == total):
                run.sample_grid(out / "samples" / f"step-{s.step:07d}.png")


def check_every(checkpoint_every: int, sample_every: int) -> None:
    from genlab.errors import check

    check(checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    check(sample_every >= 0, f"--sample-every must be 0 or more, got {sample_every}")


VAE_DEFAULTS = {"steps": 2000, "batch_size": 32, "lr": 1e-3, "seed": 0}
TEXT2IMAGE_DEFAULTS = {"vae": "runs/shapes-vae", "images": 20000, "steps": 7000, "batch_size": 64, "lr": 1e-3, "seed": 0}


@train_app.command()
def vae(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ (pictures over their reconstructions) and model/.")] = Path("runs/shapes-vae"),
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total; with --resume, a larger total extends the run. [default: 2000]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Pictures per step. [default: 32]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay). [default: 1e-3]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the initial weights and the pictures drawn. [default: 0]")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and model/ every N steps.")] = 500,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Save reconstructions every N steps; 0 = never.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train the autoencoder of latent text-to-image: 32x32 shapes pictures <-> 8x8x4 latents.

    Step 1 of 2. Then: genlab train text2image --vae runs/shapes-vae
    """
    from genlab.train.text2image import VaeRun

    check_every(checkpoint_every, sample_every)
    given = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed).items() if v is not None}
    run = VaeRun.resume(out, given) if resume else VaeRun.create(out, VAE_DEFAULTS | given)
    n = sum(p.numel() for p in run.vae.parameters())
    console.print(("resuming" if resume else "training") + f" the shapes VAE ({n / 1e6:.2f}M parameters) at step "
                  f"{run.trainer.step} of {run.trainer.config.steps}")
    fit(run, out, checkpoint_every, sample_every)
    console.print(f"VAE saved in {out / 'model'}; next: genlab train text2image --vae {out}")


@train_app.command()
def text2image(
    vae: Annotated[Optional[str], typer.Option(help="The trained VAE: a `genlab train vae` --out folder. [default: runs/shapes-vae]")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (use it with genlab image --model).")] = Path("runs/shapes"),
    images: Annotated[Optional[int], typer.Option(help="Captioned pictures in the training pool, encoded once at the start. "
                                                       "[default: 20000]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total; with --resume, a larger total extends the run. [default: 7000]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Pictures per step. [default: 64]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay). [default: 1e-3]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the initial weights, the pool and every draw. [default: 0]")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and model/ every N steps.")] = 500,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Save a grid of samples every N steps; 0 = never.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train the text-conditioned latent UNet (frozen MiniLM text encoder, cross-attention, v-prediction).

    Step 2 of 2, after genlab train vae. Then: genlab image "a red circle above a blue square" --model runs/shapes
    """
    from genlab.errors import check
    from genlab.train.text2image import Text2ImageRun

    check_every(checkpoint_every, sample_every)
    check(images is None or images >= 1, f"--images must be at least 1, got {images}")
    given = {k: v for k, v in dict(vae=vae, images=images, steps=steps, batch_size=batch_size, lr=lr, seed=seed).items()
             if v is not None}
    run = Text2ImageRun.resume(out, given) if resume else Text2ImageRun.create(out, TEXT2IMAGE_DEFAULTS | given)
    n = sum(p.numel() for p in run.model.unet.parameters())
    console.print(("resuming" if resume else "training") + f" the text-to-image UNet ({n / 1e6:.2f}M parameters) at step "
                  f"{run.trainer.step} of {run.trainer.config.steps}; encoding {run.images} captioned pictures first")
    with step_progress("encoding the pool", run.images) as update:
        run.prepare(lambda done: update(done, ""))
    fit(run, out, checkpoint_every, sample_every)
    console.print(f"model saved in {out / 'model'}; try: genlab image 'a red circle above a blue square' --model {out}")



LM_DEFAULTS = {"data": "pydoc", "vocab_size": 4096, "context": 128, "width": 256, "layers": 4, "heads": 4, "steps": 500,
               "batch_size": 16, "lr": 3e-3, "seed": 0}


@train_app.command()
def lm(
    data: Annotated[Optional[str], typer.Option(help="'pydoc' (Python's own documentation, shipped with Python) or a UTF-8 "
                                                     "text file; the last tenth is held out. [default: pydoc]")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (use it with genlab text --model).")] = Path("runs/lm"),
    vocab_size: Annotated[Optional[int], typer.Option("--vocab-size", help="BPE vocabulary trained on the data. [default: 4096]")] = None,
    context: Annotated[Optional[int], typer.Option(help="Tokens per training window (and the model's context). [default: 128]")] = None,
    width: Annotated[Optional[int], typer.Option(help="Model width. [default: 256]")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Transformer blocks. [default: 4]")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Attention heads. [default: 4]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total; with --resume, a larger total extends the run. [default: 500]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Windows per step. [default: 16]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay). [default: 3e-3]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the initial weights and every window drawn. [default: 0]")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and model/ every N steps.")] = 500,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Write sample texts and perplexity every N steps; 0 = never.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train a small GPT (a Llama-shaped decoder) from scratch, with its own BPE tokenizer.

    Example: genlab train lm --data pydoc --steps 500 --out runs/lm
    Then:    genlab text "The for statement" --model runs/lm/model --raw
    """
    from genlab.train.lm import LmRun

    check_every(checkpoint_every, sample_every)
    given = {k: v for k, v in dict(data=data, vocab_size=vocab_size, context=context, width=width, layers=layers, heads=heads,
                                   steps=steps, batch_size=batch_size, lr=lr, seed=seed).items() if v is not None}
    if "data" in given and given["data"] != "pydoc":
        given["data"] = str(Path(given["data"]).expanduser().resolve())  # so --resume works from anywhere
    run = LmRun.resume(out, given) if resume else LmRun.create(out, LM_DEFAULTS | given)
    n = sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.train_ids):,} training tokens, {len(run.held_out_ids):,} held out · vocabulary "
                  f"{run.tokenizer.get_vocab_size()} · GPT {n / 1e6:.2f}M parameters · "
                  + ("resuming" if resume else "training") + f" at step {run.trainer.step} of {run.trainer.config.steps}")
    fit(run, out, checkpoint_every, sample_every)
    console.print(f"held-out perplexity {run.held_out_perplexity():.2f}; model saved in {out / 'model'}; try: "
                  f"genlab text 'The for statement' --model {out / 'model'} --raw")
