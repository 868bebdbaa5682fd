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
            "prediction": "v", "schedule": "cosine", "dropout": 0.0, "upsample": 1}


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
    upsample: Annotated[Optional[int], typer.Option(help="Show the model's samples this many times larger, enlarged bilinearly: "
                                                         "--resolution 8 --upsample 2 denoises the digits at their native 8x8 and "
                                                         "draws 16x16, as the bundled model does. [default: 1]")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train a class-conditional diffusion model (UNet, v-prediction, cosine schedule, EMA).

    Example: genlab train diffusion --data digits --steps 4000 --out runs/digits
    Then:    genlab image "a handwritten 7" --model runs/digits
    """
    from genlab.train.diffusion import DiffusionRun

    check_every(checkpoint_every, sample_every)
    given = {k: v for k, v in dict(data=data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, resolution=resolution,
                                   prediction=prediction, schedule=schedule, dropout=dropout, upsample=upsample).items()
             if v is not None}
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
    """Drive a run's step generator: the progress bar, the log, checkpoints and sample grids (every
    trainer's loop). Under torchrun all ranks step and checkpoint together; rank 0 alone writes."""
    from genlab.train.loop import TrainLog

    total, smooth, main = run.trainer.config.steps, None, run.trainer.rank == 0
    log = TrainLog(out / "log.jsonl", run.trainer.step)
    with step_progress("training", total, start=run.trainer.step) as update:
        for s in run.steps():
            smooth = s.loss if smooth is None else 0.98 * smooth + 0.02 * s.loss
            update(s.step, f"loss {smooth:.4f} · {1 / s.seconds:.1f} it/s · lr {s.lr:.1e}")
            log.add({"step": s.step, "loss": s.loss, "seconds": s.seconds} | getattr(run, "parts", {}))
            if s.step % checkpoint_every == 0 or s.step == total:
                if main:
                    log.flush()  # first: a run may copy its curve into model/
                    run.save()
                else:
                    run.trainer.save(out / "checkpoints")  # its share of the checkpoint: its random streams
            if main and sample_every and (s.step % sample_every == 0 or s.step == total):
                run.sample_grid(out / "samples" / f"step-{s.step:07d}.png")


def check_every(checkpoint_every: int, sample_every: int) -> None:
    from genlab.errors import check

    check(checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    check(sample_every >= 0, f"--sample-every must be 0 or more, got {sample_every}")


VAE_DEFAULTS = {"steps": 2000, "batch_size": 32, "lr": 1e-3, "seed": 0}
TEXT2IMAGE_DEFAULTS = {"vae": "runs/shapes-vae", "images": 20000, "layout": 8, "layout_warmup": 1500, "layout_classes": True,
                       "steps": 4000,
                       "batch_size": 64, "lr": 1e-3, "seed": 0}


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
    run = start_run(VaeRun, out, resume, VAE_DEFAULTS,
                    steps=steps, batch_size=batch_size, lr=lr, seed=seed)
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
    layout: Annotated[Optional[int], typer.Option(help="Channels of the prompt layout, a map of what the prompt puts where, "
                                                       "read by the UNet next to the latent (image/text2image.py); the first 4 "
                                                       "learn to guess the latent picture; it makes relations work "
                                                       "(docs/benchmarks.md). 0 = none, a plain Stable Diffusion UNet. "
                                                       "[default: 8]")] = None,
    layout_warmup: Annotated[Optional[int], typer.Option("--layout-warmup", help="Steps in which a new layout learns its guess "
                                                         "of the picture by itself, before the UNet's first step (about a "
                                                         "minute for the default). [default: 1500]")] = None,
    layout_classes: Annotated[Optional[bool], typer.Option("--layout-classes/--no-layout-classes", help="A semantic layout: "
                              "it also learns which colour, shape and size covers each latent position (the shapes "
                              "world's ground truth), and the UNet reads those probabilities: shapes and colours "
                              "stay with their places. [default: yes, with a layout]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total; with --resume, a larger total extends the run. [default: 4000]")] = None,
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
    check(layout is None or layout == 0 or layout >= 4, f"--layout must be 0 (none) or at least 4 channels (the first 4 "
          f"guess the latent picture), got {layout}")
    check(layout_warmup is None or layout_warmup >= 0, f"--layout-warmup must be 0 or more steps, got {layout_warmup}")
    if layout == 0 and not resume:  # no layout, so no classes unless asked for (which check refuses)
        check(not layout_classes, "--layout-classes needs a layout: drop --layout 0, or give it 4 channels or more")
        layout_classes = False
    run = start_run(Text2ImageRun, out, resume, TEXT2IMAGE_DEFAULTS, vae=vae, images=images, layout=layout,
                    layout_warmup=layout_warmup, layout_classes=layout_classes, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    n = sum(p.numel() for p in run.model.denoiser().parameters())
    what = "UNet and prompt layout" if run.model.layout is not None else "UNet"
    console.print(("resuming" if resume else "training") + f" the text-to-image {what} ({n / 1e6:.2f}M parameters) at step "
                  f"{run.trainer.step} of {run.trainer.config.steps}; encoding {run.images} captioned pictures first")
    with step_progress("encoding the pool", run.images) as update:
        run.prepare(lambda done: update(done, ""))
    if run.warm_steps:
        with step_progress("warming the layout", run.warm_steps) as update:
            run.warm_layout(lambda done, loss: update(done, f"layout loss {loss:.4f}"))
    fit(run, out, checkpoint_every, sample_every)
    console.print(f"model saved in {out / 'model'}; try: genlab image 'a red circle above a blue square' --model {out}")



GAN_DEFAULTS = {"data": "digits", "resolution": None, "latent": 64, "width": 64, "loss": "hinge", "steps": 2000,
                "batch_size": 64, "lr": 2e-4, "d_lr_scale": 1.0, "mode_seeking": 0.3, "ema": 0.999, "seed": 0}


@train_app.command()
def gan(
    data: Annotated[Optional[str], typer.Option(help="'digits' or a folder of images (subfolders become classes). [default: digits]")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/, log.jsonl (both losses per step) and model/.")] = Path("runs/gan"),
    resolution: Annotated[Optional[int], typer.Option(help="Image side, a power of two (digits: default 16, as the diffusion model).")] = None,
    latent: Annotated[Optional[int], typer.Option(help="Length of the noise vector z. [default: 64]")] = None,
    width: Annotated[Optional[int], typer.Option(help="Channels of the largest feature maps. [default: 64]")] = None,
    loss: Annotated[Optional[str], typer.Option(help="hinge, or non-saturating (the original GAN loss with -log D for G). [default: hinge]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total (each moves both networks); with --resume, "
                                                      "a larger total extends the run. [default: 2000]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Real images per step. [default: 64]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="The generator's peak learning rate (Adam, beta1 0.5). [default: 2e-4]")] = None,
    d_lr_scale: Annotated[Optional[float], typer.Option("--d-lr-scale", help="The discriminator's learning rate over the "
                                                        "generator's (TTUR). [default: 1]")] = None,
    mode_seeking: Annotated[Optional[float], typer.Option("--mode-seeking", help="Weight of the mode-seeking term: G pays when "
                    "two noises give the same image (0 = off). [default: 0.3]")] = None,
    ema: Annotated[Optional[float], typer.Option(help="EMA decay of the weights that model/ keeps; 0 keeps the last weights. "
                                                    "[default: 0.999]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the initial weights and every draw. [default: 0]")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and model/ every N steps.")] = 500,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Save a grid of samples every N steps; 0 = never.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train a class-conditional GAN (DCGAN generator, spectral-norm projection discriminator).

    One network evaluation per image, against diffusion's many. The losses of both players
    are logged at every step (log.jsonl), so instability shows.

    Example: genlab train gan --out runs/gan
    """
    from genlab.errors import check
    from genlab.train.gan import GanRun

    check_every(checkpoint_every, sample_every)
    check(ema is None or 0 <= ema < 1, f"--ema must be in [0, 1), got {ema}")
    check(all(v is None or v >= 1 for v in (width, latent)), f"--width and --latent must be at least 1, got {width} and {latent}")
    check(d_lr_scale is None or d_lr_scale > 0, f"--d-lr-scale must be positive, got {d_lr_scale}")
    check(mode_seeking is None or mode_seeking >= 0, f"--mode-seeking must be 0 or more, got {mode_seeking}")
    run = start_run(GanRun, out, resume, GAN_DEFAULTS,
                    data=data, resolution=resolution, latent=latent, width=width, loss=loss, steps=steps,
                    batch_size=batch_size, lr=lr, d_lr_scale=d_lr_scale, mode_seeking=mode_seeking, ema=ema, seed=seed)
    g, d = (sum(p.numel() for p in net.parameters()) for net in (run.gan.generator, run.gan.discriminator))
    c = run.gan.config
    console.print(f"{len(run.data.x)} images of {c.channels}x{c.resolution}x{c.resolution} · generator {g / 1e6:.2f}M, "
                  f"discriminator {d / 1e6:.2f}M parameters · {c.loss} loss · " + ("resuming" if resume else "training")
                  + f" at step {run.trainer.step} of {run.trainer.config.steps}")
    fit(run, out, checkpoint_every, sample_every)
    console.print(f"generator saved in {out / 'model'}; losses per step in {out / 'log.jsonl'}")


AR_IMAGE_DEFAULTS = {"data": "digits", "resolution": 8, "levels": 17, "width": 128, "layers": 4, "heads": 4, "steps": 500,
                     "batch_size": 64, "lr": 2e-3, "ema": 0.999, "seed": 0}


@train_app.command("ar-image")
def ar_image(
    data: Annotated[Optional[str], typer.Option(help="'digits' or a folder of greyscale images (subfolders become classes). "
                                                     "[default: digits]")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/, log.jsonl and model/.")] = Path("runs/ar-image"),
    resolution: Annotated[Optional[int], typer.Option(help="Image side; the sequence is side x side pixels. [default: 8, "
                                                           "the digits' own]")] = None,
    levels: Annotated[Optional[int], typer.Option(help="Grey levels each pixel is quantised to (the vocabulary). "
                                                       "[default: 17, lossless for the digits]")] = None,
    width: Annotated[Optional[int], typer.Option(help="Model width. [default: 128]")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Transformer blocks. [default: 4]")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Attention heads. [default: 4]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total; with --resume, a larger total extends the run. [default: 500]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per step. [default: 64]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay). [default: 2e-3]")] = None,
    ema: Annotated[Optional[float], typer.Option(help="EMA decay of the weights model/ keeps; 0 keeps the last weights. [default: 0.999]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the initial weights and every draw. [default: 0]")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and model/ every N steps.")] = 500,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Save samples and held-out bits/dim every N steps; 0 = never.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train an autoregressive image model (ImageGPT): a GPT over quantised pixels, one pixel per step.

    The same decoder as `genlab train lm`, over [class word, pixel 1..64]. It reports the
    exact held-out negative log-likelihood in bits per pixel.

    Example: genlab train ar-image --out runs/ar-image
    """
    from genlab.errors import check
    from genlab.train.ar_image import ArImageRun

    check_every(checkpoint_every, sample_every)
    check(ema is None or 0 <= ema < 1, f"--ema must be in [0, 1), got {ema}")
    check(resolution is None or 4 <= resolution <= 32, f"--resolution must be between 4 and 32 (the sequence is its square), got {resolution}")
    run = start_run(ArImageRun, out, resume, AR_IMAGE_DEFAULTS,
                    data=data, resolution=resolution, levels=levels, width=width, layers=layers, heads=heads, steps=steps,
                    batch_size=batch_size, lr=lr, ema=ema, seed=seed)
    n, gpt = sum(p.numel() for p in run.gpt.model.parameters()), run.gpt
    console.print(f"{len(run.data.x)} images ({len(run.held_out.x)} held out) as {gpt.side * gpt.side} pixels of "
                  f"{gpt.levels} levels · GPT {n / 1e6:.2f}M parameters · " + ("resuming" if resume else "training")
                  + f" at step {run.trainer.step} of {run.trainer.config.steps}")
    fit(run, out, checkpoint_every, sample_every)
    console.print(f"held-out NLL {run.held_out_bits():.3f} bits/dim; model saved in {out / 'model'}")


def start_run(run_class, out: Path, resume: bool, defaults: dict, **options):
    """The run behind a `train` command: the options the user gave (None = not given) over the
    defaults, or with --resume the saved run, which checks the options given again."""
    given = absolute_data({k: v for k, v in options.items() if v is not None})
    return run_class.resume(out, given) if resume else run_class.create(out, defaults | given)


def absolute_data(given: dict, named: tuple[str, ...] = ("digits", "pydoc")) -> dict:
    """--data as an absolute path (unless it names a built-in set), so --resume works from any folder."""
    if given.get("data") not in (None, *named):
        given = given | {"data": str(Path(given["data"]).expanduser().resolve())}
    return given


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
    run = start_run(LmRun, out, resume, LM_DEFAULTS,
                    data=data, vocab_size=vocab_size, context=context, width=width, layers=layers, heads=heads, steps=steps,
                    batch_size=batch_size, lr=lr, seed=seed)
    n = sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.train_ids):,} training tokens, {len(run.held_out_ids):,} held out · vocabulary "
                  f"{run.tokenizer.get_vocab_size()} · GPT {n / 1e6:.2f}M parameters · "
                  + ("resuming" if resume else "training") + f" at step {run.trainer.step} of {run.trainer.config.steps}")
    fit(run, out, checkpoint_every, sample_every)
    console.print(f"held-out perplexity {run.held_out_perplexity():.2f}; model saved in {out / 'model'}; try: "
                  f"genlab text 'The for statement' --model {out / 'model'} --raw")


DIFFUSION_LM_DEFAULTS = LM_DEFAULTS | {"steps": 2000}


@train_app.command("diffusion-lm")
def diffusion_lm(
    data: Annotated[Optional[str], typer.Option(help="'pydoc' (Python's own documentation, shipped with Python) or a UTF-8 "
                                                     "text file; the last tenth is held out. [default: pydoc]")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (load it with "
                                           "genlab.train.diffusion_lm.DiffusionLm.load).")] = Path("runs/diffusion-lm"),
    vocab_size: Annotated[Optional[int], typer.Option("--vocab-size", help="BPE vocabulary trained on the data (as "
                    "`genlab train lm`'s), plus one MASK id. [default: 4096]")] = None,
    context: Annotated[Optional[int], typer.Option(help="Tokens per training window (and the model's context). [default: 128]")] = None,
    width: Annotated[Optional[int], typer.Option(help="Model width. [default: 256]")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Transformer blocks. [default: 4]")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Attention heads. [default: 4]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total; with --resume, a larger total extends the run. "
                                                      f"[default: {DIFFUSION_LM_DEFAULTS['steps']}]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Windows per step. [default: 16]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay). [default: 3e-3]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the initial weights and every window, t and mask drawn. [default: 0]")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and model/ every N steps.")] = 250,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Write sample texts and the perplexity bound every N "
                                                                     "steps; 0 = never.")] = 250,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")] = False,
):
    """Train a masked-diffusion LM (MDLM): the GPT of `genlab train lm` made bidirectional, on the same data.

    Training masks each token with a random probability t and teaches the model to guess the masked ones;
    sampling starts from all MASKs and reveals tokens over a number of steps, in any order.

    Example: genlab train diffusion-lm --data pydoc --out runs/diffusion-lm
    It reports a held-out perplexity bound, comparable with `genlab train lm`'s held-out perplexity.
    """
    from genlab.train.diffusion_lm import DiffusionLmRun

    check_every(checkpoint_every, sample_every)
    run = start_run(DiffusionLmRun, out, resume, DIFFUSION_LM_DEFAULTS,
                    data=data, vocab_size=vocab_size, context=context, width=width, layers=layers, heads=heads, steps=steps,
                    batch_size=batch_size, lr=lr, seed=seed)
    n = sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.train_ids):,} training tokens, {len(run.held_out_ids):,} held out · vocabulary "
                  f"{run.tokenizer.get_vocab_size()} + MASK · diffusion LM {n / 1e6:.2f}M parameters · "
                  + ("resuming" if resume else "training") + f" at step {run.trainer.step} of {run.trainer.config.steps}")
    fit(run, out, checkpoint_every, sample_every)
    console.print(f"held-out perplexity bound {run.held_out_perplexity_bound():.2f} (an upper bound); model saved in "
                  f"{out / 'model'}; samples in {out / 'samples'}")
