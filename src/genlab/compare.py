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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import check

FAMILIES = ("gan", "ar-image", "diffusion", "lm", "diffusion-lm")
ROW_STEPS = 20  # the diffusion model's row in the table: its default, DPM-Solver++ with 20 steps
TEXT_LENGTHS = (16, 32, 64, 120)  # GPT output lengths timed (64 is the table's row)
MDLM_STEPS = (8, 16, 32, 64)  # unmasking steps for 64 tokens (64 is the table's row)
TEXT_PROMPTS = ("The for statement", "Exceptions are", "A class definition", "The import system")
SAMPLES = {True: 250, False: 1000}  # images per image family: --quick, or the full run
DIFFUSION_SWEEP = {True: (1, 2, 5, 10, ROW_STEPS, 50), False: (1, 2, 5, 10, ROW_STEPS, 50, 100, 250)}  # steps timed and scored


@dataclass
class Models:
    """Where each family's trained model is: bundled with genlab, or a run folder of `compare` itself."""

    folders: dict[str, Path]
    train_seconds: dict[str, float] = field(default_factory=dict)  # measured in this run (full mode)
    resumed: list[str] = field(default_factory=list)  # full mode: runs that continued an earlier, interrupted compare

    @classmethod
    def bundled(cls) -> "Models":
        from .image.generator import TRAIN_COMMANDS
        from .store import bundled_weights

        made_by = {"gan": "genlab train gan --out runs/gan", "ar-image": "genlab train ar-image --out runs/ar-image",
                   "diffusion": TRAIN_COMMANDS["digits"],
                   "lm": "genlab train lm --out runs/lm", "diffusion-lm": "genlab train diffusion-lm --out runs/diffusion-lm"}
        names = {"gan": "digits-gan", "ar-image": "digits-ar", "diffusion": "digits-diffusion", "lm": "pydoc-gpt",
                 "diffusion-lm": "pydoc-mdlm"}
        return cls({f: bundled_weights(names[f], made_by[f]) for f in FAMILIES})


def stages(quick: bool) -> int:
    """How many times measure() calls on_stage: for a progress bar."""
    return 2 + len(DIFFUSION_SWEEP[quick]) + 1 + len(MDLM_STEPS)


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


# --- images ----------------------------------------------------------------------------

