"""What one image job asks for (ImageRequest) and what it gives back (ImageResult).

Every image model kind takes the same request: the bundled pixel and latent diffusion models
(generator.py), the GAN and the pixel GPT (drawers.py), and diffusers pipelines
(diffusers_pipeline.py). The request checks its own numbers, so the CLI, Python and the
server refuse bad input with the same line before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import check, check_number, check_text
from ..diffusion.samplers import check_sampler

MAX_IMAGES = 64  # per request: a grid of 64 already takes minutes on a CPU
MAX_GUIDANCE = 100  # far past where pictures saturate; infinity would draw black
MAX_FRAMES = 256  # in a --trajectory strip


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
    layout: object = None  # spatial control: boxes with colour and shape (data/layouts.py: JSON text, a dict or a Layout)
    control: str | bytes | None = None  # spatial control: a sketch, edge map or mask picture, a file or PNG bytes (diffusion/control.py)
    control_scale: float = 1.0  # how strongly the control branch steers: 0 = not at all, 1 = as trained

    def __post_init__(self):
        if self.layout is not None:
            from ..data.layouts import Layout

            self.layout = self.layout if isinstance(self.layout, Layout) else Layout.parse(self.layout)
            if not (isinstance(self.prompt, str) and self.prompt.strip()):
                self.prompt = self.layout.prompt()  # the boxes say where; the caption names what
        check_number("control_scale", self.control_scale, 0, 2)
        check(isinstance(self.prompt, str) and self.prompt.strip() != "",
              "the prompt is empty; describe the picture, e.g. 'a red circle above a blue square' or 'a handwritten 7'")
        check_text("the prompt", self.prompt)
        if self.negative_prompt:
            check_text("negative_prompt", self.negative_prompt)
        if self.steps is not None:
            check_number("steps", self.steps, 1, integer=True)
        if self.guidance is not None:
            check_number("guidance", self.guidance, 0, MAX_GUIDANCE)
        check_number("n", self.n, 1, MAX_IMAGES, integer=True)
        check_number("strength", self.strength, 0, 1)
        check_number("eta", self.eta, 0, 1)
        check_number("trajectory_frames", self.trajectory_frames, 0, MAX_FRAMES, integer=True)
        check_sampler(self.sampler)
        check(self.mask is None or self.init_image is not None, "mask needs init_image: the picture to inpaint",
              "mask", "init_image")
        if self.seed is None:
            self.seed = int(torch.randint(0, 2**31 - 1, ()).item())
        check(0 <= self.seed < 2**63, f"seed must be between 0 and 2^63 - 1, got {self.seed}", "seed")


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


def frame_indices(steps: int, frames: int) -> set[int]:
    """Which of steps 0..steps (0 = the starting noise) to keep for `frames` evenly spaced frames."""
    if frames <= 1:
        return {steps} if frames == 1 else set()
    return {round(i * steps / (frames - 1)) for i in range(frames)}
