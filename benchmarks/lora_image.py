"""LoRA evidence for images: teach the bundled digits model a bold stroke style.

    python benchmarks/lora_image.py        # writes the data, trains, measures; ~8 min on 2 cores

The data is written by this script: the digits model's own training digits (16x16) with
their strokes thickened by a 3x3 grey dilation, one folder per class. `genlab finetune
image` trains a LoRA adapter on it. Then 400 samples (40 per digit, same seeds) from the
base model and from the adapter are compared on two numbers: ink (the share of pixels
brighter than mid-grey, which bold strokes raise) and class accuracy by genlab's digit
classifier (the samples must still be the digit asked for). Writes docs/lora_image.json and
the before/after grid docs/lora_image.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_PER_DIGIT = 40


def write_bold_digits(folder: Path) -> torch.Tensor:
    """The training digits, strokes thickened; returns them as (N, 1, 16, 16) in [-1, 1]."""
    from scipy.ndimage import grey_dilation

    from genlab.image.canvas import to_pil
    from genlab.data.digits import digits

    data = digits(16, "train")
    bold = torch.tensor(grey_dilation(data.x.numpy(), size=(1, 1, 3, 3)))
    for i, (x, label) in enumerate(zip(bold, data.labels)):
        path = folder / str(int(label)) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        to_pil(x[None])[0].save(path)
    return bold


def ink(x: torch.Tensor) -> float:
    """Share of pixels brighter than mid-grey; x in [-1, 1]."""
    return float((x > 0).float().mean())


def samples(adapter: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    from genlab.image.canvas import from_pil
    from genlab.image.generator import ImageGenerator

    gen = ImageGenerator("digits", adapter=str(adapter) if adapter else None)
    xs, labels = [], []
    for digit in range(10):
        images = gen.generate(str(digit), n=SAMPLES_PER_DIGIT, steps=20, seed=digit)
        xs += [from_pil(im) for im in images]
        labels += [digit] * len(images)
    return torch.cat(xs), torch.tensor(labels)


def main() -> None:
    from genlab.eval.digits import DigitClassifier, accuracy
    from genlab.image.canvas import grid, to_pil, upscale

    data_folder, out = ROOT / "runs" / "bold-digits", ROOT / "runs" / "lora-bold"
    bold = write_bold_digits(data_folder)
    command = [sys.executable, "-m", "genlab", "finetune", "image", "--data", str(data_folder), "--model", "digits",
               "--targets", "all-linear,conv1,conv2", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, GENLAB_QUIET="1"))
    seconds = time.perf_counter() - start
    classifier = DigitClassifier.bundled()
    from genlab.data.digits import digits

    real = digits(16, "train")
    rows = {"real digits": (real.x, real.labels), "bold digits (the training data)": (bold, real.labels)}
    rows["base model"] = samples(None)
    rows["base model + LoRA adapter"] = samples(out / "adapter")
    report = {"command": "python benchmarks/lora_image.py", "cpu_count": os.cpu_count(),
              "train": {"command": "genlab " + " ".join(command[3:]).replace(str(ROOT) + "/", ""), "seconds": seconds},
              "rows": {name: {"ink": ink(x), "class_accuracy": accuracy(classifier, x, y)} for name, (x, y) in rows.items()}}
    (ROOT / "docs" / "lora_image.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["rows"], indent=1))
    picks = [d * SAMPLES_PER_DIGIT + k for k in range(3) for d in range(10)]  # 3 rows of 0..9, same seeds
    strips = [to_pil(rows["base model"][0][picks]), to_pil(rows["base model + LoRA adapter"][0][picks])]
    figure = grid([grid(s, columns=10) for s in strips], columns=2, pad=4)
    upscale(figure, 4).save(ROOT / "docs" / "lora_image.png")


if __name__ == "__main__":
    main()