def measure(models: Models, quick: bool = True, on_stage: Callable[[str], None] = lambda s: None) -> Results:
    """Every measurement of the report, in one pass; `on_stage` hears what is running."""
    import platform

    start = time.perf_counter()
    r = Results(quick=quick, samples=SAMPLES[quick], resumed=models.resumed)
    from .text.engine import cpu_model

    r.machine = {"cpu": cpu_model() or platform.machine(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__}
    measure_images(models, r, on_stage)
    measure_text(models, r, on_stage)
    r.seconds = time.perf_counter() - start
    return r


def measure_images(models: Models, r: Results, on_stage) -> None:
    from .eval.digits import DigitClassifier, accuracy, diversity, fid
    from .image.data import digits, enlarge
    from .image.gan import Gan
    from .image.generator import ImageGenerator
    from .image.pixel_gpt import PixelGpt

    clf = DigitClassifier.bundled()
    held = digits(16, "test")
    held_feats = clf.features(held.x)
    labels = torch.arange(10).repeat_interleave(r.samples // 10)
    real_div = diversity(held_feats, held.labels)

    def quality(x: torch.Tensor) -> dict:
        f = clf.features(x)
        return {"fid": fid(f, held_feats), "accuracy": accuracy(clf, x, labels), "diversity": diversity(f, labels) / real_div}

    train = digits(16, "train")
    spread = torch.linspace(0, len(train.x) - 1, r.samples).long()  # across all writers, not the first few
    r.rows["real digits"] = {"modality": "image", "fid": fid(clf.features(train.x[spread]), held_feats),
                             "accuracy": accuracy(clf, held.x, held.labels),
                             "diversity": diversity(clf.features(train.x[spread]), train.labels[spread]) / real_div,
                             "note": f"{r.samples} training digits, spread over all writers, against the 360 held-out ones"}
    grid_labels = torch.arange(10).repeat(4)

    on_stage("GAN: one network evaluation per image")
    gan = Gan.load(models.folders["gan"])
    x, s = timed(lambda: gan.generate(labels, seed=1))
    r.rows["gan"] = {"modality": "image", "params": params(gan.generator), "nfe": 1, "s_per_sample": s / len(labels),
                     "train_seconds": models.train_seconds.get("gan", gan.info.get("train_seconds"))} | quality(x)
    r.images["gan"] = gan.generate(grid_labels, seed=0)
    r.logs["gan"] = gan.info.get("curve", [])

    on_stage("autoregressive pixel GPT: one evaluation per pixel")
    gpt = PixelGpt.load(models.folders["ar-image"])
    with torch.inference_mode():
        x, s = timed(lambda: gpt.generate(labels, seed=1))
        held8 = digits(8, "test")
        bits = gpt.bits_per_dim(held8.x, held8.labels)
    x = enlarge(x, 16)  # the other families learned the digits as 16x16 bilinear upsamplings: judge all alike
    r.rows["ar-image"] = {"modality": "image", "params": params(gpt.model), "nfe": gpt.side ** 2, "s_per_sample": s / len(labels),
                          "train_seconds": models.train_seconds.get("ar-image", gpt.info.get("train_seconds")),
                          "bits_per_dim": bits} | quality(x)
    r.images["ar-image"] = enlarge(gpt.generate(grid_labels, seed=0), 16)
    frames = list(gpt.unfold(torch.tensor([7]), seed=0))
    r.unfolding["ar-image"] = [partial_image(frames[i], gpt) for i in (7, 15, 23, 31, 39, 47, 55, 63)]  # 8, 16, ... pixels

    gen = ImageGenerator(str(models.folders["diffusion"]), dtype="float32")
    for steps in DIFFUSION_SWEEP[r.quick]:
        on_stage(f"diffusion: DPM-Solver++ with {steps} steps")
        (x, calls), s = timed(lambda: gen.class_samples(labels, steps, seed=1))
        point = {"steps": steps, "nfe": calls, "s_per_sample": s / len(labels)} | quality(x)
        r.curves.setdefault("diffusion", []).append(point)
    best = next(p for p in r.curves["diffusion"] if p["steps"] == ROW_STEPS)
    r.rows["diffusion"] = {"modality": "image", "params": params(gen.model), "nfe": best["nfe"],
                           "s_per_sample": best["s_per_sample"], "guidance": gen.config.guidance,
                           "train_note": _train_info(models.folders["diffusion"]).get("note"),
                           "train_seconds": models.train_seconds.get("diffusion", _train_info(models.folders["diffusion"]).get("train_seconds"))} | \
        {k: best[k] for k in ("fid", "accuracy", "diversity")}
    r.images["diffusion"], _ = gen.class_samples(grid_labels, ROW_STEPS, seed=0)
    result = gen.run(_request("7", steps=8, trajectory_frames=9))
    r.unfolding["diffusion"] = result.trajectory[1:]  # x_t after each of the 8 steps


def partial_image(tokens: torch.Tensor, gpt) -> torch.Tensor:
    """The pixel GPT's canvas part-way: drawn pixels as they are, the rest grey; (1, 16, 16)."""
    from .image.pixel_gpt import dequantise

    image = dequantise(tokens.clamp(min=0), gpt.levels, gpt.side)  # (1, 1, side, side)
    image.view(-1)[(tokens < 0).view(-1)] = -0.4
    return torch.nn.functional.interpolate(image, size=(16, 16), mode="nearest")[0]


def _request(prompt: str, **options):
    from .image.generator import ImageRequest

    return ImageRequest(prompt, seed=0, **options)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- text ------------------------------------------------------------------------------

def measure_text(models: Models, r: Results, on_stage) -> None:
    from .nn.transformer import load_hf
    from .text.generator import TextGenerator
    from .train.diffusion_lm import DiffusionLm
    from .train.lm import perplexity, read_corpus, split

    held_text = split(read_corpus("pydoc"))[1]
    judge = Judge()

    on_stage("GPT: one evaluation per token")
    gpt = TextGenerator(str(models.folders["lm"]), dtype="float32")
    model = load_hf(models.folders["lm"])
    context = model.cfg.max_seq_len
    held_ids = torch.tensor(gpt.tokenizer.encode(held_text, add_special_tokens=False))
    ppl = perplexity(model, held_ids, context)
    calls = count_calls(gpt.lm)
    for n in TEXT_LENGTHS:
        calls[0] = 0
        runs = [gpt.complete(p, raw=True, max_new_tokens=n, ignore_eos=True, temperature=1.0, seed=i)
                for i, p in enumerate(TEXT_PROMPTS)]
        s = sum(g.stats.total_s for g in runs) / len(runs)
        r.curves.setdefault("lm", []).append({"tokens": n, "nfe": calls[0] / len(runs), "s_per_sample": s})
    texts = [gpt.generate(p, raw=True, max_new_tokens=64, ignore_eos=True, temperature=1.0, seed=i)
             for i, p in enumerate(TEXT_PROMPTS * 2)]
    texts = [p + t for p, t in zip(TEXT_PROMPTS * 2, texts)]
    r.texts["lm"] = texts
    at64 = next(c for c in r.curves["lm"] if c["tokens"] == 64)
    r.rows["lm"] = {"modality": "text", "params": gpt.num_parameters, "nfe": at64["nfe"], "s_per_sample": at64["s_per_sample"],
                    "train_seconds": models.train_seconds.get("lm", _train_info(models.folders["lm"]).get("train_seconds")),
                    "perplexity": ppl, "judge_perplexity": judge.perplexity(texts), "distinct_2": distinct_2(texts, gpt.tokenizer)}
    r.unfolding["lm"] = [TEXT_PROMPTS[0] + gpt.generate(TEXT_PROMPTS[0], raw=True, max_new_tokens=n, ignore_eos=True,
                                                        temperature=1.0, seed=0) for n in (4, 8, 16, 32)]

    dlm = DiffusionLm.load(models.folders["diffusion-lm"])
    bound = dlm.perplexity_bound(held_text)
    calls = count_calls(dlm.model)
    for steps in MDLM_STEPS:
        calls[0] = 0
        on_stage(f"masked-diffusion LM: {steps} unmasking steps for 64 tokens")
        outs, s = timed(lambda: [dlm.generate(p, tokens=64, steps=steps, seed=i) for i, p in enumerate(TEXT_PROMPTS * 2)])
        outs = [p + t for p, t in zip(TEXT_PROMPTS * 2, outs)]
        r.curves.setdefault("diffusion-lm", []).append({"steps": steps, "nfe": calls[0] / len(outs), "s_per_sample": s / len(outs),
                                                        "judge_perplexity": judge.perplexity(outs),
                                                        "distinct_2": distinct_2(outs, gpt.tokenizer)})
        r.texts[f"diffusion-lm-{steps}"] = outs
    at64 = r.curves["diffusion-lm"][-1]
    r.rows["diffusion-lm"] = {"modality": "text", "params": params(dlm.model), "nfe": at64["nfe"], "s_per_sample": at64["s_per_sample"],
                              "train_seconds": models.train_seconds.get("diffusion-lm",
                                                                        _train_info(models.folders["diffusion-lm"]).get("train_seconds")),
                              "perplexity_bound": bound, "judge_perplexity": at64["judge_perplexity"],
                              "distinct_2": at64["distinct_2"]}
    r.texts["diffusion-lm"] = r.texts["diffusion-lm-64"]
    trajectory = list(dlm.unmask(TEXT_PROMPTS[0], tokens=32, steps=32, seed=0))
    r.unfolding["diffusion-lm"] = [dlm.show(trajectory[i]) for i in (7, 15, 23, 31)]
    real = _real_passages(held_text, len(texts))
    r.rows["real text"] = {"modality": "text", "judge_perplexity": judge.perplexity(real), "distinct_2": distinct_2(real, gpt.tokenizer),
                           "note": "held-out passages of about the same length, scored the same way"}


def count_calls(model) -> list[int]:
    """Count a model's forward calls from here on (one network evaluation each): returns the counter."""
    counter, forward = [0], model.forward

    def counted(*args, **kwargs):
        counter[0] += 1
        return forward(*args, **kwargs)

    model.forward = counted
    return counter


def _real_passages(text: str, n: int, chars: int = 300) -> list[str]:
    step = len(text) // n
    return [text[i * step:i * step + chars] for i in range(n)]


def _train_info(folder: Path) -> dict:
    import json

    path = Path(folder) / "genlab-train.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def distinct_2(texts: list[str], tokenizer) -> float:
    """Distinct bigrams over all bigrams of the samples' tokens (Li et al. 2016): 1 never repeats, near 0 loops."""
    pairs = [tuple(ids[i:i + 2]) for t in texts for ids in [tokenizer.encode(t, add_special_tokens=False)]
             for i in range(len(ids) - 1)]
    return len(set(pairs)) / max(1, len(pairs))


class Judge:
    """Generative perplexity: how surprising a text is to an independent language model, here
    SmolLM2-135M, bundled with genlab and trained on far more text than either model here."""

    def __init__(self):
        from .text.engine import load_language_model
        from .text.sources import DEFAULT_TEXT_MODEL, resolve

        self.lm = load_language_model(resolve(DEFAULT_TEXT_MODEL), dtype="float32")

    @torch.inference_mode()
    def perplexity(self, texts: list[str]) -> float:
        total, count = 0.0, 0
        for text in texts:
            ids = self.lm.tokenizer.encode(text, add_special_tokens=False)[:256]
            model = self.lm.model
            logits = model(torch.tensor([ids]), model.new_cache(len(ids)))[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
        return math.exp(total / max(1, count))

