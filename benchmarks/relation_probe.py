"""Why the text-to-image model misses relations: two measurements (docs/benchmarks.md, prompt adherence).

    python benchmarks/relation_probe.py [--model shapes] [--specs 40]

1. Does the UNet tell "A left of B" from "A right of B"? At the noisiest step the model's
   best guess is the mean latent of every picture that fits the caption. For each of
   `--specs` training captions, take the caption and its twin with the relation flipped
   ("a red circle to the right of a blue square"), and compare the change in the model's
   guess with the change in the data's mean latent (128 pictures each): their cosine, and
   the size of the model's change over the data's. The same for a single object's side
   ("on the left" against "on the right"), which the model does follow, as the control.
2. Can one cross-attention layer read the relation out of the frozen text encoder's states?
   A query for a side (left, right, top, bottom) attends over MiniLM's 32 token states of a
   relation caption and must name the colour of the object on that side. It trains on
   training phrasings and is scored on new captions in training and in held-out phrasings.

Writes docs/relation_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("GENLAB_QUIET", "1")

import torch  # noqa: E402

from genlab.image.canvas import from_pil  # noqa: E402
from genlab.image.generator import ImageGenerator  # noqa: E402
from genlab.diffusion.samplers import x0_and_eps  # noqa: E402
from genlab.data.shapes import COLORS, RELATIONS, ShapesWorld, describe, place, render  # noqa: E402

FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
        "left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def distinct_colored(kind: str, split: str, seed: int):
    """(index, scene, caption) for the examples of a kind whose objects all differ in colour, in order."""
    world, i = ShapesWorld(split, seed), 0
    while True:
        scene, caption = world.example(i)
        if scene.spec.kind == kind and len({w.color for w in scene.spec.objects}) == len(scene.spec.objects):
            yield i, scene, caption
        i += 1


def specs_of(kind: str, n: int, seed: int = 77) -> list:
    examples = distinct_colored(kind, "train", seed)
    return [next(examples)[1].spec for _ in range(n)]


@torch.no_grad()
def follows_flip(gen: ImageGenerator, specs: list, pictures: int = 128, noises: int = 32) -> dict[str, float]:
    """How the model's guess at t = T changes when the spec's side or relation flips, against the data's change."""
    m, schedule = gen.model, gen.schedule
    t = schedule.num_steps - 1
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    cosines, ratios = [], []
    for spec in specs:
        data, model = [], []
        for twin in (spec, replace(spec, where=FLIP[spec.where])):
            pixels = torch.cat([from_pil(render(place(twin, rng))) for _ in range(pictures)])
            data.append(m.encode(pixels).mean(0))
            z = torch.randn((noises, *m.sample_shape), generator=g)
            out = m(z, torch.full((noises,), t), **m.condition(describe(twin), noises))
            model.append(x0_and_eps(out, z, schedule.alpha_bar[t].item(), gen.config.prediction)[0].mean(0))
        d_data, d_model = (data[0] - data[1]).flatten(), (model[0] - model[1]).flatten()
        cosines.append(torch.nn.functional.cosine_similarity(d_data, d_model, dim=0).item())
        ratios.append((d_model.norm() / d_data.norm()).item())
    return {"cosine": sum(cosines) / len(cosines), "size_ratio": sum(ratios) / len(ratios), "specs": len(specs)}


def readout(encoder, steps: int = 1500, seed: int = 0) -> dict[str, float]:
    """Train one cross-attention layer (a side's query over the frozen token states) to name the colour on that side."""
    torch.manual_seed(seed)
    colors = list(COLORS)

    def examples(split: str, n: int):
        captions, sides, answers = [], [], []
        for i, scene, caption in distinct_colored("relation", split, 3 if split == "train" else 4):
            if len(captions) == n:
                break
            spec, which = scene.spec, (i + 1) % 2  # ask for the first object's side, or the second's
            captions.append(caption)
            sides.append(RELATIONS.index(spec.where) ^ which)  # the first object's side; 0/1 and 2/3 are opposites
            answers.append(colors.index(spec.objects[which].color))
        return encoder(captions)[0], torch.tensor(sides), torch.tensor(answers)

    train, fresh, heldout = examples("train", 4000), examples("train", 1000), examples("heldout-phrasing", 1000)
    query = torch.nn.Embedding(4, 64)
    attention = torch.nn.MultiheadAttention(64, 4, kdim=encoder.width, vdim=encoder.width, batch_first=True)
    head = torch.nn.Linear(64, len(colors))
    params = [*query.parameters(), *attention.parameters(), *head.parameters()]

    def predict(states, sides):
        out, _ = attention(query(sides)[:, None], states, states)
        return head(out[:, 0])

    opt = torch.optim.Adam(params, 1e-3)
    states, sides, answers = train
    for _ in range(steps):
        idx = torch.randint(len(states), (64,))
        loss = torch.nn.functional.cross_entropy(predict(states[idx], sides[idx]), answers[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        score = lambda d: (predict(d[0], d[1]).argmax(1) == d[2]).float().mean().item()  # noqa: E731
        return {"training_phrasings": score(fresh), "heldout_phrasings": score(heldout), "steps": steps}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--specs", type=int, default=40, help="captions per flip test")
    p.add_argument("--json", type=Path, default=Path("docs/relation_probe.json"))
    args = p.parse_args()

    gen = ImageGenerator(args.model)
    if not hasattr(gen.model, "encoder"):
        p.error(f"--model {args.model} is not a text-to-image model; the probe needs one trained on the shapes world")
    result = {"model": args.model,
              "relation_flip": follows_flip(gen, specs_of("relation", args.specs)),
              "side_flip": follows_flip(gen, specs_of("position", args.specs)),
              "text_readout": readout(gen.model.encoder)}
    for name in ("relation_flip", "side_flip"):
        r = result[name]
        print(f"{name:14s} cosine(model change, data change) {r['cosine']:+.2f}   model change / data change {r['size_ratio']:.2f}")
    r = result["text_readout"]
    print(f"text readout   colour on a side: {r['training_phrasings']:.0%} on training phrasings, {r['heldout_phrasings']:.0%} on held-out ones")
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
