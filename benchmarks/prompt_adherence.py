"""Prompt adherence of the text-to-image model, scored by genlab's pixel checker (eval/shapes.py).

    python benchmarks/prompt_adherence.py [--model shapes] [--prompts 300] [--sweep-prompts 120]
    python benchmarks/prompt_adherence.py --plan [--prompts 300]     # with and without the LLM's plan

For each prompt set it generates one picture per prompt at the default settings and asks
the checker whether the picture holds exactly what the prompt says (count, colours,
shapes, sizes, side or relation). Prompt sets, all drawn from data/shapes.py:
  - heldout-phrasing: sentence frames never seen in training (the issue's bar: >= 80% overall);
  - heldout-combo:    colour-shape pairs never seen in training (e.g. a purple triangle);
  - train:            training phrasings and combinations, fresh scenes (a reference).
Then two sweeps on held-out phrasings: adherence against guidance and against steps, plotted.
Writes docs/prompt_adherence.json and docs/prompt_adherence.png; docs/benchmarks.md quotes them.
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

from genlab.eval.shapes import adherence  # noqa: E402
from genlab.image.canvas import to_pil  # noqa: E402
from genlab.image.generator import ImageGenerator, guided  # noqa: E402
from genlab.diffusion.samplers import SAMPLERS, make_plan  # noqa: E402
from genlab.data.shapes import KINDS, ShapesWorld  # noqa: E402


def prompt_set(split: str, n: int, seed: int = 1):
    """n (caption, spec) pairs from a split, with a seed no training run uses."""
    world = ShapesWorld(split, seed=1000 + seed)
    examples = [world.example(i) for i in range(n)]
    return [c for _, c in examples], [s.spec for s, _ in examples]


@torch.inference_mode()
def draw(gen: ImageGenerator, prompts: list[str], steps: int, guidance: float, sampler: str, seed: int = 0, batch: int = 50,
         layouts: list | None = None):
    """The loop of ImageGenerator.stream, batched over many prompts: one picture per prompt.
    `layouts`: one per prompt, drawn through the control branch (genlab image --layout)."""
    from genlab.data.layouts import control_maps

    m, out = gen.model, []
    g = torch.Generator().manual_seed(seed)
    plan = make_plan(sampler, gen.schedule, steps, gen.config.prediction)
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        cond = {"states": torch.cat([m.condition(p, 1)["states"] for p in chunk])}
        uncond = m.null_condition(len(chunk))
        if layouts is not None:  # the inputs ImageGenerator.stream gives a layout request
            chunk_layouts = layouts[start:start + batch]
            maps = torch.stack([control_maps(lay) for lay in chunk_layouts])
            cond, uncond = m.with_control(cond, uncond, maps, chunk_layouts)
        denoise = guided(m, cond, uncond, guidance, gen.dtype)
        x = torch.randn((len(chunk), *m.sample_shape), generator=g)
        for step in SAMPLERS[sampler](denoise, x, plan, generator=g):
            x = step.xt
        out += to_pil(m.decode(x))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--prompts", type=int, default=300, help="prompts per prompt set")
    p.add_argument("--sweep-prompts", type=int, default=120, help="held-out prompts per point of each sweep")
    p.add_argument("--guidance-sweep", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 7.5])
    p.add_argument("--steps-sweep", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument("--json", type=Path, default=None, help="default: docs/prompt_adherence.json (--plan: "
                                                          "docs/prompt_adherence_plan.json)")
    p.add_argument("--plan", action="store_true", help="held-out phrasings with and without the LLM's plan "
                                                       "(genlab image --plan), per category; no sweeps")
    p.add_argument("--plot", type=Path, default=Path("docs/prompt_adherence.png"))
    args = p.parse_args()
    args.json = args.json or Path("docs/prompt_adherence_plan.json" if args.plan else "docs/prompt_adherence.json")

    gen = ImageGenerator(args.model)
    steps, guidance, sampler = gen.default_steps, gen.config.guidance, gen.default_sampler
    print(f"model {args.model}: defaults {sampler}, {steps} steps, guidance {guidance}", flush=True)
    if args.plan:
        return with_and_without_plan(gen, args, steps, guidance, sampler)
    rows = {}
    for split in ("heldout-phrasing", "heldout-combo", "train"):
        prompts, specs = prompt_set(split, args.prompts)
        start = time.perf_counter()
        scores = adherence(draw(gen, prompts, steps, guidance, sampler), specs)
        rows[split] = scores | {"seconds": time.perf_counter() - start}
        print(f"{split:17} " + " ".join(f"{k} {scores.get(k, float('nan')):.2f}" for k in (*KINDS, "overall")), flush=True)
    prompts, specs = prompt_set("heldout-phrasing", args.sweep_prompts, seed=2)
    by_guidance = {w: adherence(draw(gen, prompts, steps, w, sampler), specs)["overall"] for w in args.guidance_sweep}
    print("guidance sweep: " + ", ".join(f"{w}: {a:.2f}" for w, a in by_guidance.items()), flush=True)
    by_steps = {n: adherence(draw(gen, prompts, n, guidance, sampler), specs)["overall"] for n in args.steps_sweep}
    print("steps sweep: " + ", ".join(f"{n}: {a:.2f}" for n, a in by_steps.items()), flush=True)
    summary = {"command": " ".join(["python"] + sys.argv), "model": args.model, "sampler": sampler, "steps": steps,
               "guidance": guidance, "prompts": args.prompts, "sets": rows, "sweep_prompts": args.sweep_prompts,
               "by_guidance": by_guidance, "by_steps": by_steps}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
    bar = rows["heldout-phrasing"]["overall"]
    print(f"held-out phrasings, overall adherence {bar:.1%} (bar: 80%)")
    plot(by_guidance, by_steps, args.plot)


def with_and_without_plan(gen, args, steps: int, guidance: float, sampler: str) -> None:
    """Held-out phrasings drawn from the caption (the plain model) and from the LLM's plan (genlab image --plan):
    adherence per category, the same prompts, seeds and defaults."""
    from genlab.errors import GenlabError
    from genlab.llm_to_image import planner, write_plan

    prompts, specs = prompt_set("heldout-phrasing", args.prompts)
    start = time.perf_counter()
    plain = adherence(draw(gen, prompts, steps, guidance, sampler), specs)
    plain_s = time.perf_counter() - start
    writer, start, layouts, failed = planner(), time.perf_counter(), [], 0
    for i, p in enumerate(prompts):
        try:
            layouts.append(write_plan(p, writer, seed=i)[1])
        except GenlabError:  # no drawable plan: counted as a miss (an empty picture fails every check)
            from genlab.data.layouts import Layout

            failed += 1
            layouts.append(Layout.parse({"objects": [{"color": "red", "shape": "circle", "box": [0, 0, 8, 8]}]}))
    plan_s = time.perf_counter() - start
    start = time.perf_counter()
    planned = adherence(draw(gen, [lay.prompt() for lay in layouts], steps, guidance, sampler, layouts=layouts), specs)
    draw_s = time.perf_counter() - start
    for name, scores in (("without plan", plain), ("with plan", planned)):
        print(f"{name:13} " + " ".join(f"{k} {scores.get(k, float('nan')):.2f}" for k in (*KINDS, "overall")), flush=True)
    print(f"planning {plan_s / len(prompts):.2f} s/prompt ({failed} prompts without a drawable plan); drawing {draw_s:.0f} s, "
          f"plain {plain_s:.0f} s")
    summary = {"command": " ".join(["python"] + sys.argv), "model": args.model, "sampler": sampler, "steps": steps,
               "guidance": guidance, "prompts": args.prompts, "without_plan": plain, "with_plan": planned,
               "plan_failures": failed, "plan_s_per_prompt": plan_s / len(prompts)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))


def plot(by_guidance: dict, by_steps: dict, path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(list(by_guidance), list(by_guidance.values()), marker="o")
    a.set(xlabel="guidance scale", ylabel="adherence (held-out phrasings)", ylim=(0, 1), title="against guidance")
    b.plot(list(by_steps), list(by_steps.values()), marker="o")
    b.set(xlabel="sampling steps", xscale="log", ylim=(0, 1), title="against steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
