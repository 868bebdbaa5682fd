"""Image quality: FID and class accuracy of the bundled digits model, per sampler and step count.

    python benchmarks/image_quality.py [--samples 1000] [--steps 5 10 20 50 1000] [--dtype bfloat16]
                                       [--long-samplers ddpm] [--sweep 1 1.25 1.5 2 3] [--seeds 3]

For every sampler and step count it generates `samples` digits (an equal number of each
class, the model's default guidance, fixed seeds), and measures with genlab's bundled digit classifier
(genlab/eval/digits.py):
  - FID against the 360 held-out real digits, next to the real-vs-real floor
    (the same number of real training digits against the same held-out set);
  - class accuracy: the share of samples the classifier calls the digit that was asked for.
It prints a table, writes it as JSON, and plots FID against steps (docs/image_quality.png).
Then the guidance sweep: DPM-Solver++ at 20 steps for each --sweep scale, drawn with --seeds
different seeds, which shows both how guidance trades FID for accuracy and how far FID moves
between seeds alone (the noise in every other figure).
Runs above 100 steps cost ~10-20 minutes each on 2 cores; --long-samplers limits them to
the samplers named (e.g. only the DDPM reference).
The figures in docs/benchmarks.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GENLAB_QUIET", "1")

import torch  # noqa: E402

from genlab.eval.digits import DigitClassifier, accuracy, fid, real_floor  # noqa: E402
from genlab.data.digits import digits  # noqa: E402
from genlab.image.generator import ImageGenerator  # noqa: E402
from genlab.diffusion.samplers import SAMPLERS  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 1000])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    p.add_argument("--long-samplers", nargs="+", default=list(SAMPLERS), help="samplers to run above 100 steps")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's")
    p.add_argument("--sweep", type=float, nargs="*", default=[1.0, 1.25, 1.5, 2.0, 3.0], help="guidance scales for the sweep")
    p.add_argument("--seeds", type=int, default=3, help="seeds per guidance scale in the sweep")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16 (faster on CPUs with AVX-512 BF16)")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--json", type=Path, default=Path("docs/image_quality.json"))
    p.add_argument("--plot", type=Path, default=Path("docs/image_quality.png"))
    p.add_argument("--update", action="store_true", help="keep the --json rows of samplers not run now (same settings only)")
    args = p.parse_args()

    torch.manual_seed(0)
    gen = ImageGenerator(dtype=args.dtype)
    args.guidance = gen.config.guidance if args.guidance is None else args.guidance
    clf = DigitClassifier.bundled()
    res = gen.model.pixel_shape[-1]  # the pictures' size (the bundled model denoises 8x8 and draws 16x16)
    held_out = digits(res, "test")
    held_feats = clf.features(held_out.x)
    floor = real_floor(clf, res, args.samples)
    labels = torch.arange(10).repeat_interleave(args.samples // 10)
    print(f"{args.samples} samples per row, guidance {args.guidance}, {args.dtype}; "
          f"classifier accuracy on held-out real digits {accuracy(clf, held_out.x, held_out.labels):.3f}; "
          f"real-vs-real FID floor {floor:.2f}", flush=True)
    print(f"{'sampler':8} {'steps':>5} {'calls':>5} {'FID':>7} {'accuracy':>8} {'seconds':>8}", flush=True)
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            if steps > 100 and sampler not in args.long_samplers:
                continue
            start = time.perf_counter()
            x, calls = gen.class_samples(labels, steps, sampler, args.guidance, seed=1, batch=args.batch)
            seconds = time.perf_counter() - start
            row = {"sampler": sampler, "steps": steps, "model_calls": calls,
                   "fid": fid(clf.features(x), held_feats), "accuracy": accuracy(clf, x, labels), "seconds": seconds}
            rows.append(row)
            print(f"{sampler:8} {steps:5d} {row['model_calls']:5d} {row['fid']:7.2f} {row['accuracy']:8.3f} {seconds:8.1f}", flush=True)
    commands = [" ".join(["python"] + sys.argv)]
    if args.update and args.json.exists():
        old = json.loads(args.json.read_text())
        same = (old["samples"], old["guidance"], old["dtype"]) == (args.samples, args.guidance, args.dtype)
        assert same, "--update needs the same --samples, --guidance and --dtype as the earlier run"
        rows = [r for r in old["rows"] if r["sampler"] not in args.samplers] + rows
        rows.sort(key=lambda r: (list(SAMPLERS).index(r["sampler"]), r["steps"]))
        commands = old["commands"] + commands
    sweep = guidance_sweep(gen, clf, held_feats, labels, args) if args.sweep else []
    summary = {"samples": args.samples, "guidance": args.guidance, "dtype": args.dtype, "fid_floor": floor,
               "commands": commands, "rows": rows, "guidance_sweep": sweep}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
    ref = next((r for r in rows if r["sampler"] == "ddpm" and r["steps"] == 1000), None)
    dpm = next((r for r in rows if r["sampler"] == "dpmpp" and r["steps"] == 20), None)
    if ref and dpm:
        print(f"DPM-Solver++ 20 steps FID {dpm['fid']:.2f} vs DDPM 1000 steps {ref['fid']:.2f}: "
              f"{100 * (dpm['fid'] / ref['fid'] - 1):+.1f}%")
    plot(rows, floor, args.plot)


def guidance_sweep(gen, clf, held_feats, labels, args) -> list[dict]:
    """DPM-Solver++ at 20 steps for each guidance scale, each drawn with seeds 1..args.seeds."""
    print(f"guidance sweep: dpmpp 20 steps, seeds 1-{args.seeds}", flush=True)
    print(f"{'guidance':>8} {'FID mean':>8} {'FID min':>7} {'FID max':>7} {'accuracy':>8}", flush=True)
    out = []
    for g in args.sweep:
        fids, accs = [], []
        for seed in range(1, args.seeds + 1):
            x, _ = gen.class_samples(labels, 20, "dpmpp", g, seed=seed, batch=args.batch)
            fids.append(fid(clf.features(x), held_feats))
            accs.append(accuracy(clf, x, labels))
        row = {"guidance": g, "fids": fids, "accuracies": accs}
        out.append(row)
        print(f"{g:8.2f} {sum(fids) / len(fids):8.2f} {min(fids):7.2f} {max(fids):7.2f} {sum(accs) / len(accs):8.3f}", flush=True)
    return out


def plot(rows, floor, path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        pts = [(r["steps"], r["fid"]) for r in rows if r["sampler"] == sampler]
        ax.plot(*zip(*pts), marker="o", label=sampler)
    ax.axhline(floor, color="grey", linestyle="--", label="real vs real")
    ax.set(xscale="log", yscale="log", xlabel="sampling steps", ylabel="FID (digit-classifier features)",
           title="genlab digits model: FID against steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
