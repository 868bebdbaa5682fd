"""Spatial control: how many objects of held-out layouts are drawn inside their box, in the right colour and shape.

    python benchmarks/layout_control.py [--model shapes] [--layouts 60] [--json docs/layout_control.json]

Held-out layouts (data/layouts.py's random_layout under seeds training never drew: 1-3 objects, boxes
9-16 pixels, every colour and shape) are drawn by the model at its default sampler, steps and guidance,
seed = layout index, three ways in one run:
  * prompt only: the layout's caption ("a red circle and a blue square"), no control: the baseline;
  * layout: the boxes through the control branch (`genlab image --layout`);
  * sketch: the layout's silhouettes as a sketch, with the caption (`genlab image "..." --control`).
The checker (eval/shapes.py's detect, data/layouts.py's placed) reads each picture's objects from
its pixels and scores each layout object: an object of its colour and shape, centred in its box,
within 2 pixels of it. Figures: docs/control.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENLAB_QUIET", "1")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--layouts", type=int, default=60)
    ap.add_argument("--modes", default="prompt,layout,sketch")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    import tempfile

    from PIL import Image

    from genlab.data.layouts import placed, random_layout
    from genlab.diffusion.control import sketch_of
    from genlab.eval.shapes import detect
    from genlab.image.generator import ImageGenerator

    gen = ImageGenerator(args.model)
    layouts = [random_layout(random.Random(f"heldout/{i}")) for i in range(args.layouts)]
    tmp = Path(tempfile.mkdtemp())
    results = {}
    for mode in args.modes.split(","):
        verdicts, by_count, start = [], {}, time.perf_counter()
        for i, lay in enumerate(layouts):
            if mode == "prompt":
                [image] = gen.generate(lay.prompt(), seed=i)
            elif mode == "layout":
                [image] = gen.generate("", layout=lay, seed=i)
            else:
                path = tmp / f"sketch-{i}.png"
                Image.fromarray((sketch_of(lay, outline=i % 2 == 1).numpy() * 255).astype("uint8")).save(path)
                [image] = gen.generate(lay.prompt(), control=str(path), seed=i)
            ok = placed(detect(image), lay)
            verdicts += ok
            by_count.setdefault(len(lay.objects), []).extend(ok)
        results[mode] = {"objects": len(verdicts), "placed": sum(verdicts), "rate": sum(verdicts) / len(verdicts),
                         "by_objects": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_count.items())},
                         "seconds": round(time.perf_counter() - start, 1)}
        r = results[mode]
        print(f"{mode:7} {r['placed']:4d} of {r['objects']} objects placed ({r['rate']:.1%}); by objects per layout "
              f"{r['by_objects']}; {r['seconds']} s")
    if args.json:
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from grammar_engines import _cpu

        Path(args.json).write_text(json.dumps({"cpu": _cpu(), "model": args.model, "layouts": args.layouts,
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
