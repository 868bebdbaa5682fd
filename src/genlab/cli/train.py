"""genlab train ...: each command's flags are its trainer's options dataclass (training/options.py).

The dataclass holds every default and help text; `options_command` turns its fields into
flags, so the CLI only maps flags onto options, runs `fit` (training/run.py) and prints.
Library errors name option fields ("steps must be at least 1"); `genlab`'s entry point shows
them as the flags a user typed ("--steps must be at least 1", cli/__init__.py).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from genlab.cli import flag, train_app
from genlab.progress import console, step_progress
from genlab.training import options as opts

Resume = Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit, with the options it "
                                           "was saved with. Options given again must match, except --steps (a larger "
                                           "total), --checkpoint-every and --sample-every.")]


def options_command(name: str, options_class: type[opts.RunOptions], app: typer.Typer = train_app):
    """Register `body(out, resume, given)` as a command whose flags are options_class's fields (plus
    body's own out and resume); `given` holds the options the user gave (None = not given)."""

    def register(body):
        shown = opts.cli_fields(options_class)
        params = [p for p in inspect.signature(body, eval_str=True).parameters.values() if p.name != "given"]
        for f, kind in shown:
            default = "" if f.default is None or "(default:" in f.metadata["help"] else f" (default: {f.default})"
            names = (f"{flag(f.name)}/--no-{f.name.replace('_', '-')}",) if kind is bool else (flag(f.name),)
            option = typer.Option(*names, help=f.metadata["help"] + default)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[kind], option]))

        @functools.wraps(body)
        def command(**kwargs):
            given = {f.name: kwargs.pop(f.name) for f, _ in shown}
            body(given={k: v for k, v in given.items() if v is not None}, **kwargs)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {}  # typer reads the signature above
        del command.__wrapped__
        return app.command(name)(command)

    return register


def start(run_class, out: Path, resume: bool, given: dict):
    """The run behind a command: a new one from the given options over the defaults, or the saved one."""
    return run_class.resume(out, given) if resume else run_class.create(out, run_class.Options.from_dict(given))


def where(run) -> str:
    return ("resuming" if run.trainer.step else "training") + f" at step {run.trainer.step} of {run.trainer.config.steps}"


def train(run) -> None:
    """fit(run) behind a progress bar: the smoothed loss, speed and learning rate."""
    from genlab.training.run import fit

    smooth = None
    with step_progress("training", run.trainer.config.steps, start=run.trainer.step) as update:
        for s in fit(run):
            smooth = s.loss if smooth is None else 0.98 * smooth + 0.02 * s.loss
            update(s.step, f"loss {smooth:.4f} · {1 / s.seconds:.1f} it/s · lr {s.lr:.1e}")


@options_command("diffusion", opts.DiffusionOptions)
def diffusion(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/, log.jsonl and model/ (use it with genlab "
                                           "image --model).")] = Path("runs/diffusion"),
    resume: Resume = False,
    given: dict = None,
):
    """Train a class-conditional diffusion model (UNet, v-prediction, cosine schedule, EMA).

    Example: genlab train diffusion --data digits --steps 4000 --out runs/digits
    Then:    genlab image "a handwritten 7" --model runs/digits
    """
    from genlab.diffusion.train import DiffusionRun

    run = start(DiffusionRun, out, resume, given)
    c, n = run.model.config, sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.data.x)} images of {c.channels}x{c.resolution}x{c.resolution}, {c.num_classes or 'no'} classes "
                  f"· UNet {n / 1e6:.2f}M parameters · {c.prediction}-prediction, {c.schedule} schedule · {where(run)}")
    train(run)
    example = (c.class_names or ["anything"])[-1]
    console.print(f"model saved in {out / 'model'}; try: genlab image {example!r} --model {out}")


@options_command("vae", opts.VaeOptions)
def vae(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ (pictures over their reconstructions) and "
                                           "model/.")] = Path("runs/shapes-vae"),
    resume: Resume = False,
    given: dict = None,
):
    """Train the autoencoder of latent text-to-image: 32x32 shapes pictures <-> 8x8x4 latents.

    Step 1 of 2. Then: genlab train text2image --vae runs/shapes-vae
    """
    from genlab.diffusion.train_text2image import VaeRun

    run = start(VaeRun, out, resume, given)
    console.print(f"the shapes VAE ({sum(p.numel() for p in run.vae.parameters()) / 1e6:.2f}M parameters) · {where(run)}")
    train(run)
    console.print(f"VAE saved in {out / 'model'}; next: genlab train text2image --vae {out}")


