"""Typed training options: one dataclass per trainer, each field with its default, its range and its help.

    options = GanOptions(steps=500, lr=1e-4)          # checked at once: GanOptions(lr=inf) is an OptionError
    GanOptions.from_dict({"steps": 500})              # unknown keys are an error too

The dataclass is the one place a default lives: the CLI builds its flags, defaults and
help text from the fields (cli/train.py), and a run saves its options with every checkpoint,
so --resume restores all of them. Errors name fields ("steps must be at least 1") and carry
those names, so the CLI can show them as flags ("--steps") while Python callers never see "--".
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GenlabError
from ..registry import BUNDLED


class OptionError(GenlabError):
    """Bad option value; `fields` are the option names the message mentions, in order (or a phrase that
    starts with one, "layout 0", where the name's first mention is not the field)."""


def check_option(condition: bool, message: str, *fields: str) -> None:
    if not condition:
        raise OptionError(message, *fields)


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None, below: float | None = None,
           above: float | None = None, choices: tuple | None = None, path: tuple[str, ...] | None = None,
           on_resume: bool = False, cli: bool = True):
    """A field of an options dataclass. min/max are inclusive bounds, below/above exclusive ones;
    `path`: the value is a file or folder (made absolute, so --resume works from anywhere) unless it
    is one of these names; `on_resume`: a resumed run may change it; `cli=False` hides it from the CLI."""
    meta = dict(help=help, min=min, max=max, below=below, above=above, choices=choices, path=path, on_resume=on_resume, cli=cli)
    return field(default=default, metadata=meta)


def _range(m) -> str | None:
    """The accepted range in words, from a field's metadata."""
    lo, hi, below, above = m["min"], m["max"], m["below"], m["above"]
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    if lo is not None and below is not None:
        return f"in [{lo}, {below})"
    if above == 0:
        return "positive"
    if above is not None:
        return f"more than {above}"
    if lo is not None:
        return "0 or more" if lo == 0 else f"at least {lo}"
    return None


def _fits(v, m) -> bool:
    return ((m["min"] is None or v >= m["min"]) and (m["max"] is None or v <= m["max"])
            and (m["below"] is None or v < m["below"]) and (m["above"] is None or v > m["above"]))


def absolute(value, named: tuple[str, ...]):
    """A path option made absolute, unless it names a built-in (`digits`, `pydoc`, a bundled model)."""
    if value is None or value in named:
        return value
    return str(Path(value).expanduser().resolve())


