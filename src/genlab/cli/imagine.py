"""genlab imagine: the bundled LLM writes a prompt, the text-to-image model draws it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genlab.cli import app
from genlab.progress import console


def plan_path(out: Path) -> Path:
    """Where a picture's plan is saved: next to it, picture.plan.json."""
    return out.with_suffix(".plan.json")


def save_plan(layout, out: Path) -> None:
    import json

    from genlab.store import atomic_write_bytes

    atomic_write_bytes(plan_path(out), (json.dumps(layout.to_json(), indent=1) + "\n").encode())


@app.command()
def imagine(
    idea: Annotated[str, typer.Argument(help="Anything, in your own words: 'something that looks like a traffic light'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output PNG file.")] = Path("imagine.png"),
    seed: Annotated[int, typer.Option(help="Seed for the LLM's retry and for the image; the same seed gives the same PNG.")] = 0,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps. [default: the image model's, 50 for shapes]")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale. [default: the image model's]")] = None,
    text_model: Annotated[str, typer.Option("--text-model", help="The LLM that writes the prompt (see genlab models).")] = "smollm2-135m-instruct",
    image_model: Annotated[str, typer.Option("--image-model", help="The text-to-image model: 'shapes' or a folder from "
                                                                   "genlab train text2image.")] = "shapes",
    scale: Annotated[int, typer.Option(help="Enlarge the saved PNG by this factor (nearest neighbour).")] = 1,
    plan: Annotated[bool, typer.Option("--plan", help="The LLM plans the layout (JSON: each object's colour, shape and box, "
                                                      "constrained by the layout's schema) and the control branch draws "
                                                      "it; the plan is printed and saved next to the PNG (.plan.json).")] = False,
):
    """Turn an idea into a picture: the LLM writes a prompt in the image model's vocabulary, diffusion draws it.

    Example: genlab imagine "something that looks like a traffic light" --out light.png --scale 8
    """
    import time

    from genlab.errors import check, check_text
    from genlab.image.canvas import save_png, sheet
    from genlab.image.generator import ImageGenerator, ImageRequest
    from genlab.llm_to_image import imagine as run
    from genlab.store import check_writable
    from genlab.text.generator import TextGenerator

    check(out.suffix.lower() == ".png", f"--out must end in .png, got {str(out)!r}")
    check(1 <= scale <= 64, f"--scale must be between 1 and 64, got {scale}")
    check_text("the idea", idea)
    ImageRequest("the idea", steps=steps, guidance=guidance, seed=seed)  # the picture's checks, before both models load
    check_writable(out, "--out")
    start = time.perf_counter()
    if plan:
        from genlab.llm_to_image import planner

        writer = planner(text_model)
    else:
        writer = TextGenerator(text_model)
    painter = ImageGenerator(image_model)
    load_s = time.perf_counter() - start
    result = run(idea, seed=seed, steps=steps, guidance=guidance, text_generator=writer, image_generator=painter, plan=plan)
    save_png(sheet([result.image], scale), out)
    if plan:
        save_plan(result.plan, out)
    console.print(f"LLM {'planned' if plan else 'wrote'}:{' ' if plan else '    '}{result.llm_text}", markup=False)
    console.print(f"image prompt:  {result.prompt}" + (f" (plan saved in {plan_path(out)})" if plan else ""), markup=False)
    console.print(f"saved {out} · LLM {result.llm_seconds:.2f} s · diffusion {result.image_seconds:.2f} s · "
                  f"loading both models {load_s:.2f} s · seed {seed}", markup=False)
