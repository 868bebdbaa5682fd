"""genlab image: generate pictures with a diffusion model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genlab.cli import app
from genlab.progress import console, step_progress


def read_layout(value: str | None):
    """--layout: a file, or the JSON itself (data/layouts.py checks what it holds)."""
    if value is None or value.lstrip().startswith(("{", "[")):
        return value
    from genlab.cli import read_text_file

    return read_text_file("--layout", value)


@app.command()
def image(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw: 'a red circle above a blue square' (the shapes model), or a "
                                                         "digit, '7', 'seven' or 'a handwritten 7' (the digits model). With "
                                                         "--layout it may be left out: the layout's objects are named.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="A bundled image model (digits, digits-distilled, shapes, digits-gan, digits-ar: "
                                                 "`genlab models` lists them), a folder from genlab train diffusion, text2image, gan, "
                                                 "ar-image or genlab distill, or a diffusers pipeline folder (e.g. Stable Diffusion). "
                                                 "[default: digits for a prompt naming a digit, else shapes]")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddpm, ddim, dpmpp (DPM-Solver++ 2M), dpmpp-sde (its stochastic form), euler, heun, or reflow "
                                                        "(a distilled student's). [default: the model's: ddpm for shapes, dpmpp for digits, reflow for "
                                                        "digits-distilled; a diffusers pipeline keeps its own]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (heun calls the model about twice per step). "
                                                      "[default: the model's: 50 for shapes, 20 for digits and diffusers pipelines, 4 for digits-distilled]")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale: 1 = off, higher follows the prompt "
                                                           "harder. [default: the model's, 1.25 for digits]")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option("--negative-prompt", help="What to steer away from (replaces the unconditional branch).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives the same PNG. Default: random, printed.")] = None,
    n: Annotated[int, typer.Option("-n", help="How many images; more than one are saved as a grid.")] = 1,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output PNG file.")] = Path("image.png"),
    init_image: Annotated[Optional[str], typer.Option("--init-image", help="img2img: start from this picture instead of pure noise.")] = None,
    strength: Annotated[float, typer.Option(help="img2img: how much to change the init image, 0 (none) to 1 (all).")] = 0.75,
    mask: Annotated[Optional[str], typer.Option(help="Inpainting (with --init-image): white pixels are redrawn, black ones kept.")] = None,
    layout: Annotated[Optional[str], typer.Option(metavar="FILE|JSON", help="Spatial control (shapes model): a JSON layout, "
                                                  "{\"objects\": [{\"color\": \"red\", \"shape\": \"circle\", \"box\": "
                                                  "[x0, y0, x1, y1]}, ...]}, boxes in pixels of the 32x32 picture; a file or the JSON itself.")] = None,
    control: Annotated[Optional[str], typer.Option(metavar="PNG", help="Spatial control (shapes model): a sketch, edge map or "
                                                   "mask, light on dark or dark on white, square; the prompt gives the colours.")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="The bundled LLM plans the prompt's layout (each object's colour, "
                                                      "shape and box) and the control branch draws it, as genlab imagine "
                                                      "--plan; the plan is printed and saved next to --out.")] = False,
    control_scale: Annotated[float, typer.Option("--control-scale", help="How strongly --layout or --control steers: 0 = not "
                                                                         "at all, 1 = as trained, up to 2.")] = 1.0,
    trajectory: Annotated[Optional[Path], typer.Option(help="Also save a strip of x_t from noise to image at evenly spaced steps.")] = None,
    frames: Annotated[int, typer.Option(help="Frames in the --trajectory strip.")] = 8,
    eta: Annotated[float, typer.Option(help="DDIM only: 0 = deterministic, 1 = as noisy as DDPM.")] = 0.0,
    scale: Annotated[int, typer.Option(help="Enlarge the saved PNG by this factor (nearest neighbour), e.g. 8 to see 16x16 "
                                            "digits; 1 keeps the model's size, so the PNG equals the Python API's.")] = 1,
    adapter: Annotated[Optional[str], typer.Option(help="A LoRA adapter folder from genlab finetune image, merged into "
                                                        "the model's UNet.")] = None,
    adapter_scale: Annotated[float, typer.Option("--adapter-scale", help="How much of the adapter to apply: 0 = none, "
                                                                         "1 = as trained.")] = 1.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16 (float16 for diffusers pipelines on cuda).")] = "auto",
):
    """Generate an image from a prompt and save it as a PNG.

    Example: genlab image "a handwritten 7" --steps 20 --seed 0 --out seven.png
    Layout: genlab image --layout examples/layouts/two.json (boxes with colours and shapes; the shapes model)
    """
    from genlab.errors import check, check_number
    from genlab.image.canvas import grid, save_pngs, sheet, upscale
    from genlab.image.generator import ImageGenerator, ImageRequest, pick_model
    from genlab.diffusion.diffusers_pipeline import check_pipeline_sampler
    from genlab.registry import locate
    from genlab.store import check_writable

    check(out.suffix.lower() == ".png", f"--out must end in .png, got {str(out)!r}")
    check(trajectory is None or trajectory.suffix.lower() == ".png", f"--trajectory must end in .png, got {str(trajectory)!r}")
    check(frames >= 2, f"--frames must be at least 2, got {frames}")
    check(1 <= scale <= 64, f"--scale must be between 1 and 64, got {scale}")
    check_number("--adapter-scale", adapter_scale, 0, 4)
    for path, what in ((out, "--out"), (trajectory, "--trajectory")):  # before the work, not after it
        if path:
            check_writable(path, what)
    check(not (plan and layout), "give --plan or --layout, not both: --plan writes the layout from the prompt")
    if plan:
        check(bool(prompt and prompt.strip()), "--plan needs a prompt to plan, e.g. 'there is a small blue circle below a big red triangle'")
        from genlab.llm_to_image import planner, write_plan

        text, planned = write_plan(prompt, planner(), seed or 0)
        console.print(f"plan: {text}", markup=False)
        layout, prompt = text, ""  # the plan's objects become the caption, as the control branch learned them
    request = ImageRequest(prompt or "", n=n, sampler=sampler, steps=steps, guidance=guidance, negative_prompt=negative_prompt,
                           seed=seed, eta=eta, init_image=init_image, strength=strength, mask=mask,
                           trajectory_frames=frames if trajectory else 0, layout=read_layout(layout),
                           control=control, control_scale=control_scale)
    model = model or pick_model(request.prompt)
    if locate(model, "image").kind.name == "diffusers-pipeline":  # before loading it, which prints diffusers' own output
        check_pipeline_sampler(sampler)
    gen = ImageGenerator(model, device=device, dtype=dtype, adapter=adapter, adapter_scale=adapter_scale)
    request = gen.filled(request)
    gen.check_prompt(request)  # one line now, not after the model has run
    with step_progress(gen.default_sampler if request.sampler is None else request.sampler, request.steps or gen.default_steps) as update:
        result = gen.run(request, on_step=lambda s: update(s.index, f"step {s.index}/{s.total}"))
    pictures = [(sheet(result.images, scale), out, "--out")]  # with its receipt (receipts.py)
    if trajectory:
        pictures.append((upscale(grid(result.trajectory, columns=len(result.trajectory)), scale), trajectory, "--trajectory"))
    save_pngs(pictures)  # both or neither
    if plan:
        from genlab.cli.imagine import save_plan

        save_plan(request.layout, out)
    console.print(f"saved {out}" + (f" and {trajectory}" if trajectory else "") + f" · {result.model_calls} model calls "
                  f"in {result.seconds:.2f} s ({result.steps_per_s:.1f} steps/s, {result.s_per_image:.2f} s/image) · "
                  f"load {gen.load_s:.2f} s · seed {result.seed}")
