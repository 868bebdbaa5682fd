"""genlab compare: GAN, autoregressive and diffusion models, on images and on text, measured side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli import app
from genlab.progress import console, stage_progress


@app.command()
def compare(
    quick: Annotated[bool, typer.Option("--quick", help="Measure the bundled models (about 2 minutes) instead of retraining "
                                                        "every family from scratch first (about 80 minutes on 2 cores).")] = False,
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.html, the PNG figures and results.json "
                                           "(and, without --quick, the training runs under runs/).")] = Path("compare"),
):
    """Train (or load) every generative family on the same data and measure them side by side.

    Images, scikit-learn's digits: a GAN, an autoregressive pixel GPT, a diffusion model and
    its distilled 1-step student. Text, Python's documentation: a GPT and a masked-diffusion
    LM. For each: parameters, training time, wall time and network evaluations per sample, FID,
    class accuracy, diversity, bits/dim or perplexity; plots of cost and quality against
    compute; and a verdict on popular claims ("diffusion is slower", "GANs are unstable",
    "distillation closes diffusion's speed gap to the GAN", ...).

    Example: genlab compare --quick --out compare && open compare/report.html
    """
    from genlab.compare.measure import Models, measure, stages
    from genlab.compare.report import write
    from genlab.store import writable_folder

    writable_folder(out, "--out")
    if quick:
        models = Models.bundled()
    else:
        models = retrain(out / "runs")
    with stage_progress("measuring", stages(quick)) as advance:
        results = measure(models, quick=quick, on_stage=advance)
    path = write(results, out)
    console.print(f"report written to {path} and {path.with_suffix('.html')} ({results.seconds:.0f} s of measuring)")


def retrain_options() -> dict:
    """Each family's options: its command's defaults (the diffusion model's those of the bundled digits model), no samples."""
    from genlab.compare.measure import CONTENDERS

    every = {"checkpoint_every": 500, "sample_every": 0}
    return {c.key: c.options(every) for c in CONTENDERS}


def retrain(runs: Path):
    """Train each family with its command's defaults into runs/<family>; an interrupted compare resumes each run."""
    import dataclasses

    from genlab.cli.train import train
    from genlab.compare.measure import CONTENDERS, Models
    from genlab.training.loop import Trainer

    folders, seconds, resumed = {}, {}, []
    options = retrain_options()
    for c in CONTENDERS:
        out, run_class = runs / c.key, c.run()
        resuming = Trainer.latest(out / "checkpoints") is not None
        if c.teacher:  # the distilled student learns from the teacher retrained just before it
            options[c.key] = dataclasses.replace(options[c.key], teacher=str(folders[c.teacher].resolve()))
        run = run_class.resume(out) if resuming else run_class.create(out, options[c.key])
        if resuming:
            resumed.append(c.key)
        console.print(f"[{c.key}] " + ("resuming" if resuming else "training") + f" in {out}, step {run.trainer.step} "
                      f"of {run.trainer.config.steps}")
        train(run)
        # a distilled student's cost includes its teacher drawing the pairs (its teacher's own training is its own row)
        folders[c.key], seconds[c.key] = out / "model", run.trainer.seconds + (getattr(run, "pairs_seconds", None) or 0)
    return Models(folders, seconds, resumed)
