"""Distillation: a diffusion model that draws in 1 to 4 steps, taught by one that needs 20.

The method is rectified-flow reflow with distillation (Liu et al. 2022, "Flow Straight and
Fast", sections 2.2-2.3):

1. Couple noise with images through the teacher. Draw z ~ N(0, I) and run the teacher's
   deterministic sampler from it (DPM-Solver++, 20 steps, with classifier-free guidance):
   x0 = teacher(z). Each z now has exactly one image; the pairs are saved once, in
   out/pairs.safetensors.
2. Train the student as a rectified flow on the pairs (Liu et al. eq. 1): on the straight
   line x_t = (1 - t) x0 + t z, regress v(x_t, t) onto its direction z - x0. The teacher's
   coupling makes these lines cross far less than lines between independent noise and data,
   so the flow is nearly straight and a few Euler steps follow it.
3. Put weight where a few-step sampler looks (the distillation of section 2.3): a third of
   each batch at t = 1, where one step x0 = z - v(z, 1) must land on the teacher's image,
   a third at t = 3/4, 1/2 or 1/4 (the other points of the 2- and 4-step grids), and a third
   anywhere in (0, 1), so that any number of steps still works.

The student starts from the teacher's weights (same network, same timestep scale: flow time t
is shown as 1000 t) and keeps the teacher's classes and "no class" embedding. Guidance is
distilled in: the pairs were drawn at the teacher's guidance scale, so the student runs one
network evaluation a step with guidance 1, and takes no other scale (its "no class" input
never learned a flow; image/generator.py refuses one). It samples with the `reflow` sampler (samplers.py): Euler on a uniform
time grid, 1 - i/n.

    run = DistillRun.create(Path("runs/digits-distilled"), DistillOptions(teacher="digits"))
    for stats in fit(run): ...
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import GenlabError
from ..store import atomic_dir, atomic_write_bytes
from ..training.loop import StepStats, TrainConfig
from ..training.options import DistillOptions, OptionError
from ..training.run import Run
from .samplers import SAMPLERS, make_plan
from .schedules import FlowSchedule

PAIRS_FILE = "pairs.safetensors"
BATCH = 500  # pairs the teacher draws at once
PROMPTS = 2000  # training captions a text-to-image teacher draws its pairs for
GRID = (0.75, 0.5, 0.25)  # the times a 2- and 4-step sampler visits after t = 1


def load_teacher(spec: str):
    """The teacher as an ImageGenerator, or one line saying why it cannot teach."""
    from ..image.generator import ImageGenerator
    from ..registry import locate

    try:
        ref = locate(spec, "image")
    except GenlabError as e:
        raise OptionError(str(e), "teacher") from None
    if ref.kind.name not in ("diffusion", "text2image"):
        raise OptionError(f"teacher must be one of genlab's diffusion models (digits, shapes, or a folder that "
                          f"`genlab train diffusion` or `text2image` wrote); {spec!r} is a {ref.kind.title}", "teacher")
    gen = ImageGenerator(spec, device="cpu", dtype="float32")  # the student trains on the CPU, from a copy of it
    if gen.config.distilled:
        raise OptionError(f"{spec!r} is already a distilled student; set teacher to "
                          f"{gen.config.distilled['teacher']!r}, the model it was distilled from", "teacher")
    return gen


class Conditions:
    """What each pair was drawn for, as the small integer keys the pairs file keeps: the class
    index for a class-conditional model, an index into a list of captions for a text-to-image one."""

    def __init__(self, model, prompts: list[str] | None):
        self.model, self.prompts, self.cache = model, prompts, {}

    @classmethod
    def for_teacher(cls, model) -> "Conditions":
        if getattr(model.config, "class_names", None) is not None:  # a pixel model: digits' ten classes
            return cls(model, None)
        from ..data.shapes import ShapesWorld

        world = ShapesWorld("train")
        return cls(model, [world.example(i)[1] for i in range(PROMPTS)])

    @property
    def count(self) -> int:
        return len(self.prompts) if self.prompts is not None else max(1, self.model.config.num_classes)

    def __call__(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for a (B,) tensor of keys."""
        if self.prompts is None:
            return {"labels": keys} if self.model.config.num_classes else {}
        missing = [k for k in keys.unique().tolist() if k not in self.cache]
        for k in missing:
            self.cache[k] = self.model.condition(self.prompts[k], 1)["states"][0]
        return {"states": torch.stack([self.cache[k] for k in keys.tolist()])}

    def null(self, n: int) -> dict[str, torch.Tensor]:
        return self.model.null_condition(n)


def draw_pairs(teacher, conditions: Conditions, count: int, steps: int, sampler: str, guidance: float, seed: int,
               on_batch=None) -> dict[str, torch.Tensor]:
    """Step 1: `count` pairs (z, x0 = teacher(z)), their keys cycling through every condition."""
    from ..image.generator import guided

    model = teacher.model
    plan = make_plan(sampler, teacher.schedule, steps, teacher.config.prediction)
    g = torch.Generator().manual_seed(seed)
    keys = torch.arange(count) % conditions.count
    zs, x0s = [], []
    with torch.inference_mode():
        for chunk in keys.split(BATCH):
            z = torch.randn((len(chunk), *model.sample_shape), generator=g)
            denoise = guided(model, conditions(chunk), conditions.null(len(chunk)), guidance)
            x = z
            for step in SAMPLERS[sampler](denoise, z, plan, generator=g):
                x = step.xt
            zs.append(z), x0s.append(x.float())
            if on_batch:
                on_batch(len(chunk))
    return {"z": torch.cat(zs), "x0": torch.cat(x0s), "keys": keys}


