"""genlab replay: make an output again from the receipt it carries, and check it is byte-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genlab.cli import app
from genlab.progress import console


@app.command()
def replay(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="PNGs genlab wrote, or JSON from genlab text "
                                                                       "--json or a saved server answer.")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (images; text uses the device it was made on).")] = "auto",
    init_image: Annotated[Optional[Path], typer.Option("--init-image", help="The picture an edit started from "
                                                       "(a receipt names it by its SHA-256 only).")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="The mask an inpainting used.")] = None,
    control: Annotated[Optional[Path], typer.Option(help="The sketch a controlled picture followed.")] = None,
):
    """Make each output again from its receipt and check that it is the same, byte for byte.

    Example: genlab image "a handwritten 7" --seed 3 --out seven.png && genlab replay seven.png
    Exit code 0 when every file matched, 1 when one differs or its model's weights have changed since.
    """
    import sys

    from genlab.replay import WeightsChanged, replay as run

    differ = 0
    for path in files:
        try:
            done = run(path, device=device, init_image=init_image, mask=mask, control=control)
        except WeightsChanged as e:
            console.print(f"{path.name}: {e}", markup=False, soft_wrap=True)
            differ += 1
            continue
        console.print(done.line(), markup=False, soft_wrap=True)
        differ += not done.same
    sys.exit(1 if differ else 0)
