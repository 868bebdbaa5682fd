"""genlab demo: the main job, offline, text and image side by side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from genlab.cli import app
from genlab.cli.text import Device, MaxNew, Model, _generator, _sampling
from genlab.progress import console

DEMO_PROMPT = "Explain transformer attention in simple terms"
DEMO_IMAGE_PROMPT = "a handwritten 7"


@app.command()
def demo(
    model: Model = "smollm2-135m-instruct",
    max_new_tokens: MaxNew = 200,
    device: Device = "auto",
    image_out: Annotated[Path, typer.Option("--image-out", help="Where to save the demo's digits.")] = Path("out/demo-digits.png"),
):
    """The main job, offline: an answer from the bundled LLM and digits from the bundled
    diffusion model, with their costs side by side."""
    console.rule("[bold]genlab demo: text")
    gen = _generator(model, device, "auto")
    console.print(f"[bold]{DEMO_PROMPT}[/]")
    from genlab.autoregressive.decode import DecodeStats

    stats = DecodeStats()
    for piece in gen.stream(DEMO_PROMPT, params=_sampling(max_new_tokens=max_new_tokens, temperature=0.0), stats=stats):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    text_line = (f"load {gen.load_s:.2f} s · first token {stats.ttft_s * 1000:.0f} ms · {stats.completion_tokens} tokens · "
                 f"{stats.decode_tokens_per_s:.1f} tokens/s ({gen.num_parameters / 1e6:.1f}M parameters, "
                 f"{str(gen.lm.dtype).removeprefix('torch.')})")

    console.rule("[bold]genlab demo: image")
    from genlab.image.canvas import sheet
    from genlab.image.generator import ImageGenerator, ImageRequest

    images = ImageGenerator(device=device)
    console.print(f"[bold]{DEMO_IMAGE_PROMPT}[/] (bundled digits diffusion model, DPM-Solver++ 20 steps, "
                  f"guidance {images.config.guidance}, seed 0)")
    result = images.run(ImageRequest(DEMO_IMAGE_PROMPT, n=8, steps=20, seed=0))
    image_out.parent.mkdir(parents=True, exist_ok=True)
    picture = sheet(result.images, 8)  # with its receipt: genlab replay can make it again
    picture.save(image_out)
    n_params = sum(p.numel() for p in images.model.parameters())
    image_line = (f"load {images.load_s:.2f} s · {result.model_calls} steps in {result.seconds:.2f} s · "
                  f"{result.steps_per_s:.1f} steps/s · {result.s_per_image:.3f} s/image ({n_params / 1e6:.2f}M parameters, "
                  f"{len(result.images)} images of {result.images[0].width}x{result.images[0].height}) -> {image_out}")
    console.rule("[bold]side by side")
    console.print(f"[bold]text [/] {text_line}")
    console.print(f"[bold]image[/] {image_line}")


