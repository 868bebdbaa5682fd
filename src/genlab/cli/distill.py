"""genlab distill: a few-step student of a diffusion model (diffusion/distill.py), on the shared training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli import app
from genlab.cli.train import Resume, options_command, start, train, where
from genlab.progress import console
from genlab.training import options as opts


@options_command("distill", opts.DistillOptions, app=app)
def distill(
    out: Annotated[Path, typer.Option(help="Run folder: pairs.safetensors (the teacher's pairs), checkpoints/, samples/ "
                                           "(rows: 1, 2 and 4 steps) and model/ (use it with genlab image --model).")]
    = Path("runs/distill"),
    resume: Resume = False,
    given: dict = None,
):
    """Distill a diffusion model into a student that draws in 1 to 4 steps (rectified-flow reflow).

    The teacher draws noise/image pairs with its own sampler, then the student, which starts as a
    copy of the teacher, learns the straight path from each noise to its image. Guidance is
    distilled in: the student makes one network evaluation per step.

    Example: genlab distill --teacher digits --out runs/digits-distilled
    Then:    genlab image "a handwritten 7" --model runs/digits-distilled --steps 1
    """
    from genlab.diffusion.distill import DistillRun

    run = start(DistillRun, out, resume, given)
    rec = run.student.config.distilled
    console.print(f"student of {rec['teacher']!r} · {len(run.pairs['z'])} pairs ({rec['teacher_sampler']}, "
                  f"{rec['teacher_steps']} steps, guidance {rec['guidance']}) · {where(run)}")
    train(run)
    console.print(f"student saved in {out / 'model'}; try: genlab image {_example(run)!r} --model {out} --steps 1")


def _example(run) -> str:
    if run.conditions.prompts:
        return run.conditions.prompts[0]
    return (run.student.config.class_names or ["anything"])[-1]
