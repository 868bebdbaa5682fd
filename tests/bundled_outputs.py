"""What each bundled model generates for fixed seeds, recorded before the code around it moves.

    python tests/bundled_outputs.py --record     # write tests/data/bundled_outputs.json
    pytest tests/test_bundled_outputs.py          # the same seeds must still give the same outputs

Images are kept as their uint8 pixels (base64), text as token ids and text. Run through the
Python API the models had when recorded; tests/test_bundled_outputs.py calls `outputs()`.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

RECORD = Path(__file__).parent / "data" / "bundled_outputs.json"


def _pixels(images) -> dict:
    import numpy as np

    arrays = [np.asarray(im, dtype=np.uint8) for im in images]
    stack = np.stack(arrays)
    return {"shape": list(stack.shape), "pixels": base64.b64encode(stack.tobytes()).decode()}


def _tensor_images(x) -> list:
    from genlab.image.canvas import to_pil

    return to_pil(x)


def outputs(names: list[str] | None = None) -> dict:
    """name -> what that bundled model generates for fixed seeds (JSON-ready)."""
    import torch

    out = {}
    want = lambda n: names is None or n in names  # noqa: E731
    if want("digits"):
        from genlab import ImageGenerator

        out["digits"] = _pixels(ImageGenerator("digits").generate("7", n=2, seed=0))
    if want("shapes"):
        from genlab import ImageGenerator

        out["shapes"] = _pixels(ImageGenerator("shapes").generate("a red circle above a blue square", seed=0))
    if want("digits-gan"):
        from genlab.gan.model import Gan

        out["digits-gan"] = _pixels(_tensor_images(Gan.bundled().generate(torch.tensor([7, 3]), seed=0)))
    if want("digits-ar"):
        from genlab.autoregressive.pixel_gpt import PixelGpt

        out["digits-ar"] = _pixels(_tensor_images(PixelGpt.bundled().generate(torch.tensor([7, 3]), seed=0)))
    if want("pydoc-gpt"):
        from genlab import TextGenerator

        gen = TextGenerator("pydoc-gpt", dtype="float32")
        # sampled through the plain loop, whose draws these seeds recorded; greedy through the default
        # (speculative) path, which must write the plain loop's tokens
        r = gen.complete("The for statement", raw=True, max_new_tokens=24, temperature=0.8, seed=0, speculative="off")
        g = gen.complete("The for statement", raw=True, max_new_tokens=24, temperature=0)
        out["pydoc-gpt"] = {"sampled": [t.token_id for t in r.tokens], "greedy": [t.token_id for t in g.tokens]}
    if want("pydoc-mdlm"):
        from genlab.store import bundled_weights
        from genlab.diffusion.masked_lm import DiffusionLm

        lm = DiffusionLm.load(bundled_weights("pydoc-mdlm", "genlab train diffusion-lm"))
        *_, last = lm.unmask("The for statement", tokens=24, steps=24, temperature=1.0, seed=0)
        out["pydoc-mdlm"] = {"ids": last.ids.tolist()}
    if want("smollm2-135m-instruct"):
        from genlab import TextGenerator

        gen = TextGenerator("smollm2-135m-instruct", dtype="float32")
        g = gen.complete("What is a KV cache?", max_new_tokens=24, temperature=0)
        r = gen.complete("Write a haiku about CPUs", max_new_tokens=24, temperature=0.7, seed=0, speculative="off")
        out["smollm2-135m-instruct"] = {"greedy": [t.token_id for t in g.tokens], "sampled": [t.token_id for t in r.tokens]}
    return out


if __name__ == "__main__":
    if "--record" not in sys.argv:
        sys.exit("usage: python tests/bundled_outputs.py --record")
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(outputs(), indent=1) + "\n")
    print(f"wrote {RECORD}")