@dataclass
class RunOptions:
    """What every training run has. A trainer's dataclass overrides the defaults that differ."""

    steps: int = option(1000, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(64, "Examples per step.", min=1)
    lr: float = option(1e-3, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    seed: int = option(0, "Seed for the initial weights and every random draw in training.", min=0)
    checkpoint_every: int = option(500, "Save a checkpoint and the model every N steps.", min=1, on_resume=True)
    sample_every: int = option(500, "Save samples every N steps; 0 = never.", min=0, on_resume=True)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            m, v = f.metadata, getattr(self, f.name)
            if m.get("path") is not None:
                setattr(self, f.name, absolute(v, m["path"]))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                check_option(math.isfinite(v), f"{f.name} must be a finite number, got {v}", f.name)
                what = _range(m)
                check_option(what is None or _fits(v, m), f"{f.name} must be {what}, got {v}", f.name)
            if m.get("choices") and v is not None:
                names = [str(c) for c in m["choices"]]
                check_option(v in m["choices"], f"{f.name} must be {', '.join(names[:-1])} or {names[-1]}, got {v!r}", f.name)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; a trainer's options override it."""

    @classmethod
    def from_dict(cls, values: dict) -> "RunOptions":
        """Options from a dict (a saved checkpoint's, a caller's); a key that is not a field is an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        check_option(not unknown, f"unknown option(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(names)}")
        return cls(**values)

    def resumed_with(self, given: dict, done: int) -> "RunOptions":
        """These (saved) options, with the ones a user gave again on resume. Only on_resume fields may
        change (steps only to a larger total); any other must match, or the run could not continue bit for bit."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes = {}
        for key, value in given.items():
            check_option(key in fields, f"unknown option {key}; {type(self).__name__} has {', '.join(fields)}")
            f = fields[key]
            if f.metadata.get("path") is not None:
                value = absolute(value, f.metadata["path"])
            if f.metadata.get("on_resume"):
                changes[key] = value
            else:
                saved = getattr(self, key)
                check_option(saved == value, f"resume continues the run as it was saved: {key} is {saved!r} there, "
                                             f"not {value!r}; drop the option or start a new run", "resume", key)
        steps = changes.get("steps")
        check_option(steps is None or steps > done, f"steps must be more than the {done} steps already done, got {steps}", "steps")
        return dataclasses.replace(self, **changes)


def cli_fields(cls: type[RunOptions]) -> list[tuple[dataclasses.Field, Any]]:
    """(field, its type without None) for each option the CLI shows: the trainer's own first, then the common ones."""
    hints, common = typing.get_type_hints(cls), [f.name for f in dataclasses.fields(RunOptions)]
    shown = []
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in common):
        if f.metadata.get("cli", True):
            kind = hints[f.name]
            if typing.get_origin(kind) in (typing.Union, types.UnionType):  # int | None -> int
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            shown.append((f, kind))
    return shown


# --- one dataclass per trainer ----------------------------------------------------------------------
# Defaults are the recipes of the bundled models (src/genlab/weights/*/README.md, docs/models.md).

IMAGE_DATA = "'digits' (scikit-learn's handwritten digits) or a folder of images; subfolder names become class labels."
SEED = "Seed for the initial weights and every random draw in training."


@dataclass
class DiffusionOptions(RunOptions):
    """`genlab train diffusion`: a class-conditional UNet. The bundled digits model adds resolution=8, upsample=2, steps=7000."""

    data: str = option("digits", IMAGE_DATA, path=("digits",))
    steps: int = option(4000, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(128, "Images per step.", min=1)
    lr: float = option(2e-3, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    warmup: int = option(200, "Steps of linear learning-rate warm-up before the cosine decay.", min=0)
    resolution: int | None = option(None, "Resize images to N x N (digits: default 16; folders: required when sizes differ).")
    prediction: str = option("v", "Training target: v (velocity, Salimans & Ho 2022) or eps (the noise, DDPM).")
    schedule: str = option("cosine", "Forward process: cosine (Nichol & Dhariwal 2021), linear (DDPM) or flow (rectified "
                                     "flow: the model learns the velocity eps - x0; sample with euler or heun).")
    dropout: float = option(0.0, "Dropout in the UNet's residual blocks while training: regularises small datasets.",
                            min=0, below=1)
    upsample: int = option(1, "Show the model's samples this many times larger, enlarged bilinearly: --resolution 8 "
                              "--upsample 2 denoises the digits at their native 8x8 and draws 16x16, as the bundled model does.")
    backbone: str = option("unet", "The denoising network: unet (diffusers' UNet2DModel) or dit (a transformer on patches with "
                                   "adaLN-Zero conditioning, Peebles & Xie 2023).", choices=("unet", "dit"))
    widths: tuple[int, ...] | None = option(None, "The UNet's channels per level; None: DiffusionConfig's.", cli=False)
    attention_levels: tuple[int, ...] | None = option(None, "Levels with self-attention; None: DiffusionConfig's.", cli=False)
    dit: tuple[int, ...] | None = option(None, "The DiT's patch size, width, depth and heads; None: DiffusionConfig's.", cli=False)
    sample_every: int = option(500, "Save a grid of samples every N steps; 0 = never.", min=0, on_resume=True)

    def validate(self):
        check_option(self.dropout == 0 or self.backbone == "unet", f"dropout is the UNet's (in its residual blocks); "
                     f"the DiT has none, so give dropout 0 with backbone dit, got {self.dropout}", "dropout", "backbone")


@dataclass
class DistillOptions(RunOptions):
    """`genlab distill`: a few-step student of a diffusion model, by rectified-flow reflow (diffusion/distill.py)."""

    teacher: str = option("digits", "The diffusion model to distill: a bundled name (digits, shapes) or a model folder.",
                          path=tuple(BUNDLED))
    pairs: int = option(30000, "Noise/image pairs the teacher draws to learn from (about 100 a second for digits on 2 cores).",
                        min=16)
    teacher_steps: int = option(20, "The teacher's sampling steps for each pair.", min=1, max=1000)
    teacher_sampler: str = option("dpmpp", "The teacher's sampler: a deterministic one, so each noise has one image.",
                                  choices=("dpmpp", "ddim", "euler", "heun"))
    guidance: float | None = option(None, "The teacher's classifier-free guidance scale, distilled into the student "
                                          "(default: the teacher's own).", min=0, max=50)
    student_steps: int = option(4, "The student's default sampling steps (it is trained for 1, 2 and 4, and any count works).",
                                min=1, max=64)
    steps: int = option(6000, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(128, "Pairs per step.", min=1)
    lr: float = option(3e-4, "Peak learning rate (AdamW, warm-up then cosine decay; the student starts from the teacher's "
                             "weights).", above=0)
    warmup: int = option(100, "Steps of linear learning-rate warm-up before the cosine decay.", min=0)
    seed: int = option(0, "Seed for the pairs' noise and every batch drawn.", min=0)


@dataclass
class VaeOptions(RunOptions):
    """`genlab train vae`: the shapes world's autoencoder, step 1 of latent text-to-image."""

    steps: int = option(2000, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(32, "Pictures per step.", min=1)
    lr: float = option(1e-3, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    seed: int = option(0, "Seed for the initial weights and the pictures drawn.", min=0)
    sample_every: int = option(500, "Save reconstructions every N steps; 0 = never.", min=0, on_resume=True)


@dataclass
class Text2ImageOptions(RunOptions):
    """`genlab train text2image`: the latent UNet and its prompt layout, step 2 of 2."""

    vae: str = option("runs/shapes-vae", "The trained VAE: a `genlab train vae` --out folder, or `shapes` for the bundled "
                                         "shapes model's.", path=("shapes",))
    images: int = option(20000, "Captioned pictures in the training pool, encoded once at the start.", min=1)
    layout: int = option(8, "Channels of the prompt layout, a map of what the prompt puts where, read by the UNet next to "
                            "the latent (diffusion/text2image.py); the first 4 learn to guess the latent picture; it makes "
                            "relations work (docs/benchmarks.md). 0 = none, a plain Stable Diffusion UNet.")
    layout_warmup: int = option(1500, "Steps in which a new layout learns its guess of the picture by itself, before the "
                                      "UNet's first step (about a minute for the default).")
    layout_classes: bool | None = option(None, "A semantic layout: it also learns which colour, shape and size covers each "
                                               "latent position (the shapes world's ground truth), and the UNet reads those "
                                               "probabilities. (default: yes, with a layout)")
    backbone: str = option("unet", "The denoising network: unet (diffusers' UNet2DConditionModel) or dit (a transformer on "
                                   "the latent's positions, cross-attention to the prompt, adaLN-Zero; Peebles & Xie 2023).",
                           choices=("unet", "dit"))
    steps: int = option(4000, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(64, "Pictures per step.", min=1)
    seed: int = option(0, "Seed for the initial weights, the pool and every draw.", min=0)
    sample_every: int = option(500, "Save a grid of samples every N steps; 0 = never.", min=0, on_resume=True)

    def validate(self):
        check_option(self.layout == 0 or self.layout >= 4, "layout must be 0 (none) or at least 4 channels (the first 4 "
                     f"guess the latent picture), got {self.layout}", "layout")
        check_option(self.layout_warmup >= 0, f"layout_warmup must be 0 or more steps, got {self.layout_warmup}", "layout_warmup")
        check_option(self.layout or not self.layout_classes, "layout_classes needs a layout: drop layout 0, or give it 4 "
                     "channels or more", "layout_classes", "layout 0")
        if self.layout_classes is None:
            self.layout_classes = self.layout > 0


@dataclass
class ControlOptions(RunOptions):
    """`genlab train control`: a ControlNet branch on a frozen text-to-image model, for layouts and sketches."""

    base: str = option("shapes", "The frozen text-to-image model the branch learns to steer: `shapes` (bundled) or a "
                                 "genlab train text2image folder.", path=("shapes",))
    images: int = option(12000, "Random layouts in the training pool, rendered and encoded once at the start.", min=1)
    steps: int = option(2000, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(64, "Layouts per step.", min=1)
    lr: float = option(2e-4, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    seed: int = option(0, "Seed for the branch's new layers, the pool and every draw.", min=0)
    sample_every: int = option(500, "Save a grid of held-out layouts and their samples every N steps; 0 = never.", min=0,
                               on_resume=True)


@dataclass
class GanOptions(RunOptions):
    """`genlab train gan`: DCGAN generator against a spectral-norm projection discriminator (the bundled digits-gan)."""

    data: str = option("digits", IMAGE_DATA, path=("digits",))
    resolution: int | None = option(None, "Image side, a power of two (digits: default 16, as the diffusion model).")
    latent: int = option(64, "Length of the noise vector z.")
    width: int = option(64, "Channels of the largest feature maps.")
    loss: str = option("hinge", "hinge, or non-saturating (the original GAN loss with -log D for G).",
                       choices=("hinge", "non-saturating"))
    steps: int = option(2000, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(64, "Real images per step.", min=1)
    lr: float = option(2e-4, "The generator's peak learning rate (Adam, beta1 0.5).", above=0)
    d_lr_scale: float = option(1.0, "The discriminator's learning rate over the generator's (TTUR).", above=0)
    mode_seeking: float = option(0.3, "Weight of the mode-seeking term: G pays when two noises give the same image (0 = off).",
                                 min=0)
    ema: float = option(0.999, "EMA decay of the weights that model/ keeps; 0 keeps the last weights.", min=0, below=1)
    sample_every: int = option(500, "Save a grid of samples every N steps; 0 = never.", min=0, on_resume=True)

    def validate(self):
        check_option(self.width >= 1 and self.latent >= 1,
                     f"width and latent must be at least 1, got {self.width} and {self.latent}", "width", "latent")


@dataclass
class ArImageOptions(RunOptions):
    """`genlab train ar-image`: a GPT over quantised pixels (the bundled digits-ar)."""

    data: str = option("digits", "'digits' or a folder of greyscale images (subfolders become classes).", path=("digits",))
    resolution: int = option(8, "Image side; the sequence is side x side pixels (8: the digits' own).", min=4, max=32)
    levels: int = option(17, "Grey levels each pixel is quantised to (the vocabulary; 17 is lossless for the digits).",
                         min=2, max=256)
    width: int = option(128, "Model width.", min=1)
    layers: int = option(4, "Transformer blocks.", min=1)
    heads: int = option(4, "Attention heads.", min=1)
    steps: int = option(500, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(64, "Images per step.", min=1)
    lr: float = option(2e-3, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    ema: float = option(0.999, "EMA decay of the weights model/ keeps; 0 keeps the last weights.", min=0, below=1)
    sample_every: int = option(500, "Save samples and held-out bits/dim every N steps; 0 = never.", min=0, on_resume=True)


TEXT_DATA = "'pydoc' (Python's own documentation, shipped with Python) or a UTF-8 text file; the last tenth is held out."


@dataclass
class LmOptions(RunOptions):
    """`genlab train lm`: a Llama-shaped GPT with its own BPE tokenizer (the bundled pydoc-gpt)."""

    data: str = option("pydoc", TEXT_DATA, path=("pydoc",))
    vocab_size: int = option(4096, "BPE vocabulary trained on the data.", min=257, max=65536)
    context: int = option(128, "Tokens per training window (and the model's context).", min=8)
    width: int = option(256, "Model width.")
    layers: int = option(4, "Transformer blocks.")
    heads: int = option(4, "Attention heads.")
    steps: int = option(500, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(16, "Windows per step.", min=1)
    lr: float = option(3e-3, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    seed: int = option(0, "Seed for the initial weights and every window drawn.", min=0)
    sample_every: int = option(500, "Write sample texts and perplexity every N steps; 0 = never.", min=0, on_resume=True)


@dataclass
class DraftOptions(RunOptions):
    """`genlab train draft`: a small GPT that guesses what a target model writes, for speculative decoding."""

    target: str = option("smollm2-135m-instruct", "The model whose replies the draft learns to guess (a bundled name or a model folder).")
    prompts: int = option(320, "Prompts (built from Python's documentation) the target answers to make the training text.", min=8)
    reply_tokens: int = option(128, "Tokens of each of the target's replies.", min=8, max=1024)
    vocab_size: int = option(4096, "The draft's vocabulary: the target's most frequent ids, plus one for all the others.", min=16, max=65536)
    context: int = option(128, "Tokens per training window.", min=8)
    width: int = option(256, "Model width.")
    layers: int = option(2, "Transformer blocks.")
    heads: int = option(4, "Attention heads.")
    steps: int = option(500, "Optimizer steps in total (more overfits the default 60k tokens); with --resume, a larger total extends the run.", min=1, on_resume=True)
    batch_size: int = option(32, "Windows per step.", min=1)
    lr: float = option(3e-3, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    seed: int = option(0, "Seed for the initial weights and every window drawn.", min=0)
    sample_every: int = option(500, "Report the held-out agreement with the target every N steps; 0 = never.", min=0, on_resume=True)


@dataclass
class DiffusionLmOptions(LmOptions):
    """`genlab train diffusion-lm`: lm's GPT made bidirectional, trained as a masked-diffusion LM (the bundled pydoc-mdlm)."""

    steps: int = option(2000, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    seed: int = option(0, "Seed for the initial weights and every window, t and mask drawn.", min=0)
    checkpoint_every: int = option(250, "Save a checkpoint and the model every N steps.", min=1, on_resume=True)
    sample_every: int = option(250, "Write sample texts and the perplexity bound every N steps; 0 = never.", min=0,
                               on_resume=True)


@dataclass
class LoraOptions(RunOptions):
    """What both LoRA fine-tunes share; the base stays frozen."""

    rank: int = option(8, "LoRA rank r: the size of the low-rank update.")
    alpha: float | None = option(None, "LoRA alpha: the update is scaled by alpha / r. (default: 2 x rank)", above=0)
    targets: str = option("all-linear", "Layers to adapt: all-linear, or names such as q_proj,v_proj (an unknown name "
                                        "lists the valid ones).")
    seed: int = option(0, "Seed for the adapter's initial weights and every draw.", min=0)
    checkpoint_every: int = option(100, "Save a checkpoint and the adapter every N steps.", min=1, on_resume=True)
    sample_every: int = option(100, "Write sample answers every N steps; 0 = never.", min=0, on_resume=True)


@dataclass
class TextLoraOptions(LoraOptions):
    """`genlab finetune text`: plain text, or JSONL chat where the loss falls on the assistant replies."""

    data: str | None = option(None, "Training data: plain text (learn to continue it), or .jsonl with one "
                                    '{"messages": [...]} per line (learn the assistant replies).', path=())
    model: str = option("smollm2-135m-instruct", "Base model: bundled name, .gguf, HF folder or hub id.")
    dropout: float = option(0.05, "Dropout on the adapter's input while training.", min=0, below=1)
    epochs: float = option(3.0, "Passes over the data (sets steps).", above=0)
    steps: int | None = option(None, "Optimizer steps in total (instead of --epochs); with --resume, a larger total extends "
                                     "the run.", min=1, on_resume=True)
    lr: float = option(1e-3, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    batch_size: int = option(8, "Examples per step.", min=1)
    max_length: int = option(512, "Tokens per example: plain text is cut into windows this long; a longer conversation "
                                  "is an error.", min=2)
    eval: str | None = option(None, "Held-out data in the same format: its loss is reported before and after.", path=())

    def validate(self):
        check_option(self.data is not None, "data is required: a plain-text file or a .jsonl file of chat messages", "data")


@dataclass
class ImageLoraOptions(LoraOptions):
    """`genlab finetune image`: the same denoising loss as training from scratch, on a new style."""

    data: str | None = option(None, "'digits' or a folder of images, one subfolder per class named as the model's classes "
                                    "('0'..'9' for digits).", path=("digits",))
    model: str = option("digits", "Base diffusion model: digits or a `genlab train diffusion` folder.")
    dropout: float = option(0.0, "Dropout on the adapter's input while training.", min=0, below=1)
    targets: str = option("all-linear", "Layers to adapt: all-linear (attention and linear layers), names such as "
                                        "to_q,to_v, or convolutions too: all-linear,conv1,conv2.")
    steps: int = option(600, "Optimizer steps in total; with --resume, a larger total extends the run.", min=1, on_resume=True)
    lr: float = option(1e-3, "Peak learning rate (AdamW, warm-up then cosine decay).", above=0)
    batch_size: int = option(64, "Images per step.", min=1)
    checkpoint_every: int = option(200, "Save a checkpoint and the adapter every N steps.", min=1, on_resume=True)
    sample_every: int = option(200, "Save a grid of samples every N steps; 0 = never.", min=0, on_resume=True)

    def validate(self):
        check_option(self.data is not None, "data is required: 'digits' or a folder of images in class subfolders", "data")
