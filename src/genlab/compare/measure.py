"""`genlab compare`: every generative family on the same data and machine, measured side by side.

Images (the handwritten digits): a GAN (1 network evaluation per image), an autoregressive
pixel GPT (64, one per pixel) and a diffusion model (one per sampling step). Text (Python's
own documentation): a GPT (one evaluation per token) and a masked-diffusion LM (one per
unmasking step, for all tokens at once). For each: parameters, training time, wall time and
network evaluations per sample, and quality on held-out data, all measured in this run.

    results = measure(Models.bundled(), quick=True)     # what `genlab compare --quick` does
    report.write(results, Path("compare"))

Quality measures:
- images: FID and class accuracy from genlab's digit classifier (eval/digits.py), the same
  number of samples for every family; diversity (mean same-class feature distance) over the
  real digits' own; exact NLL in bits/dim where the model has one (the pixel GPT);
- text: held-out perplexity (the masked-diffusion LM gives an upper bound); samples scored by
  an independent judge (the bundled SmolLM2, which neither model saw while training) as
  "generative perplexity", and distinct bigrams, since a judge alone rewards repetition.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .benches import ImageBench, TextBench

ROW_STEPS = 20  # the diffusion model's row in the table: its default, DPM-Solver++ with 20 steps
TEXT_LENGTHS = (16, 32, 64, 120)  # GPT output lengths timed (64 is the table's row)
MDLM_STEPS = (8, 16, 32, 64)  # unmasking steps for 64 tokens (64 is the table's row)
TEXT_PROMPTS = ("The for statement", "Exceptions are", "A class definition", "The import system")
SAMPLES = {True: 250, False: 1000}  # images per image family: --quick, or the full run
DISTILLED_STEPS = (1, 2, 4)  # the distilled student's steps timed and scored (1 is the table's row: the rematch with the GAN)
DIFFUSION_SWEEP = {True: (1, 2, 5, 10, ROW_STEPS, 50), False: (1, 2, 5, 10, ROW_STEPS, 50, 100, 250)}  # steps timed and scored


@dataclass(frozen=True)
class Contender:
    """One family's entry in the comparison: the model that stands for it, how `compare` (full)
    retrains it, and how it is measured. measure() and the report loop over CONTENDERS."""

    key: str  # its row in results.json
    title: str  # its name in the report
    model: str  # the bundled model (registry.BUNDLED) that stands for the family
    modality: str  # "image" (handwritten digits) or "text" (Python's documentation)
    measure: Callable  # (folder, bench, results, on_stage) -> the row's numbers; may add curves, images, texts
    stages: Callable[[bool], int]  # how often measure calls on_stage (quick or full): for the progress bar
    run: Callable[[], type]  # its training Run class (imported when a full compare retrains)
    options: Callable[[dict], object]  # its training options for a retrain: the command's defaults plus these
    marker: str = "o"  # in the quality figure
    teacher: str | None = None  # the contender whose model it learns from: a full compare distills its own retrained one


@dataclass
class Models:
    """Where each family's trained model is: bundled with genlab, or a run folder of `compare` itself."""

    folders: dict[str, Path]
    train_seconds: dict[str, float] = field(default_factory=dict)  # measured in this run (full mode)
    resumed: list[str] = field(default_factory=list)  # full mode: runs that continued an earlier, interrupted compare

    @classmethod
    def bundled(cls) -> "Models":
        from ..registry import BUNDLED
        from ..store import bundled_weights

        return cls({c.key: bundled_weights(BUNDLED[c.model].folder, BUNDLED[c.model].train_command) for c in CONTENDERS})


def stages(quick: bool) -> int:
    """How many times measure() calls on_stage: for a progress bar."""
    return sum(c.stages(quick) for c in CONTENDERS)


@dataclass
class Results:
    quick: bool
    samples: int  # images per image family
    resumed: list[str] = field(default_factory=list)  # full mode: families whose training continued an earlier run
    rows: dict[str, dict] = field(default_factory=dict)  # family -> the table's numbers
    curves: dict[str, list[dict]] = field(default_factory=dict)  # cost and quality sweeps
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # a sample grid per image family
    unfolding: dict[str, list] = field(default_factory=dict)  # trajectories, step by step
    texts: dict[str, list[str]] = field(default_factory=dict)
    logs: dict[str, list[dict]] = field(default_factory=dict)  # training curves
    machine: dict = field(default_factory=dict)
    seconds: float = 0.0


