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

import torch

from ..errors import check
from .canvas import open_image, read_image, read_mask, to_pil
from ..diffusion.denoiser import parse_prompt  # noqa: F401  (part of this module's API)
from .request import ImageRequest, ImageResult, frame_indices  # noqa: F401  (ImageRequest is part of this module's API)
from ..diffusion.samplers import SAMPLERS, SampleStep, make_plan

# How the bundled digits model was trained: `genlab train diffusion`'s options that differ from its defaults
DIGITS_OPTIONS = {"resolution": 8, "upsample": 2, "steps": 7000}
TRAIN_COMMANDS = {"digits": " ".join(["genlab train diffusion"] + [f"--{k} {v}" for k, v in DIGITS_OPTIONS.items()] + ["--out runs/digits"]),
                  "shapes": "genlab train vae, then genlab train text2image"}  # what rebuilds each bundled model


def pick_model(prompt: str) -> str:
    """The bundled model `genlab image` uses without --model: digits for a prompt that names a
    digit ("7", "seven", "a handwritten 7") and no shape, the shapes text-to-image model otherwise."""
    from ..data.digits import DIGIT_WORDS
    from ..data.shapes import SHAPES

    words = set(re.findall(r"[a-z0-9]+", prompt.lower()))
    names_shape = any(s in words or s + "s" in words for s in SHAPES)
    names_digit = bool(words & (set(DIGIT_WORDS) | set("0123456789")))
    from ..registry import BUNDLED
    from ..store import weights_folder

    shapes_bundled = weights_folder(BUNDLED["shapes"].folder).is_dir()
    return "digits" if (names_digit and not names_shape) or not shapes_bundled else "shapes"