def reflow_loss(student, pairs: dict[str, torch.Tensor], conditions: Conditions, batch: int,
                generator: torch.Generator) -> torch.Tensor:
    """Steps 2-3: one batch of Liu et al. eq. 1 on the teacher's pairs, t weighted towards a few-step grid."""
    idx = torch.randint(len(pairs["z"]), (batch,), generator=generator)
    z, x0, keys = pairs["z"][idx], pairs["x0"][idx], pairs["keys"][idx]  # (B, C, H, W) twice, (B,)
    which = torch.randint(3, (batch,), generator=generator)
    on_grid = torch.tensor(GRID)[torch.randint(len(GRID), (batch,), generator=generator)]
    t = torch.where(which == 0, 1.0, torch.where(which == 1, on_grid, torch.rand(batch, generator=generator)))  # (B,)
    flow = FlowSchedule()  # the straight line from the image (t = 0) to its noise (t = 1), and its direction
    return F.mse_loss(student(flow.add_noise(x0, z, t), t * flow.num_steps, **conditions(keys)), flow.velocity(x0, z))


class DistillRun(Run):
    """out/pairs.safetensors (the teacher's pairs, drawn once), out/checkpoints/step-N, out/model."""

    kind, Options = "distill", DistillOptions

    def build(self) -> torch.nn.Module:
        o = self.options
        self.teacher = load_teacher(o.teacher)
        self.guidance = self.teacher.config.guidance if o.guidance is None else o.guidance
        self.student = student_of(self.teacher.model, self.record(), o.student_steps)
        self.conditions = Conditions.for_teacher(self.student)
        self.pairs = self._pairs()
        return self.student.denoiser() if hasattr(self.student, "denoiser") else self.student

    def record(self) -> dict:
        """What the student's genlab.json says about how it was made."""
        o = self.options
        return {"teacher": o.teacher, "method": "reflow", "teacher_sampler": o.teacher_sampler,
                "teacher_steps": o.teacher_steps, "guidance": self.guidance, "pairs": o.pairs, "trained_for": [1, 2, 4]}

    def _pairs(self) -> dict[str, torch.Tensor]:
        """The teacher's pairs: drawn once and kept in out/pairs.safetensors, with what they were drawn by
        in its metadata, so a resumed run learns from the same pairs and a new run with other settings redraws."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save

        o, path = self.options, self.out / PAIRS_FILE
        drawn_by = json.dumps({"teacher": o.teacher, "sampler": o.teacher_sampler, "steps": o.teacher_steps,
                               "guidance": self.guidance, "pairs": o.pairs, "seed": o.seed})
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("drawn_by") == drawn_by:
                self.pairs_seconds = float(meta["seconds"])
                return load_file(str(path))
        import time

        from ..progress import step_progress

        done, start = [0], time.perf_counter()
        with step_progress(f"the teacher draws {o.pairs} pairs ({o.teacher_sampler}, {o.teacher_steps} steps)", o.pairs) as update:
            def advance(n: int) -> None:
                done[0] += n
                update(done[0])

            pairs = draw_pairs(self.teacher, Conditions.for_teacher(self.teacher.model), o.pairs, o.teacher_steps,
                               o.teacher_sampler, self.guidance, o.seed, advance)
        self.pairs_seconds = round(time.perf_counter() - start, 1)
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in pairs.items()},
                                      {"drawn_by": drawn_by, "seconds": str(self.pairs_seconds)}))
        return pairs

    def train_config(self) -> TrainConfig:
        o = self.options
        return TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=o.lr, warmup=o.warmup, seed=o.seed)

    def steps(self) -> Iterator[StepStats]:
        loss = lambda model, g: reflow_loss(self.student, self.pairs, self.conditions, self.trainer.batch, g)  # noqa: E731
        yield from self.trainer.run(loss)

    def ema_student(self):
        """A copy of the student with the EMA weights, for export and samples."""
        import copy

        ema = copy.deepcopy(self.student)
        net = ema.denoiser() if hasattr(ema, "denoiser") else ema
        net.load_state_dict(self.trainer.ema.shadow)
        return ema.eval()

    def save_model(self) -> None:
        from .denoiser import save_model
        from .text2image import TextToImage, save_text2image

        ema = self.ema_student()
        with atomic_dir(self.out / "model") as tmp:
            if isinstance(ema, TextToImage):
                save_text2image(ema, tmp)
            else:
                save_model(ema, tmp)
            (tmp / "genlab-train.json").write_text(json.dumps({"step": self.trainer.step, "pairs_seconds": self.pairs_seconds,
                                                               "train_seconds": round(self.trainer.seconds, 1)}))

    def sample_grid(self, path: Path, per_row: int = 8) -> Path:
        """One row per step count (1, 2, 4), the same noise in each column, seed 0."""
        from ..image.canvas import grid, save_png, upscale
        from ..image.generator import ImageGenerator

        gen = ImageGenerator.from_model(self.ema_student())
        names = self.conditions.prompts or self.student.config.class_names or ["anything"]
        prompts = [names[k % len(names)] for k in range(per_row)]
        cells = [gen.generate(p, steps=steps, seed=0)[0] for steps in (1, 2, 4) for p in prompts]
        save_png(upscale(grid(cells, columns=per_row), max(1, 64 // gen.pixel_shape[-1])), path, "sample grid")
        self.student.train()
        return path


def student_of(teacher, record: dict, steps: int):
    """A copy of the teacher's network and weights, made a rectified flow sampled by `reflow` in `steps` steps."""
    import copy

    student = copy.deepcopy(teacher).float()
    student.config = dataclasses.replace(teacher.config, schedule="flow", prediction="flow", sampler="reflow",
                                         sampling_steps=steps, guidance=1.0, distilled=record)
    student.train().requires_grad_(True)
    if hasattr(student, "vae"):
        student.vae.requires_grad_(False)
    return student

