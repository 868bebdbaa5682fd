"""ImageGenerator: the Python API for images, and what `genlab image` calls.

    from genlab import ImageGenerator
    gen = ImageGenerator()                             # the bundled digits model
    [img] = gen.generate("a handwritten 7", steps=20, seed=0)
    img.save("seven.png")

It joins the pieces: the prompt picks a class, classifier-free guidance mixes the
conditional and unconditional predictions, and a sampler from samplers.py walks from
noise (or from a noised init image, for img2img) to a picture. `--model FOLDER` may also
be a diffusers pipeline (e.g. Stable Diffusion); diffusers_pipeline.py runs that.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import check
from ..store import bundled_weights, weights_folder
from .canvas import open_image, read_image, read_mask, to_pil
from .denoiser import parse_prompt  # noqa: F401  (part of this module's API)
from .samplers import SAMPLERS, SampleStep, check_sampler, make_plan

# Models trained by genlab and shipped in src/genlab/weights/ (see docs/models.md), by name.
BUNDLED = {"digits": "digits-diffusion", "shapes": "shapes-text2image"}
DEFAULT_MODEL = "digits"
# How the bundled digits model was trained: `genlab train diffusion`'s options that differ from its defaults
DIGITS_OPTIONS = {"resolution": 8, "upsample": 2, "steps": 7000}
TRAIN_COMMANDS = {"digits": " ".join(["genlab train diffusion"] + [f"--{k} {v}" for k, v in DIGITS_OPTIONS.items()] + ["--out runs/digits"]),
                  "shapes": "genlab train vae, then genlab train text2image"}  # what rebuilds each bundled model


def pick_model(prompt: str) -> str:
    """The bundled model `genlab image` uses without --model: digits for a prompt that names a
    digit ("7", "seven", "a handwritten 7") and no shape, the shapes text-to-image model otherwise."""
    from .data import DIGIT_WORDS
    from .shapes import SHAPES

    words = set(re.findall(r"[a-z0-9]+", prompt.lower()))
    names_shape = any(s in words or s + "s" in words for s in SHAPES)
    names_digit = bool(words & (set(DIGIT_WORDS) | set("0123456789")))
    shapes_bundled = _weights_folder("shapes").is_dir()
    return "digits" if (names_digit and not names_shape) or not shapes_bundled else "shapes"


def _weights_folder(name: str) -> Path:
    return weights_folder(BUNDLED[name])


def bundled_folder(name: str = DEFAULT_MODEL) -> Path:
    return bundled_weights(BUNDLED[name], TRAIN_COMMANDS.get(name, "genlab train"))


@dataclass
class ImageRequest:
    prompt: str
    n: int = 1
    sampler: str | None = None  # None: the model's default (genlab.json's "sampler"; else dpmpp, euler for rectified flow)
    steps: int | None = None  # None: the model's default (genlab.json's "sampling_steps"; 20 for a diffusers pipeline)
    guidance: float | None = None  # classifier-free guidance scale: 1 = off, 0 = ignore the prompt; None: the model's
    negative_prompt: str | None = None
    seed: int | None = None
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 as noisy as DDPM
    init_image: str | None = None  # img2img: start from this picture, noised to `strength`
    strength: float = 0.75
    mask: str | None = None  # inpainting: white pixels are repainted, black ones kept from init_image
    trajectory_frames: int = 0  # keep this many evenly spaced x_t for a denoising strip

    def __post_init__(self):
        check(isinstance(self.prompt, str) and self.prompt.strip() != "",
              "the prompt is empty; describe the picture, e.g. 'a red circle above a blue square' or 'a handwritten 7'")
        check(self.steps is None or self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        check(self.guidance is None or self.guidance >= 0, f"--guidance must be 0 or more, got {self.guidance}")
        check(self.n >= 1, f"-n must be at least 1, got {self.n}")
        check(0 <= self.strength <= 1, f"--strength must be between 0 and 1, got {self.strength}")
        check(self.eta >= 0, f"--eta must be 0 or more, got {self.eta}")
        check_sampler(self.sampler)
        check(self.mask is None or self.init_image is not None, "--mask needs --init-image: the picture to inpaint")
        if self.seed is None:
            self.seed = int(torch.randint(0, 2**31 - 1, ()).item())
        check(0 <= self.seed < 2**63, f"--seed must be between 0 and 2^63 - 1, got {self.seed}")


@dataclass
class ImageResult:
    images: list  # PIL images
    seed: int
    seconds: float
    model_calls: int  # denoiser evaluations per image batch (CFG doubles the batch, not the calls)
    trajectory: list = field(default_factory=list)  # PIL images of x_t, for --trajectory

    @property
    def steps_per_s(self) -> float:
        return self.model_calls / self.seconds

    @property
    def s_per_image(self) -> float:
        return self.seconds / len(self.images)


class ImageGenerator:
    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto", adapter: str | None = None,
                 adapter_scale: float = 1.0):
        """`adapter`: a LoRA adapter folder (genlab finetune image), merged into the UNet with weight `adapter_scale`."""
        from ..text.engine import resolve_device

        self.device = resolve_device(device)
        start = time.perf_counter()
        spec = model or DEFAULT_MODEL
        self.folder = folder = self.folder_of(spec)
        check(dtype in ("auto", "float32", "float16", "bfloat16"), f"--dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
        # auto: float16 on a GPU, float32 on a CPU (where float16 convolutions are slow)
        self.dtype = getattr(torch, dtype) if dtype != "auto" else torch.float16 if self.device.type == "cuda" else torch.float32
        from .text2image import is_text2image, load_text2image

        if is_text2image(folder):  # genlab's latent text-to-image model (a diffusers folder too, minus the text encoder)
            self.pipeline = None
            self._use(load_text2image(folder, self.device, self.dtype))
        elif (folder / "model_index.json").is_file():
            from .diffusers_pipeline import DiffusersPipeline

            self.pipeline, self.model = DiffusersPipeline(folder, self.device, self.dtype), None
        else:
            from .denoiser import load_model

            self.pipeline = None
            self._use(load_model(folder, self.device, self.dtype))
        if adapter:
            self._merge(spec, adapter, adapter_scale)
        self.load_s = time.perf_counter() - start

    @staticmethod
    def folder_of(spec: str) -> Path:
        """The folder behind --model: a bundled name, a model folder, or the --out folder of a training run."""
        if spec in BUNDLED:
            return bundled_folder(spec)
        folder = Path(spec).expanduser()
        check(folder.is_dir(), f"--model must be {' or '.join(map(repr, BUNDLED))}, a genlab model folder or a diffusers "
              f"pipeline folder; {spec!r} is not a folder")
        if (folder / "model").is_dir() and not (folder / "genlab.json").exists():
            folder = folder / "model"  # the --out folder of `genlab train diffusion`
        return folder

    def _merge(self, spec: str, folder: str, scale: float) -> None:
        """LoRA: W + scale (alpha/r) B A in every adapted layer of the UNet (genlab/lora.py)."""
        from ..lora import Adapter, merge_into

        check(self.pipeline is None, "--adapter works with genlab's own models; a diffusers pipeline loads LoRA itself")
        check(0 <= scale <= 4, f"--adapter-scale must be between 0 and 4, got {scale}")
        lora = Adapter.for_model(folder, spec)
        unet = self.model.unet
        unet.load_state_dict(merge_into(unet.state_dict(), lora, scale))

    @classmethod
    def from_model(cls, model) -> "ImageGenerator":
        """Wrap a Denoiser or TextToImage already in memory (e.g. the EMA weights during training)."""
        gen = cls.__new__(cls)
        gen.device, gen.dtype, gen.folder, gen.load_s, gen.pipeline = next(model.parameters()).device, torch.float32, None, 0.0, None
        gen._use(model.eval())
        return gen

    def _use(self, model) -> None:
        self.model, self.config, self.schedule = model, model.config, model.config.noise_schedule()

    def generate(self, prompt: str, **options) -> list:
        """PIL images for `prompt`; options are ImageRequest's fields (steps, seed, sampler, ...)."""
        return self.run(ImageRequest(prompt, **options)).images

    def run(self, request: ImageRequest, on_step=None) -> ImageResult:
        """Generate, calling on_step(SampleStep) after each step (for progress bars and previews)."""
        if self.pipeline is not None:
            return self.pipeline.run(self.filled(request), on_step)
        start = time.perf_counter()
        frames, step = [], None
        for step in self.stream(request):
            if step.index > 0 and on_step:
                on_step(step)
            if step.index in _frame_indices(step.total, request.trajectory_frames):
                frames.append(step.xt[:1])
        return ImageResult(self.pictures(step.xt), request.seed, time.perf_counter() - start, step.calls,
                           self.pictures(torch.cat(frames)) if frames else [])

    @torch.inference_mode()
    def pictures(self, x: torch.Tensor) -> list:
        """PIL images from samples in the model's space (pixels, or latents through the VAE)."""
        return to_pil(self.model.decode(x))

    @torch.inference_mode()
    def stream(self, request: ImageRequest) -> Iterator[SampleStep]:
        """The sampling loop itself: yields the starting x_T as step 0, then each step's x_t."""
        request = self.filled(request)
        m, n, sampler = self.model, request.n, request.sampler
        cond = m.condition(request.prompt, n)
        uncond = m.condition(request.negative_prompt, n) if request.negative_prompt else m.null_condition(n)
        denoise = guided(m, cond, uncond, self.guidance(request), self.dtype)
        plan = make_plan(sampler, self.schedule, request.steps, self.config.prediction)
        # all randomness comes from one CPU generator: the same seed starts from the same noise on any device
        g = torch.Generator().manual_seed(request.seed)
        noise = torch.randn((n, *m.sample_shape), generator=g).to(self.device)
        x, keep = noise, None
        if request.init_image:
            init = m.encode(self._init(request).to(self.device)).float()  # pixels -> the model's space
            plan = plan.skip(request.strength)
            if len(plan.timesteps) == 0:  # strength 0: nothing to do
                yield SampleStep(0, 0, 0.0, 0.0, init.expand_as(noise), init.expand_as(noise))
                return
            x = plan.noised(init, noise, float(plan.sigmas[0]))  # SDEdit: noise the init image to the starting level
            if request.mask:
                keep = _keep_known(plan, init, m.mask_to_sample(self._mask(request).to(self.device)), noise)
        total, calls = len(plan.timesteps), [0]
        yield SampleStep(0, total, float(plan.timesteps[0]), float(plan.sigmas[0]), x, x)

        def counted(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            return denoise(xt, t)

        for step in SAMPLERS[sampler](counted, x, plan, generator=g, keep=keep, eta=request.eta):
            step.calls = calls[0]
            yield step

    @torch.inference_mode()
    def class_samples(self, labels: torch.Tensor, steps: int = 20, sampler: str | None = None, guidance: float | None = None,
                      seed: int = 0, batch: int = 500) -> tuple[torch.Tensor, int]:
        """Many class-conditional samples at once, for evaluation: the loop of stream(), batched over
        `labels` (indices into the model's classes). Returns (N, C, H, W) images in [-1, 1] and the
        network evaluations per image (Heun skips some corrections, so it is not always 2 x steps)."""
        c, out, calls = self.config, [], [0]
        sampler = sampler or self.default_sampler
        guidance = self.config.guidance if guidance is None else guidance
        g = torch.Generator().manual_seed(seed)
        plan = make_plan(sampler, self.schedule, steps, c.prediction)
        for chunk in labels.split(batch):
            x = torch.randn((len(chunk), *self.model.sample_shape), generator=g)
            denoise = guided(self.model, {"labels": chunk}, self.model.null_condition(len(chunk)), guidance, self.dtype)

            def counted(xt, t):
                calls[0] += 1
                return denoise(xt, t)

            for step in SAMPLERS[sampler](counted, x, plan, generator=g):
                x = step.xt
            out.append(self.model.decode(x).float())
        return torch.cat(out), calls[0] // len(labels.split(batch))

    def filled(self, request: ImageRequest) -> ImageRequest:
        """The request with the model's own sampler and steps where it leaves them open (None)."""
        return dataclasses.replace(request, sampler=request.sampler or self.default_sampler,
                                   steps=request.steps or self.default_steps)

    def guidance(self, request: ImageRequest) -> float:
        """The request's guidance scale, or the model's own default (genlab.json's "guidance")."""
        return request.guidance if request.guidance is not None else self.config.guidance

    @property
    def default_sampler(self) -> str | None:
        """The model's own (genlab.json's "sampler"), else dpmpp, euler for rectified flow; None for
        a diffusers pipeline (it keeps its own scheduler)."""
        if self.model is None:
            return None
        return self.config.sampler or ("euler" if self.config.schedule == "flow" else "dpmpp")

    @property
    def default_steps(self) -> int:
        """The model's own (genlab.json's "sampling_steps"); 20 for a diffusers pipeline."""
        return 20 if self.model is None else self.config.sampling_steps

    def _init(self, request: ImageRequest) -> torch.Tensor:  # (1, C, H, W)
        channels, size, _ = self.model.pixel_shape
        return read_image(request.init_image, size, channels)

    def _mask(self, request: ImageRequest) -> torch.Tensor:
        want, got = open_image(request.init_image, "--init-image").size, open_image(request.mask, "--mask").size
        check(want == got, f"--mask is {got[0]}x{got[1]} but --init-image is {want[0]}x{want[1]}; they must match")
        return read_mask(request.mask, self.model.pixel_shape[1])


def guided(model, cond: dict, uncond: dict, guidance: float, dtype=torch.float32):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): out = uncond + w (cond - uncond).
    `cond` and `uncond` are the model's keyword inputs for the prompt and for the negative or
    empty prompt (class labels, or text-encoder states); the two halves run as one batch of 2B."""

    def denoise(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xt_in = xt.to(dtype)
        if not cond or guidance == 1:  # an unconditional model, or guidance off
            return model(xt_in, t, **cond).float()
        if guidance == 0:
            return model(xt_in, t, **uncond).float()
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        out = model(torch.cat([xt_in, xt_in]), torch.cat([t, t]), **both).float()
        c, u = out.chunk(2)  # (B, C, H, W) each
        return u + guidance * (c - u)

    return denoise


def _keep_known(plan, init: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor):
    """Inpainting: after every step, put back the pixels to keep, noised to the current level."""

    def keep(xt: torch.Tensor, level: float) -> torch.Tensor:
        return mask * xt + (1 - mask) * plan.noised(init, noise, level)

    return keep


def _frame_indices(steps: int, frames: int) -> set[int]:
    """Which of steps 0..steps (0 = the starting noise) to keep for `frames` evenly spaced frames."""
    if frames <= 1:
        return {steps} if frames == 1 else set()
    return {round(i * steps / (frames - 1)) for i in range(frames)}