class ImageGenerator:
    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto", adapter: str | None = None,
                 adapter_scale: float = 1.0):
        """`model`: a bundled name (`genlab models`), a model folder or a run's --out folder; default digits.
        `adapter`: a LoRA adapter folder (genlab finetune image), merged into the UNet with weight `adapter_scale`."""
        from ..registry import DEFAULT_IMAGE_MODEL, locate
        from ..text.engine import resolve_device

        self.device = resolve_device(device)
        start = time.perf_counter()
        spec = model or DEFAULT_IMAGE_MODEL
        ref = locate(spec, "image")
        self.name, self.kind, self.folder = ref.name, ref.kind, ref.path
        folder, self.drawer = ref.path, None
        check(dtype in ("auto", "float32", "float16", "bfloat16"), f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}", "dtype")
        # auto: float16 on a GPU, float32 on a CPU (where float16 convolutions are slow)
        self.dtype = getattr(torch, dtype) if dtype != "auto" else torch.float16 if self.device.type == "cuda" else torch.float32
        from ..diffusion.text2image import load_text2image

        if self.kind.name == "text2image":  # genlab's latent text-to-image model (a diffusers folder too, minus the text encoder)
            self.pipeline = None
            self._use(load_text2image(folder, self.device, self.dtype))
        elif self.kind.name == "diffusers-pipeline":
            from ..diffusion.diffusers_pipeline import DiffusersPipeline

            self.pipeline, self.model = DiffusersPipeline(folder, self.device, self.dtype), None
        elif self.kind.name in ("gan", "ar-image"):  # no denoising: drawers.py gives them the same stream of steps
            from .drawers import load_drawer

            self.pipeline, self.model, self.config = None, None, None
            self.drawer = load_drawer(self.kind.name, folder)
        else:
            from ..diffusion.denoiser import load_model

            self.pipeline = None
            self._use(load_model(folder, self.device, self.dtype))
        self.adapter, self.adapter_scale = adapter and str(adapter), adapter_scale  # for receipts.py
        if adapter:
            self._merge(spec, adapter, adapter_scale)
        self.load_s = time.perf_counter() - start

    def _merge(self, spec: str, folder: str, scale: float) -> None:
        """LoRA: W + scale (alpha/r) B A in every adapted layer of the UNet (genlab/lora/adapter.py)."""
        from ..lora.adapter import Adapter, merge_into

        check(self.pipeline is None, "adapter works with genlab's own models; a diffusers pipeline loads LoRA itself", "adapter")
        check(self.drawer is None, f"adapter tunes a diffusion UNet; {spec!r} is a {self.kind.title}", "adapter")
        check(getattr(self.model, "unet", None) is not None, f"adapter tunes a diffusion UNet; {spec!r} is a DiT", "adapter")
        check(0 <= scale <= 4, f"adapter_scale must be between 0 and 4, got {scale}", "adapter_scale")
        lora = Adapter.for_model(folder, spec)
        unet = self.model.unet
        unet.load_state_dict(merge_into(unet.state_dict(), lora, scale))

    @classmethod
    def from_model(cls, model) -> "ImageGenerator":
        """Wrap a Denoiser or TextToImage already in memory (e.g. the EMA weights during training)."""
        gen = cls.__new__(cls)
        gen.device, gen.dtype, gen.folder, gen.load_s, gen.pipeline = next(model.parameters()).device, torch.float32, None, 0.0, None
        gen.drawer, gen.name, gen.adapter, gen.adapter_scale = None, "in memory", None, 1.0
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
            result = self.pipeline.run(self.filled(request), on_step)
            self.receipts(request, result.images)
            return result
        start = time.perf_counter()
        frames, step = [], None
        for step in self.stream(request):
            if step.index > 0 and on_step:
                on_step(step)
            if step.index in frame_indices(step.total, request.trajectory_frames):
                frames.append(step.xt[:1])
        return ImageResult(self.finished(request, step.xt), request.seed, time.perf_counter() - start, step.calls,
                           self.pictures(torch.cat(frames)) if frames else [])

    def finished(self, request: ImageRequest, x: torch.Tensor) -> list:
        """The pictures of the last step's samples, each carrying its receipt (receipts.py)."""
        return self.receipts(request, self.pictures(x))

    def receipts(self, request: ImageRequest, images: list) -> list:
        from ..receipts import attach, image_record

        request = self.filled(request)
        return [attach(im, image_record(self, request, i, im.size)) for i, im in enumerate(images)]

    @torch.inference_mode()
    def pictures(self, x: torch.Tensor) -> list:
        """PIL images from samples in the model's space (pixels, or latents through the VAE)."""
        return to_pil(self.drawer.pictures(x) if self.drawer else self.model.decode(x))

    @property
    def pixel_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the pictures this model draws; None for a diffusers pipeline (its size is its own)."""
        return self.drawer.pixel_shape if self.drawer else self.model.pixel_shape if self.model is not None else None

    def check_prompt(self, request: "ImageRequest") -> None:
        """One line now, before any work, if this model cannot draw the request's prompt or options."""
        if self.drawer:
            self.drawer.check(request)
            self.drawer.condition(request.prompt)
        elif self.model is not None:
            self._check_distilled(request)
            self.control_maps(request, 1)
            self.model.condition(request.prompt, 1)
            if request.negative_prompt:
                self.model.condition(request.negative_prompt, 1, negative=True)
            if request.init_image:  # the pictures can be read, and picture and mask line up
                self._init(request)
                if request.mask:
                    self._mask(request)

    def control_maps(self, request: "ImageRequest", n: int) -> torch.Tensor | None:
        """(n, CONTROL_CHANNELS, 32, 32): the request's layout and sketch as the control branch reads them, or None."""
        if request.layout is None and request.control is None:
            return None
        what = "layout" if request.layout is not None else "control"
        check(getattr(self.model, "control", None) is not None, f"{what} needs a text-to-image model with a control branch "
              f"(the bundled shapes has one; genlab train control makes one); {self.name!r} has none", what)
        from ..data.layouts import control_maps
        from .canvas import read_sketch

        sketch = read_sketch(request.control) if request.control is not None else None
        maps = control_maps(request.layout, sketch)  # (C, 32, 32)
        return maps.to(self.device, self.dtype).expand(n, -1, -1, -1)

    def _check_distilled(self, request: "ImageRequest") -> None:
        """A distilled student (diffusion/distill.py) learned its teacher's guided images, so guidance is
        in its weights; its "no class" input was never trained as a flow, so it takes no other scale."""
        made = self.config.distilled
        if made:
            check(request.guidance in (None, 1), f"guidance must be 1 or left out for this model, which has its teacher's "
                  f"scale {made['guidance']} distilled in; got {request.guidance}", "guidance")
            check(not request.negative_prompt, f"negative_prompt is not taken by this model, which has its teacher's "
                  f"guidance {made['guidance']} distilled in", "negative_prompt")

    @torch.inference_mode()
    def stream(self, request: ImageRequest) -> Iterator[SampleStep]:
        """The sampling loop itself: yields the starting x_T as step 0, then each step's x_t."""
        request = self.filled(request)
        if self.drawer:
            self.drawer.check(request)
            yield from self.drawer.stream(request)
            return
        m, n, sampler = self.model, request.n, request.sampler
        self._check_distilled(request)
        cond = m.condition(request.prompt, n)
        uncond = m.condition(request.negative_prompt, n, negative=True) if request.negative_prompt else m.null_condition(n)
        control = self.control_maps(request, n)
        if control is not None:
            layouts = None if request.layout is None else [request.layout] * n
            cond, uncond = m.with_control(cond, uncond, control, layouts, request.control_scale)
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
        if self.drawer:
            return request  # it has one way to draw; check() refuses anything else
        return dataclasses.replace(request, sampler=request.sampler or self.default_sampler,
                                   steps=request.steps or self.default_steps)

    def guidance(self, request: ImageRequest) -> float | None:
        """The request's guidance scale, or the model's own default (genlab.json's "guidance"); None for a GAN or pixel GPT."""
        if self.drawer:
            return None
        return request.guidance if request.guidance is not None else self.config.guidance

    @property
    def default_sampler(self) -> str | None:
        """The model's own (genlab.json's "sampler"), else dpmpp, euler for rectified flow; None for
        a diffusers pipeline (it keeps its own scheduler)."""
        if self.drawer:
            return self.drawer.sampler
        if self.model is None:
            return None
        return self.config.sampler or ("euler" if self.config.schedule == "flow" else "dpmpp")

    @property
    def default_steps(self) -> int:
        """The model's own (genlab.json's "sampling_steps"); 20 for a diffusers pipeline."""
        if self.drawer:
            return self.drawer.steps
        return 20 if self.model is None else self.config.sampling_steps

    def _init(self, request: ImageRequest) -> torch.Tensor:  # (1, C, H, W)
        channels, size, _ = self.model.pixel_shape
        return read_image(request.init_image, size, channels)

    def _mask(self, request: ImageRequest) -> torch.Tensor:
        want, got = open_image(request.init_image, "init_image").size, open_image(request.mask, "mask").size
        check(want == got, f"mask is {got[0]}x{got[1]} but init_image is {want[0]}x{want[1]}; they must match",
              "mask", "init_image")
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
