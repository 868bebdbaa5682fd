"""DiT against UNet: the two denoisers of `genlab train diffusion` and `text2image`, trained for the same wall-clock time.

    python benchmarks/dit_vs_unet.py [--seconds 420] [--shapes-seconds 480] [--samples 1000] [--prompts 150]
                                     [--json docs/dit_vs_unet.json]

Each backbone trains on the digits exactly as the bundled model was (8x8, shown 16x16,
v-prediction, cosine schedule, EMA), with `genlab train diffusion`'s defaults otherwise. The
budget is equal time, not equal steps: each backbone first times 40 steps, and its run gets
as many steps as fit in --seconds at that speed, so both finish their cosine learning-rate
schedule. Then both are scored the way benchmarks/image_quality.py scores the bundled model:
DPM-Solver++ at 20 steps, their shared default guidance, 1000 samples, FID and class accuracy
from genlab's digit classifier against the 360 held-out digits.

Shapes (text-to-image): the same for `genlab train text2image`, on the bundled shapes model's
VAE, with its defaults but a pool of --images captioned pictures (encoding the pool and the
prompt layout's warm-up are the same for both and not counted in the budget). Scored as
benchmarks/prompt_adherence.py scores the bundled model: one picture per held-out phrasing
(--prompts of them) at the model's defaults (DDPM, 50 steps, guidance 5), checked by genlab's
pixel checker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GENLAB_QUIET", "1")

import torch  # noqa: E402

from genlab.data.digits import digits  # noqa: E402
from genlab.data.shapes import KINDS  # noqa: E402
from genlab.diffusion.train_text2image import Text2ImageRun  # noqa: E402
from genlab.eval.shapes import adherence  # noqa: E402
from genlab.registry import locate  # noqa: E402
from genlab.training.options import Text2ImageOptions  # noqa: E402
from genlab.diffusion.train import DiffusionRun  # noqa: E402
from genlab.eval.digits import DigitClassifier, accuracy, fid  # noqa: E402
from genlab.image.generator import DIGITS_OPTIONS, ImageGenerator  # noqa: E402
from genlab.training.options import DiffusionOptions  # noqa: E402
from genlab.training.run import fit  # noqa: E402


def steps_per_second(backbone: str, folder: Path, probe: int = 40) -> float:
    run = DiffusionRun.create(folder, DiffusionOptions(**{**DIGITS_OPTIONS, "steps": probe}, backbone=backbone,
                                                       checkpoint_every=10**6, sample_every=0))
    stats = list(run.steps())
    timed = stats[10:]  # the first steps warm the allocator up
    return len(timed) / sum(s.seconds for s in timed)


def train(backbone: str, steps: int, folder: Path) -> dict:
    run = DiffusionRun.create(folder, DiffusionOptions(**{**DIGITS_OPTIONS, "steps": steps}, backbone=backbone,
                                                       checkpoint_every=steps, sample_every=0))
    start = time.perf_counter()
    for s in fit(run):
        if s.step % 500 == 0:
            print(f"  {backbone} step {s.step}/{steps} loss {s.loss:.4f}", flush=True)
    return {"steps": steps, "train_seconds": time.perf_counter() - start,
            "params": sum(p.numel() for p in run.model.parameters())}


def train_shapes(backbone: str, seconds: float, images: int, folder: Path) -> dict:
    vae = str(locate("shapes").path / "vae")
    probe = Text2ImageRun.create(folder / "probe", Text2ImageOptions(vae=vae, images=256, steps=30, layout_warmup=0,
                                                                     backbone=backbone, sample_every=0, checkpoint_every=10**6))
    timed = list(probe.steps())[5:]
    rate = len(timed) / sum(s.seconds for s in timed)
    steps = int(rate * seconds)
    print(f"shapes {backbone}: {rate:.2f} steps/s -> {steps} steps in {seconds:.0f} s", flush=True)
    run = Text2ImageRun.create(folder / "run", Text2ImageOptions(vae=vae, images=images, steps=steps, backbone=backbone,
                                                                 sample_every=0, checkpoint_every=steps))
    run.prepare()
    run.warm_layout()
    start = time.perf_counter()
    for s in fit(run):
        if s.step % 500 == 0:
            print(f"  shapes {backbone} step {s.step}/{steps} loss {s.loss:.4f}", flush=True)
    return {"backbone": backbone, "steps_per_s": rate, "steps": steps, "train_seconds": time.perf_counter() - start,
            "params": sum(p.numel() for p in run.model.net.parameters())}


def shapes_rows(args) -> list[dict]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("prompt_adherence", Path(__file__).with_name("prompt_adherence.py"))
    pa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pa)
    prompts, specs = pa.prompt_set("heldout-phrasing", args.prompts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in ("unet", "dit"):
            row = train_shapes(backbone, args.shapes_seconds, args.images, Path(tmp) / backbone)
            gen = ImageGenerator(str(Path(tmp) / backbone / "run"))
            scores = adherence(pa.draw(gen, prompts, gen.default_steps, gen.config.guidance, gen.default_sampler), specs)
            row |= {"adherence": scores}
            rows.append(row)
            print(f"shapes {backbone}: {row['params'] / 1e6:.2f}M parameters, {row['steps']} steps in "
                  f"{row['train_seconds']:.0f} s, held-out adherence " + " ".join(f"{k} {scores.get(k, float('nan')):.2f}"
                                                                                  for k in (*KINDS, "overall")), flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=420, help="digits: training time per backbone")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--shapes-seconds", type=float, default=480, help="shapes: training time per backbone; 0 = skip shapes")
    p.add_argument("--images", type=int, default=10000, help="shapes: captioned pictures in the training pool")
    p.add_argument("--prompts", type=int, default=150, help="shapes: held-out phrasings scored")
    p.add_argument("--json", type=Path, default=Path("docs/dit_vs_unet.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    clf = DigitClassifier.bundled()
    held = digits(16, "test")
    held_feats = clf.features(held.x)
    labels = torch.arange(10).repeat_interleave(args.samples // 10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in ("unet", "dit"):
            rate = steps_per_second(backbone, Path(tmp) / f"probe-{backbone}")
            steps = int(rate * args.seconds)
            print(f"{backbone}: {rate:.1f} steps/s -> {steps} steps in {args.seconds:.0f} s", flush=True)
            row = {"backbone": backbone, "steps_per_s": rate} | train(backbone, steps, Path(tmp) / backbone)
            gen = ImageGenerator(str(Path(tmp) / backbone))
            start = time.perf_counter()
            x, calls = gen.class_samples(labels, 20, "dpmpp", seed=1)
            row |= {"sample_s_per_image": (time.perf_counter() - start) / len(labels), "fid": fid(clf.features(x), held_feats),
                    "accuracy": accuracy(clf, x, labels)}
            rows.append(row)
            print(f"{backbone}: {row['params'] / 1e6:.2f}M parameters, {row['steps']} steps in {row['train_seconds']:.0f} s, "
                  f"FID {row['fid']:.2f}, accuracy {row['accuracy']:.3f}, {row['sample_s_per_image'] * 1e3:.2f} ms/image", flush=True)
    unet, dit = rows
    print(f"digits, DiT/UNet at equal time: FID {dit['fid']:.2f} vs {unet['fid']:.2f} ({dit['fid'] / unet['fid']:.2f}x)", flush=True)
    shapes = shapes_rows(args) if args.shapes_seconds else []
    from genlab.text.engine import cpu_model

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "cpu": cpu_model(), "seconds": args.seconds,
                                     "samples": args.samples, "rows": rows, "shapes_seconds": args.shapes_seconds,
                                     "prompts": args.prompts, "shapes": shapes}, indent=1))
    if shapes:
        a, b = (r["adherence"]["overall"] for r in shapes)
        print(f"shapes, DiT/UNet at equal time: held-out adherence {b:.2f} vs {a:.2f}")


if __name__ == "__main__":
    main()
