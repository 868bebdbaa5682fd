"""LoRA fine-tuning of a diffusion model: `genlab finetune image`.

    genlab finetune image --data runs/bold-digits --model digits --out runs/lora-bold
    genlab image "7" --adapter runs/lora-bold/adapter --adapter-scale 1.0

PEFT wraps the chosen layers of the denoiser's UNet (its attention and linear layers by
default; convolutions by name, e.g. --targets all-linear,conv1,conv2), the base stays
frozen, and the loss is the same denoising objective that trained the model from scratch
(diffusion/train.py), with the same label dropout, so guidance keeps working. Folder
subfolders must be class names the model already has ("0".."9" for digits).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from genlab.errors import check
from genlab.data.digits import ImageData, load_images
from genlab.store import atomic_dir
from genlab.diffusion.train import diffusion_loss
from genlab.training.loop import StepStats, TrainConfig
from genlab.training.options import ImageLoraOptions
from genlab.training.run import Run


def base_denoiser(spec: str):
    """A class-conditional genlab diffusion model (bundled name or folder), fp32 on the CPU."""
    from genlab.diffusion.denoiser import load_model
    from genlab.registry import locate

    ref = locate(spec, "image")
    check(ref.kind.name != "text2image", f"--model {spec!r} is a text-to-image model; `genlab finetune image` adapts "
                                         "class-conditional diffusion models such as digits (captioned data is not supported yet)")
    check(ref.kind.name == "diffusion", f"--model {spec!r} is a {ref.kind.title}; `genlab finetune image` adapts "
                                        "class-conditional diffusion models such as digits")
    model = load_model(ref.path)
    check(model.config.backbone == "unet", f"--model {spec!r} is a DiT; `genlab finetune image` adapts UNet models such as digits")
    check(not model.config.distilled, f"--model {spec!r} is a distilled student: fine-tune its teacher "
                                      f"({model.config.distilled and model.config.distilled['teacher']!r}), then distill again")
    return model


def relabel(data: ImageData, class_names: list[str], source: str) -> ImageData:
    """Map the data's class names onto the model's label indices; unknown names are an error."""
    if not class_names:
        return data
    check(data.class_names, f"--data {source!r} has no class subfolders, but the model is class-conditional: put the "
                            f"images in subfolders named after its classes ({', '.join(class_names)})")
    unknown = [n for n in data.class_names if n not in class_names]
    check(not unknown, f"--data {source!r} has classes the model does not know: {', '.join(unknown)}; its classes are "
                       f"{', '.join(class_names)}")
    index = torch.tensor([class_names.index(n) for n in data.class_names])
    return ImageData(data.x, index[data.labels], class_names)


class ImageLoraRun(Run):
    """out/checkpoints/step-N (the adapter and optimizer state), out/adapter (a PEFT folder) and out/samples."""

    kind, Options = "lora-image", ImageLoraOptions

    def build(self) -> torch.nn.Module:
        from peft import get_peft_model

        from genlab.lora.adapter import lora_config

        o = self.options
        self.model = model = base_denoiser(o.model)  # the Denoiser, its unet wrapped by PEFT below
        c = model.config
        data = load_images(o.data, c.resolution)
        check(tuple(data.x.shape[1:]) == (c.channels, c.resolution, c.resolution),
              f"--data images are {tuple(data.x.shape[1:])} (channels, height, width) but the model denoises "
              f"{(c.channels, c.resolution, c.resolution)}")
        self.data = relabel(data, c.class_names, o.data)
        config = lora_config(model.unet, o.rank, o.alpha, o.dropout, o.targets)
        torch.manual_seed(o.seed)  # LoRA's A matrices start random (B at zero)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT notes that a UNet is not a transformers model: expected
            model.unet = get_peft_model(model.unet, config)
        model.unet.peft_config["default"].base_model_name_or_path = o.model
        return model

    def train_config(self) -> TrainConfig:
        o = self.options
        return TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=o.lr, warmup=max(1, o.steps // 10), ema_decay=0.0,
                           seed=o.seed)

    def steps(self) -> Iterator[StepStats]:
        schedule = self.model.config.noise_schedule()
        loss = lambda model, g: diffusion_loss(model, schedule, self.data, self.trainer.batch, g)  # noqa: E731
        yield from self.trainer.run(loss)

    def save_model(self) -> None:
        with atomic_dir(self.out / "adapter") as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model.unet.save_pretrained(str(tmp))
            (tmp / "README.md").write_text(
                f"LoRA adapter for the {self.options.model} diffusion model, written by `genlab finetune image` at step "
                f"{self.trainer.step}.\nUse: genlab image PROMPT --model {self.options.model} --adapter {self.out / 'adapter'}\n")

    def sample_grid(self, path: Path, per_class: int = 4, steps: int = 20) -> None:
        """Samples with the adapter at its current weights: one column per class, seed 0."""
        from genlab.image.canvas import grid, save_png, upscale
        from genlab.image.generator import ImageGenerator

        model = copy.deepcopy(self.model)
        model.unet = model.unet.merge_and_unload()
        gen = ImageGenerator.from_model(model)
        names = self.model.config.class_names or ["anything"]
        columns = [gen.generate(name, n=per_class, steps=steps, seed=0) for name in names]
        cells = [column[row] for row in range(per_class) for column in columns]
        save_png(upscale(grid(cells, columns=len(columns)), max(1, 64 // self.model.pixel_shape[-1])), path, "sample grid")
        self.model.train()