def timed(fn: Callable):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(models: Models, quick: bool = True, on_stage: Callable[[str], None] = lambda s: None) -> Results:
    """Every measurement of the report, in one pass; `on_stage` hears what is running."""
    import platform

    from ..text.engine import cpu_model

    start = time.perf_counter()
    r = Results(quick=quick, samples=SAMPLES[quick], resumed=models.resumed)
    r.machine = {"cpu": cpu_model() or platform.machine(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__}
    first_text = next(c for c in CONTENDERS if c.modality == "text")  # the text models share genlab train lm's BPE
    benches = {"image": ImageBench(r.samples), "text": TextBench(models.folders[first_text.key])}
    for c in CONTENDERS:
        folder = models.folders[c.key]
        row = c.measure(folder, benches[c.modality], r, on_stage)
        seconds = models.train_seconds.get(c.key, recorded_train_seconds(folder))
        r.rows[c.key] = {"modality": c.modality, **row, "train_seconds": seconds}
    r.rows["real digits"] = benches["image"].real_row()
    r.rows["real text"] = benches["text"].real_row(len(TEXT_PROMPTS) * 2)
    r.seconds = time.perf_counter() - start
    return r


def recorded_train_seconds(folder: Path) -> float | None:
    """The training time the trainer wrote into the model folder (genlab-train.json, or the card);
    for a distilled student, with the time its teacher took to draw the pairs."""
    from ..registry import read_card

    train = Path(folder) / "genlab-train.json"
    info = json.loads(train.read_text()) if train.is_file() else read_card(Path(folder)) or {}
    seconds = info.get("train_seconds")
    return seconds + (info.get("pairs_seconds") or 0) if seconds is not None else None


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the families ------------------------------------------------------------------------

def measure_gan(folder: Path, bench: ImageBench, r: Results, on_stage) -> dict:
    from ..gan.model import Gan

    on_stage("GAN: one network evaluation per image")
    gan = Gan.load(folder)
    x, s = timed(lambda: gan.generate(bench.labels, seed=1))
    r.images["gan"] = gan.generate(bench.grid_labels, seed=0)
    r.logs["gan"] = gan.info.get("curve", [])
    return {"params": params(gan.generator), "nfe": 1, "s_per_sample": s / len(bench.labels)} | bench.quality(x)


def measure_pixel_gpt(folder: Path, bench: ImageBench, r: Results, on_stage) -> dict:
    from ..autoregressive.pixel_gpt import PixelGpt
    from ..data.digits import digits, enlarge

    on_stage("autoregressive pixel GPT: one evaluation per pixel")
    gpt = PixelGpt.load(folder)
    with torch.inference_mode():
        x, s = timed(lambda: gpt.generate(bench.labels, seed=1))
        held8 = digits(8, "test")
        bits = gpt.bits_per_dim(held8.x, held8.labels)
    x = enlarge(x, 16)  # the other families learned the digits as 16x16 bilinear upsamplings: judge all alike
    r.images["ar-image"] = enlarge(gpt.generate(bench.grid_labels, seed=0), 16)
    frames = list(gpt.unfold(torch.tensor([7]), seed=0))
    r.unfolding["ar-image"] = [partial_image(frames[i], gpt) for i in (7, 15, 23, 31, 39, 47, 55, 63)]  # 8, 16, ... pixels
    return {"params": params(gpt.model), "nfe": gpt.side ** 2, "s_per_sample": s / len(bench.labels),
            "bits_per_dim": bits} | bench.quality(x)


def measure_diffusion(folder: Path, bench: ImageBench, r: Results, on_stage) -> dict:
    from ..image.generator import ImageGenerator
    from ..image.request import ImageRequest

    gen = ImageGenerator(str(folder), dtype="float32")
    for steps in DIFFUSION_SWEEP[r.quick]:
        on_stage(f"diffusion: DPM-Solver++ with {steps} steps")
        (x, calls), s = timed(lambda: gen.class_samples(bench.labels, steps, seed=1))
        point = {"steps": steps, "nfe": calls, "s_per_sample": s / len(bench.labels)} | bench.quality(x)
        r.curves.setdefault("diffusion", []).append(point)
    best = next(p for p in r.curves["diffusion"] if p["steps"] == ROW_STEPS)
    r.images["diffusion"], _ = gen.class_samples(bench.grid_labels, ROW_STEPS, seed=0)
    result = gen.run(ImageRequest("7", seed=0, steps=8, trajectory_frames=9))
    r.unfolding["diffusion"] = result.trajectory[1:]  # x_t after each of the 8 steps
    train = Path(folder) / "genlab-train.json"
    note = json.loads(train.read_text()).get("note") if train.is_file() else None
    return {"params": params(gen.model), "nfe": best["nfe"], "s_per_sample": best["s_per_sample"],
            "guidance": gen.config.guidance, "train_note": note} | {k: best[k] for k in ("fid", "accuracy", "diversity")}


def measure_distilled(folder: Path, bench: ImageBench, r: Results, on_stage) -> dict:
    from ..image.generator import ImageGenerator

    gen = ImageGenerator(str(folder), dtype="float32")
    for steps in DISTILLED_STEPS:
        on_stage(f"distilled diffusion: {steps} reflow step{'s' * (steps > 1)}")
        (x, calls), s = timed(lambda: gen.class_samples(bench.labels, steps, seed=1))
        point = {"steps": steps, "nfe": calls, "s_per_sample": s / len(bench.labels)} | bench.quality(x)
        r.curves.setdefault("distilled", []).append(point)
        if steps == DISTILLED_STEPS[0]:
            r.images["distilled"] = gen.class_samples(bench.grid_labels, steps, seed=0)[0]
    one = r.curves["distilled"][0]
    return {"params": params(gen.model), "guidance": gen.config.distilled["guidance"], "teacher_steps": gen.config.distilled["teacher_steps"],
            **{k: one[k] for k in ("nfe", "s_per_sample", "fid", "accuracy", "diversity")}}


def partial_image(tokens: torch.Tensor, gpt) -> torch.Tensor:
    """The pixel GPT's canvas part-way: drawn pixels as they are, the rest grey; (1, 16, 16)."""
    from ..autoregressive.pixel_gpt import dequantise

    image = dequantise(tokens.clamp(min=0), gpt.levels, gpt.side)  # (1, 1, side, side)
    image.view(-1)[(tokens < 0).view(-1)] = -0.4
    return torch.nn.functional.interpolate(image, size=(16, 16), mode="nearest")[0]


def measure_gpt(folder: Path, bench: TextBench, r: Results, on_stage) -> dict:
    from ..autoregressive.train_lm import perplexity
    from ..nn.transformer import load_hf
    from ..text.generator import TextGenerator

    on_stage("GPT: one evaluation per token")
    gpt = TextGenerator(str(folder), dtype="float32")
    model = load_hf(folder)
    held_ids = torch.tensor(gpt.tokenizer.encode(bench.held_text, add_special_tokens=False))
    ppl = perplexity(model, held_ids, model.cfg.max_seq_len)
    calls = count_calls(gpt.lm)
    for n in TEXT_LENGTHS:
        calls[0] = 0
        runs = [gpt.complete(p, raw=True, max_new_tokens=n, ignore_eos=True, temperature=1.0, seed=i, speculative="off")
                for i, p in enumerate(TEXT_PROMPTS)]  # the plain loop: speculative decoding is a separate matter (docs/text-engines.md)
        s = sum(g.stats.total_s for g in runs) / len(runs)
        r.curves.setdefault("lm", []).append({"tokens": n, "nfe": calls[0] / len(runs), "s_per_sample": s})
    texts = [gpt.generate(p, raw=True, max_new_tokens=64, ignore_eos=True, temperature=1.0, seed=i)
             for i, p in enumerate(TEXT_PROMPTS * 2)]
    r.texts["lm"] = [p + t for p, t in zip(TEXT_PROMPTS * 2, texts)]
    r.unfolding["lm"] = [TEXT_PROMPTS[0] + gpt.generate(TEXT_PROMPTS[0], raw=True, max_new_tokens=n, ignore_eos=True,
                                                        temperature=1.0, seed=0) for n in (4, 8, 16, 32)]
    at64 = next(c for c in r.curves["lm"] if c["tokens"] == 64)
    return {"params": gpt.num_parameters, "nfe": at64["nfe"], "s_per_sample": at64["s_per_sample"], "perplexity": ppl,
            **bench.scores(r.texts["lm"])}


def measure_mdlm(folder: Path, bench: TextBench, r: Results, on_stage) -> dict:
    from ..diffusion.masked_lm import DiffusionLm

    dlm = DiffusionLm.load(folder)
    bound = dlm.perplexity_bound(bench.held_text)
    calls = count_calls(dlm.model)
    for steps in MDLM_STEPS:
        calls[0] = 0
        on_stage(f"masked-diffusion LM: {steps} unmasking steps for 64 tokens")
        outs, s = timed(lambda: [dlm.generate(p, tokens=64, steps=steps, seed=i) for i, p in enumerate(TEXT_PROMPTS * 2)])
        outs = [p + t for p, t in zip(TEXT_PROMPTS * 2, outs)]
        r.curves.setdefault("diffusion-lm", []).append({"steps": steps, "nfe": calls[0] / len(outs), "s_per_sample": s / len(outs),
                                                        **bench.scores(outs)})
        r.texts[f"diffusion-lm-{steps}"] = outs
    at64 = r.curves["diffusion-lm"][-1]
    r.texts["diffusion-lm"] = r.texts["diffusion-lm-64"]
    trajectory = list(dlm.unmask(TEXT_PROMPTS[0], tokens=32, steps=32, seed=0))
    r.unfolding["diffusion-lm"] = [dlm.show(trajectory[i]) for i in (7, 15, 23, 31)]
    return {"params": params(dlm.model), "nfe": at64["nfe"], "s_per_sample": at64["s_per_sample"], "perplexity_bound": bound,
            "judge_perplexity": at64["judge_perplexity"], "distinct_2": at64["distinct_2"]}


def count_calls(model) -> list[int]:
    """Count a model's passes from here on (one network evaluation each: `forward`, and `forward_all`
    where a text engine has it, which scores several positions in one pass): returns the counter."""
    counter = [0]

    def counting(method):
        def counted(*args, **kwargs):
            counter[0] += 1
            return method(*args, **kwargs)
        return counted

    for name in ("forward", "forward_all"):
        if hasattr(model, name):
            setattr(model, name, counting(getattr(model, name)))
    return counter


# --- the contenders: one adapter per family -----------------------------------------------

# Each family's training Run, imported only when a full compare retrains (training code is heavy to import).
def _gan_run():
    from ..gan.train import GanRun
    return GanRun


def _pixel_gpt_run():
    from ..autoregressive.train_pixel_gpt import ArImageRun
    return ArImageRun


def _diffusion_run():
    from ..diffusion.train import DiffusionRun
    return DiffusionRun


def _distill_run():
    from ..diffusion.distill import DistillRun
    return DistillRun


def _lm_run():
    from ..autoregressive.train_lm import LmRun
    return LmRun


def _mdlm_run():
    from ..diffusion.masked_lm import DiffusionLmRun
    return DiffusionLmRun


def _options(name: str) -> Callable[[dict], object]:
    """The family's options class (training/options.py) with its command's defaults, plus `every`."""
    def make(every: dict):
        from ..training import options

        return getattr(options, name)(**every)
    return make


def _digits_options(every: dict):
    from ..image.generator import DIGITS_OPTIONS  # how the bundled digits model was trained
    from ..training.options import DiffusionOptions

    return DiffusionOptions(**DIGITS_OPTIONS, **every)


CONTENDERS = (
    Contender("gan", "GAN", "digits-gan", "image", measure_gan, lambda quick: 1,
              _gan_run, _options("GanOptions"), marker="s"),
    Contender("ar-image", "autoregressive (pixel GPT)", "digits-ar", "image", measure_pixel_gpt, lambda quick: 1,
              _pixel_gpt_run, _options("ArImageOptions"), marker="^"),
    Contender("diffusion", "diffusion (UNet)", "digits", "image", measure_diffusion, lambda quick: len(DIFFUSION_SWEEP[quick]),
              _diffusion_run, _digits_options),
    Contender("distilled", "diffusion, distilled (1 step)", "digits-distilled", "image", measure_distilled,
              lambda quick: len(DISTILLED_STEPS), _distill_run, _options("DistillOptions"), marker="D", teacher="diffusion"),
    Contender("lm", "autoregressive (GPT)", "pydoc-gpt", "text", measure_gpt, lambda quick: 1,
              _lm_run, _options("LmOptions"), marker="s"),
    Contender("diffusion-lm", "masked diffusion (MDLM)", "pydoc-mdlm", "text", measure_mdlm, lambda quick: len(MDLM_STEPS),
              _mdlm_run, _options("DiffusionLmOptions")),
)
