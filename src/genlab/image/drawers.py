"""The image models that do not denoise, behind the same stream of steps as diffusion.

    gen = ImageGenerator("digits-gan")            # or "digits-ar", or their training run folders
    [img] = gen.generate("7", seed=0)
    for step in gen.stream(ImageRequest("3", model_steps)): ...   # what progress bars and previews read

A GAN draws in one network evaluation: a single step, from the noise z to the picture. A
pixel GPT draws one pixel per evaluation, 64 steps for an 8x8 digit; its x_t is the picture
so far, with the pixels not yet drawn left at mid-grey, so a --trajectory strip shows the
digit being written line by line. Both answer ImageGenerator's questions (the default steps,
the shape, how a sample becomes pixels) so the CLI, the server and the web page treat them
like any other image model; options that only mean something for diffusion (guidance, a
negative prompt, samplers, img2img) are refused in one line.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import check
from ..diffusion.denoiser import parse_prompt
from ..diffusion.samplers import SampleStep


class Drawer:
    """What ImageGenerator needs of a model that draws directly; subclasses say how."""

    sampler = ""  # its one way of drawing, for `genlab models`, the server's model card and progress bars
    steps = 1
    trajectory = False  # whether x_t between the first and last step shows something
    family = ""

    def __init__(self, model, class_names: list[str], pixel_shape: tuple[int, int, int]):
        self.model, self.class_names, self.pixel_shape = model, class_names, pixel_shape

    def condition(self, prompt: str) -> int:
        """The class the prompt names, or one line listing the classes."""
        return parse_prompt(prompt, self.class_names)

    def check(self, request) -> None:
        """One line for each option this model cannot honour."""
        name = f"a {self.family}"
        check(request.guidance is None, f"guidance is for diffusion models; {name} has no guidance (leave it out)")
        check(request.negative_prompt is None, f"a negative prompt needs classifier-free guidance; {name} has none")
        check(request.init_image is None, f"init_image (img2img, inpainting) needs a diffusion model; {name} draws from scratch")
        check(request.sampler in (None, self.sampler), f"{name} draws {self.sampler!r} only; leave the sampler out")
        check(request.steps in (None, self.steps), f"{name} always takes {self.steps} step{'s' * (self.steps > 1)}; "
                                                   f"leave steps out or give {self.steps}")
        check(request.trajectory_frames == 0 or self.trajectory,
              f"{name} draws in one step, so there is no trajectory to show; --trajectory needs a diffusion or "
              f"autoregressive model")

    def stream(self, request) -> Iterator[SampleStep]:
        raise NotImplementedError

    def pictures(self, x: torch.Tensor) -> torch.Tensor:
        return x  # samples are pixels already, (B, C, H, W) in [-1, 1]


class GanDrawer(Drawer):
    sampler, steps, family = "generator", 1, "GAN"

    def __init__(self, gan):
        c = gan.config
        super().__init__(gan, c.class_names, (c.channels, c.resolution, c.resolution))

    def stream(self, request) -> Iterator[SampleStep]:
        labels = torch.full((request.n,), self.condition(request.prompt), dtype=torch.long)
        z = self.model.noise(request.n, torch.Generator().manual_seed(request.seed))
        yield SampleStep(0, 1, 1.0, 1.0, torch.zeros(request.n, *self.pixel_shape), torch.zeros(request.n, *self.pixel_shape))
        with torch.inference_mode():
            x = self.model.generator.eval()(z, labels)  # (n, C, H, W): the whole picture in one evaluation
        yield SampleStep(1, 1, 0.0, 0.0, x, x, calls=1)


class PixelDrawer(Drawer):
    sampler, trajectory, family = "pixel-by-pixel", True, "pixel autoregressive model"

    def __init__(self, gpt):
        super().__init__(gpt, gpt.class_names, (1, gpt.side, gpt.side))
        self.steps = gpt.side * gpt.side

    def stream(self, request) -> Iterator[SampleStep]:
        from ..autoregressive.sampling import SamplingParams

        labels = torch.full((request.n,), self.condition(request.prompt), dtype=torch.long)
        blank = torch.zeros(request.n, *self.pixel_shape)  # mid-grey: nothing drawn yet
        yield SampleStep(0, self.steps, 1.0, 1.0, blank, blank)
        gpt = self.model
        for i, tokens in enumerate(gpt.unfold(labels, SamplingParams(temperature=1.0), request.seed)):
            drawn = tokens.clamp_min(0)  # (n, H*W) levels; -1 where not yet drawn
            x = torch.where(tokens >= 0, drawn.float() / (gpt.levels - 1) * 2 - 1, 0.0).view(-1, *self.pixel_shape)
            yield SampleStep(i + 1, self.steps, 1 - (i + 1) / self.steps, 1 - (i + 1) / self.steps, x, x, calls=i + 1)


def load_drawer(kind: str, folder) -> Drawer:
    """The GAN or pixel GPT in `folder`, ready to draw."""
    if kind == "gan":
        from ..gan.model import Gan

        return GanDrawer(Gan.load(folder))
    from ..autoregressive.pixel_gpt import PixelGpt

    return PixelDrawer(PixelGpt.load(folder))