@options_command("text2image", opts.Text2ImageOptions)
def text2image(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (use it with genlab image "
                                           "--model).")] = Path("runs/shapes"),
    resume: Resume = False,
    given: dict = None,
):
    """Train the text-conditioned latent UNet (frozen MiniLM text encoder, cross-attention, v-prediction).

    Step 2 of 2, after genlab train vae. Then: genlab image "a red circle above a blue square" --model runs/shapes
    """
    from genlab.diffusion.train_text2image import Text2ImageRun

    run = start(Text2ImageRun, out, resume, given)
    n = sum(p.numel() for p in run.model.denoiser().parameters())
    what = "UNet and prompt layout" if run.model.layout is not None else "UNet"
    console.print(f"the text-to-image {what} ({n / 1e6:.2f}M parameters) · {where(run)}; encoding {run.images} "
                  "captioned pictures first")
    with step_progress("encoding the pool", run.images) as update:
        run.prepare(lambda done: update(done, ""))
    if run.warm_steps:
        with step_progress("warming the layout", run.warm_steps) as update:
            run.warm_layout(lambda done, loss: update(done, f"layout loss {loss:.4f}"))
    train(run)
    console.print(f"model saved in {out / 'model'}; try: genlab image 'a red circle above a blue square' --model {out}")


@options_command("control", opts.ControlOptions)
def control(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (the base model with the branch "
                                           "in control/; use it with genlab image --model).")] = Path("runs/shapes-control"),
    resume: Resume = False,
    given: dict = None,
):
    """Train a ControlNet branch on a frozen text-to-image model: layouts (boxes) and sketches steer it.

    Example: genlab train control --out runs/shapes-control
    Then: genlab image --layout layout.json --model runs/shapes-control
    """
    from genlab.diffusion.control import ControlRun

    run = start(ControlRun, out, resume, given)
    n = sum(p.numel() for p in run.branch.parameters())
    console.print(f"a ControlNet branch ({n / 1e6:.2f}M parameters) on the frozen {run.options.base} · {where(run)}; "
                  f"rendering and encoding {run.options.images} layouts first")
    with step_progress("encoding the layouts", run.options.images) as update:
        run.prepare(lambda done: update(done, ""))
    train(run)
    console.print(f"model saved in {out / 'model'}; try: genlab image --layout examples/layouts/two.json --model {out}")


@options_command("gan", opts.GanOptions)
def gan(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/, log.jsonl (both losses per step) and "
                                           "model/.")] = Path("runs/gan"),
    resume: Resume = False,
    given: dict = None,
):
    """Train a class-conditional GAN (DCGAN generator, spectral-norm projection discriminator).

    One network evaluation per image, against diffusion's many. The losses of both players
    are logged at every step (log.jsonl), so instability shows.

    Example: genlab train gan --out runs/gan
    """
    from genlab.gan.train import GanRun

    run = start(GanRun, out, resume, given)
    g, d = (sum(p.numel() for p in net.parameters()) for net in (run.gan.generator, run.gan.discriminator))
    c = run.gan.config
    console.print(f"{len(run.data.x)} images of {c.channels}x{c.resolution}x{c.resolution} · generator {g / 1e6:.2f}M, "
                  f"discriminator {d / 1e6:.2f}M parameters · {c.loss} loss · {where(run)}")
    train(run)
    console.print(f"generator saved in {out / 'model'}; losses per step in {out / 'log.jsonl'}")


