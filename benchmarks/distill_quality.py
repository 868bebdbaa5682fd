"""The distilled digits student against its teacher and the GAN: quality and time per image, in one run.

    python benchmarks/distill_quality.py [--student digits-distilled] [--samples 1000] [--json docs/distill.json]

Quality is scored as benchmarks/image_quality.py scores the bundled model: `samples` digits
(an equal number of each class, seed 1), FID and class accuracy from genlab's digit classifier
against the 360 held-out digits. Rows:
  - the teacher (digits) with its default, DPM-Solver++ at 20 steps and guidance 1.25;
  - the student at 1, 2 and 4 reflow steps (guidance distilled in: one evaluation a step);
  - the GAN (one generator pass).
Time per image is measured two ways: all samples in batches of 500 (throughput), and one
image at a time over 50 images (what a client of `genlab serve` waits for). Each is the best
of --repeats, taken in turns (teacher, student 1/2/4, GAN, then again; the batched rounds
first), so that every row sees the same machine; a first untimed pass warms each up, as a running server is (the denoiser
traces its network once an input shape is hot: diffusion/denoiser.py). The bars of the
distillation issue are printed as ratios at the end.
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

from genlab.data.digits import digits  # noqa: E402
from genlab.eval.digits import DigitClassifier, accuracy, diversity, fid  # noqa: E402
from genlab.gan.model import Gan  # noqa: E402
from genlab.image.generator import ImageGenerator  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="digits-distilled")
    p.add_argument("--teacher", default="digits")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=Path("docs/distill.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    clf = DigitClassifier.bundled()
    held = digits(16, "test")
    held_feats, real_div = clf.features(held.x), diversity(clf.features(held.x), held.labels)
    labels = torch.arange(10).repeat_interleave(args.samples // 10)
    one_by_one = torch.arange(50) % 10

    def score(x: torch.Tensor) -> dict:
        f = clf.features(x)
        return {"fid": fid(f, held_feats), "accuracy": accuracy(clf, x, labels), "diversity": diversity(f, labels) / real_div}

    rows, timers = [], []  # timers: (batched, one at a time) per row

    def diffusion_row(name: str, gen: ImageGenerator, steps: int):
        x, calls = gen.class_samples(labels, steps, seed=1)
        rows.append({"model": name, "sampler": gen.default_sampler, "steps": steps, "nfe": calls} | score(x))
        timers.append((lambda: gen.class_samples(labels, steps, seed=1),
                       lambda: [gen.class_samples(one_by_one[i:i + 1], steps, seed=i) for i in range(len(one_by_one))]))

    with torch.inference_mode():
        teacher = ImageGenerator(args.teacher, dtype="float32")
        diffusion_row(args.teacher, teacher, teacher.default_steps)
        student = ImageGenerator(args.student, dtype="float32")
        for steps in (1, 2, 4):
            diffusion_row(args.student, student, steps)
        gan = Gan.bundled()
        rows.append({"model": "digits-gan", "sampler": "generator", "steps": 1, "nfe": 1} | score(gan.generate(labels, seed=1)))
        timers.append((lambda: [gan.generate(chunk, seed=1) for chunk in labels.split(500)],
                       lambda: [gan.generate(one_by_one[i:i + 1], seed=i) for i in range(len(one_by_one))]))
        for _, single in timers:
            single()  # the warm-up pass
        best = [[float("inf"), float("inf")] for _ in timers]
        for way in (0, 1):  # all the batched rounds, then all the one-at-a-time ones
            for _ in range(args.repeats):
                for b, fns in zip(best, timers):
                    b[way] = min(b[way], seconds(fns[way]))
        for row, (batched, single) in zip(rows, best):
            row |= {"s_per_image_batched": batched / len(labels), "s_per_image_single": single / len(one_by_one)}

    print(f"{'model':18} {'steps':>5} {'evals':>5} {'FID':>6} {'accuracy':>8} {'diversity':>9} {'ms/img batched':>14} {'ms/img alone':>12}")
    for r in rows:
        print(f"{r['model']:18} {r['steps']:5d} {r['nfe']:5d} {r['fid']:6.2f} {r['accuracy']:8.3f} {r['diversity']:9.2f} "
              f"{r['s_per_image_batched'] * 1e3:14.3f} {r['s_per_image_single'] * 1e3:12.3f}")
    teacher_row, s1, s4, gan_row = rows[0], rows[1], rows[3], rows[-1]
    bars = {"fid_1_over_teacher": s1["fid"] / teacher_row["fid"], "fid_4_over_teacher": s4["fid"] / teacher_row["fid"],
            "accuracy_1": s1["accuracy"], "accuracy_4": s4["accuracy"],
            "time_1_over_gan_batched": s1["s_per_image_batched"] / gan_row["s_per_image_batched"],
            "time_1_over_gan_single": s1["s_per_image_single"] / gan_row["s_per_image_single"]}
    print(f"FID at 1 step {bars['fid_1_over_teacher']:.3f}x the teacher's (bar <= 1.3), at 4 steps "
          f"{bars['fid_4_over_teacher']:.3f}x (bar <= 1.1); accuracy {bars['accuracy_1']:.3f} and {bars['accuracy_4']:.3f} "
          f"(bar >= 0.98); time per image at 1 step {bars['time_1_over_gan_batched']:.2f}x the GAN's batched, "
          f"{bars['time_1_over_gan_single']:.2f}x one at a time (bar <= 3)")
    from genlab.text.engine import cpu_model

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "cpu": cpu_model(), "samples": args.samples,
                                     "rows": rows, "bars": bars}, indent=1))


if __name__ == "__main__":
    main()
