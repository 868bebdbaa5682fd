"""Running a diffusers pipeline folder (Stable Diffusion and friends) through `genlab image`.

genlab's own models use genlab's samplers; a diffusers pipeline brings its own
components (text encoder, UNet, VAE), so here genlab only translates: its sampler names
become diffusers schedulers, --init-image and --mask become the img2img and inpainting
variants of the same pipeline (sharing the loaded weights), and each step's latents are
passed to the same on_step callback as genlab's loop, so progress bars and trajectories
work the same way.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import torch

from ..errors import GenlabError, check
from ..image.canvas import open_image
from ..image.request import ImageResult, frame_indices
from .samplers import SampleStep

SCHEDULERS = {  # genlab's sampler name -> (diffusers scheduler, settings)
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}


def check_pipeline_sampler(sampler: str | None) -> None:
    """None (the pipeline's own scheduler) or one with a diffusers scheduler; reflow is a genlab student's alone."""
    check(sampler is None or sampler in SCHEDULERS, f"a diffusers pipeline samples with {', '.join(SCHEDULERS)}, not "
          f"{sampler!r} (reflow is a distilled genlab student's)", "sampler")


class DiffusersPipeline:
    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype):
        import diffusers

        self.device, self.dtype = device, dtype
        try:
            self.pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), torch_dtype=self.dtype, local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as e:
            raise GenlabError(f"cannot load the diffusers pipeline in {folder}: {str(e).splitlines()[0]}") from None
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.name = type(self.pipe).__name__

    def _variant(self, request):
        """The pipeline for this request: text-to-image, img2img or inpainting, sharing weights."""
        import diffusers

        if request.init_image is None:
            return self.pipe
        cls = diffusers.AutoPipelineForInpainting if request.mask else diffusers.AutoPipelineForImage2Image
        try:
            pipe = cls.from_pipe(self.pipe)
        except ValueError as e:
            raise GenlabError(f"{self.name} has no {'inpainting' if request.mask else 'img2img'} variant: {e}") from None
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def run(self, request, on_step=None):
        import diffusers
        from PIL import Image


        pipe = self._variant(request)
        if request.sampler:  # otherwise keep the pipeline's own scheduler
            check_pipeline_sampler(request.sampler)
            name, settings = SCHEDULERS[request.sampler]
            pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **settings)
        accepts = inspect.signature(pipe.__call__).parameters
        g = torch.Generator().manual_seed(request.seed)  # CPU generator: same seed, same image on any device
        kwargs = {"num_inference_steps": request.steps, "generator": g, "output_type": "pil"}
        optional = {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt, "guidance_scale": 7.5 if request.guidance is None else request.guidance,
            "num_images_per_prompt": request.n, "batch_size": request.n, "eta": request.eta, "strength": request.strength,
        }
        kwargs |= {k: v for k, v in optional.items() if k in accepts and v is not None}
        if request.init_image:
            kwargs["image"] = open_image(request.init_image, "init_image", "RGB")
            check(int(request.steps * request.strength) >= 1, f"strength {request.strength} leaves no step of the {request.steps} to run for a "
                  "diffusers pipeline; raise strength or steps", "strength", "strength", "steps")
        if request.mask:
            kwargs["mask_image"] = open_image(request.mask, "mask", "L")
            check(kwargs["mask_image"].size == kwargs["image"].size, f"mask is {kwargs['mask_image'].size[0]}x{kwargs['mask_image'].size[1]} "
                  f"but init_image is {kwargs['image'].size[0]}x{kwargs['image'].size[1]}; they must match", "mask", "init_image")
        frames, calls = [], [0]
        if "callback_on_step_end" in accepts:

            def callback(_pipe, i, t, tensors):
                calls[0] += 1
                total = _pipe.num_timesteps if hasattr(_pipe, "num_timesteps") else request.steps
                latents = tensors["latents"]
                step = SampleStep(i + 1, total, float(t), float("nan"), latents, latents)
                if on_step:
                    on_step(step)
                # the pipeline's starting noise is not shown to callbacks: its first frame is after step 1
                if i + 1 in {max(1, k) for k in frame_indices(total, request.trajectory_frames)}:
                    frames.append(self._decode(latents[:1]))
                return tensors

            kwargs["callback_on_step_end"] = callback
        start = time.perf_counter()
        images = pipe(**kwargs).images
        seconds = time.perf_counter() - start
        images = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in images]
        return ImageResult(images, request.seed, seconds, calls[0] or request.steps, frames)

    @torch.inference_mode()
    def _decode(self, latents: torch.Tensor):
        from ..image.canvas import to_pil

        vae = getattr(self.pipe, "vae", None)
        if vae is None:
            return to_pil(latents.float())[0]
        x = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return to_pil(x.float())[0]