@options_command("ar-image", opts.ArImageOptions)
def ar_image(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/, log.jsonl and model/.")] = Path("runs/ar-image"),
    resume: Resume = False,
    given: dict = None,
):
    """Train an autoregressive image model (ImageGPT): a GPT over quantised pixels, one pixel per step.

    The same decoder as `genlab train lm`, over [class word, pixel 1..64]. It reports the
    exact held-out negative log-likelihood in bits per pixel.

    Example: genlab train ar-image --out runs/ar-image
    """
    from genlab.autoregressive.train_pixel_gpt import ArImageRun

    run = start(ArImageRun, out, resume, given)
    n, gpt = sum(p.numel() for p in run.gpt.model.parameters()), run.gpt
    console.print(f"{len(run.data.x)} images ({len(run.held_out.x)} held out) as {gpt.side * gpt.side} pixels of "
                  f"{gpt.levels} levels · GPT {n / 1e6:.2f}M parameters · {where(run)}")
    train(run)
    console.print(f"held-out NLL {run.held_out_bits():.3f} bits/dim; model saved in {out / 'model'}")


@options_command("lm", opts.LmOptions)
def lm(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (use it with genlab text "
                                           "--model).")] = Path("runs/lm"),
    resume: Resume = False,
    given: dict = None,
):
    """Train a small GPT (a Llama-shaped decoder) from scratch, with its own BPE tokenizer.

    Example: genlab train lm --data pydoc --steps 500 --out runs/lm
    Then:    genlab text "The for statement" --model runs/lm/model --raw
    """
    from genlab.autoregressive.train_lm import LmRun

    run = start(LmRun, out, resume, given)
    n = sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.train_ids):,} training tokens, {len(run.held_out_ids):,} held out · vocabulary "
                  f"{run.tokenizer.get_vocab_size()} · GPT {n / 1e6:.2f}M parameters · {where(run)}")
    train(run)
    console.print(f"held-out perplexity {run.held_out_perplexity():.2f}; model saved in {out / 'model'}; try: "
                  f"genlab text 'The for statement' --model {out / 'model'} --raw")


@options_command("draft", opts.DraftOptions)
def draft(
    out: Annotated[Path, typer.Option(help="Run folder: corpus.json (the target's replies), checkpoints/ and model/ "
                                           "(use it with genlab text --speculative draft --draft).")] = Path("runs/draft"),
    resume: Resume = False,
    given: dict = None,
):
    """Train a small draft model for speculative decoding, by distillation from a target model's own replies.

    Example: genlab train draft --out runs/draft
    Then:    genlab text "Rewrite this more simply: ..." --speculative draft --draft runs/draft/model
    """
    from genlab.autoregressive.draft import DraftRun

    run = start(DraftRun, out, resume, given)
    n = sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.train_ids):,} training tokens of {run.options.target}'s replies, {len(run.held_out_ids):,} "
                  f"held out · vocabulary {run.options.vocab_size} · GPT {n / 1e6:.2f}M parameters · {where(run)}")
    train(run)
    console.print(f"held-out agreement with the target {run.held_out_agreement():.3f}; model saved in {out / 'model'}; "
                  f"try: genlab text 'Rewrite this more simply: ...' --speculative draft --draft {out / 'model'}")


@options_command("diffusion-lm", opts.DiffusionLmOptions)
def diffusion_lm(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and model/ (load it with "
                                           "genlab.diffusion.masked_lm.DiffusionLm.load).")] = Path("runs/diffusion-lm"),
    resume: Resume = False,
    given: dict = None,
):
    """Train a masked-diffusion LM (MDLM): the GPT of `genlab train lm` made bidirectional, on the same data.

    Training masks each token with a random probability t and teaches the model to guess the masked ones;
    sampling starts from all MASKs and reveals tokens over a number of steps, in any order.

    Example: genlab train diffusion-lm --data pydoc --out runs/diffusion-lm
    It reports a held-out perplexity bound, comparable with `genlab train lm`'s held-out perplexity.
    """
    from genlab.diffusion.masked_lm import DiffusionLmRun

    run = start(DiffusionLmRun, out, resume, given)
    n = sum(p.numel() for p in run.model.parameters())
    console.print(f"{len(run.train_ids):,} training tokens, {len(run.held_out_ids):,} held out · vocabulary "
                  f"{run.tokenizer.get_vocab_size()} + MASK · diffusion LM {n / 1e6:.2f}M parameters · {where(run)}")
    train(run)
    console.print(f"held-out perplexity bound {run.held_out_perplexity_bound():.2f} (an upper bound); model saved in "
                  f"{out / 'model'}; samples in {out / 'samples'}")
