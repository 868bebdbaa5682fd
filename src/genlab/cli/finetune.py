"""genlab finetune text|image (LoRA) and genlab merge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genlab.cli import app
from genlab.cli.train import check_every, fit
from genlab.progress import console

finetune_app = typer.Typer(no_args_is_help=True, help="Fine-tune a model with LoRA adapters (the base stays frozen).")
app.add_typer(finetune_app, name="finetune")

Rank = Annotated[Optional[int], typer.Option(help="LoRA rank r: the size of the low-rank update. [default: 8]")]
Alpha = Annotated[Optional[float], typer.Option(help="LoRA alpha: the update is scaled by alpha / r. [default: 2 x rank]")]
Dropout = Annotated[Optional[float], typer.Option(help="Dropout on the adapter's input while training. [default: 0.05]")]
Targets = Annotated[Optional[str], typer.Option(help="Layers to adapt: all-linear, or names such as q_proj,v_proj "
                                                     "(an unknown name lists the valid ones). [default: all-linear]")]
Steps = Annotated[Optional[int], typer.Option(help="Optimizer steps in total (instead of --epochs); with --resume, a larger "
                                                   "total extends the run.")]
Lr = Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Examples per step.")]
Seed = Annotated[Optional[int], typer.Option(help="Seed for the adapter's initial weights and every draw. [default: 0]")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint and the adapter every N steps.")]
Resume = Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out, bit for bit.")]

TEXT_DEFAULTS = {"model": "smollm2-135m-instruct", "rank": 8, "alpha": None, "dropout": 0.05, "targets": "all-linear",
                 "epochs": 3, "steps": None, "lr": 1e-3, "batch_size": 8, "max_length": 512, "seed": 0, "eval": None}


@finetune_app.command("text")
def finetune_text(
    data: Annotated[Optional[Path], typer.Option(help="Training data: plain text (learn to continue it), or .jsonl with "
                                                      'one {"messages": [...]} per line (learn the assistant replies).')] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Base model: bundled name, .gguf, HF folder or hub id. "
                                                                       "[default: smollm2-135m-instruct]")] = None,
    rank: Rank = None,
    alpha: Alpha = None,
    dropout: Dropout = None,
    targets: Targets = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data (sets --steps). [default: 3]")] = None,
    steps: Steps = None,
    lr: Lr = None,
    batch_size: BatchSize = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Tokens per example: plain text is cut into "
                                                      "windows this long; a longer conversation is an error. [default: 512]")] = None,
    seed: Seed = None,
    eval: Annotated[Optional[Path], typer.Option("--eval", help="Held-out data in the same format: its loss is reported "
                                                                "before and after.")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and adapter/ (a PEFT folder).")] = Path("runs/lora-text"),
    checkpoint_every: CheckpointEvery = 100,
    resume: Resume = False,
):
    """Teach a language model something new with LoRA: train small adapters, keep the base frozen.

    Example: genlab finetune text --data examples/velmora/train.jsonl --eval examples/velmora/heldout.jsonl --out runs/velmora
    Then:    genlab text "Where is Velmora?" --adapter runs/velmora/adapter
    """
    from genlab.errors import check
    from genlab.train.lora_text import TextLoraRun

    check_every(checkpoint_every, checkpoint_every)
    absolute = lambda p: str(p.expanduser().resolve()) if p else None  # noqa: E731  (so --resume works from anywhere)
    given = {k: v for k, v in dict(data=absolute(data), model=model, rank=rank, alpha=alpha, dropout=dropout,
                                   targets=targets, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size,
                                   max_length=max_length, seed=seed, eval=absolute(eval)).items() if v is not None}
    if resume:
        run = TextLoraRun.resume(out, given)
    else:
        check(data is not None, "--data is required: a plain-text file or a .jsonl file of chat messages")
        options = TEXT_DEFAULTS | given
        check(options["epochs"] > 0, f"--epochs must be positive, got {options['epochs']}")
        check(options["batch_size"] >= 1, f"--batch-size must be at least 1, got {options['batch_size']}")
        check(options["steps"] is None or options["steps"] >= 1, f"--steps must be at least 1, got {options['steps']}")
        check(options["max_length"] >= 2, f"--max-length must be at least 2, got {options['max_length']}")
        run = TextLoraRun.create(out, options)
    _describe(run, f"{len(run.examples)} examples from {run.options['data']}")
    before = run.held_out_loss() if run.trainer.step == 0 else None
    fit(run, out, checkpoint_every, checkpoint_every)
    after = run.held_out_loss()
    if after is not None:
        console.print(f"held-out loss {'' if before is None else f'{before:.4f} -> '}{after:.4f} on {run.options['eval']}")
    console.print(f"adapter saved in {out / 'adapter'}; try: genlab chat --model {run.options['model']} --adapter {out / 'adapter'}")


IMAGE_DEFAULTS = {"model": "digits", "rank": 8, "alpha": None, "dropout": 0.0, "targets": "all-linear", "steps": 600,
                  "lr": 1e-3, "batch_size": 64, "seed": 0}


@finetune_app.command("image")
def finetune_image(
    data: Annotated[Optional[str], typer.Option(help="'digits' or a folder of images, one subfolder per class named as "
                                                     "the model's classes ('0'..'9' for digits).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Base diffusion model: digits or a `genlab train "
                                                                       "diffusion` folder. [default: digits]")] = None,
    rank: Rank = None,
    alpha: Alpha = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout on the adapter's input while training. [default: 0]")] = None,
    targets: Annotated[Optional[str], typer.Option(help="Layers to adapt: all-linear (attention and linear layers), names "
                                                        "such as to_q,to_v, or convolutions too: all-linear,conv1,conv2. "
                                                        "[default: all-linear]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total; with --resume, a larger total extends the "
                                                      "run. [default: 600]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay). [default: 1e-3]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per step. [default: 64]")] = None,
    seed: Seed = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and adapter/ (a PEFT folder).")] = Path("runs/lora-image"),
    checkpoint_every: CheckpointEvery = 200,
    resume: Resume = False,
):
    """Teach a diffusion model a new style with LoRA, trained with the same denoising loss as from scratch.

    Example: genlab finetune image --data runs/bold-digits --model digits --targets all-linear,conv1,conv2 --out runs/bold
    Then:    genlab image "7" --adapter runs/bold/adapter
    """
    from genlab.errors import check
    from genlab.train.lora_image import ImageLoraRun

    check_every(checkpoint_every, checkpoint_every)
    folder = data if data in (None, "digits") else str(Path(data).expanduser().resolve())  # so --resume works from anywhere
    given = {k: v for k, v in dict(data=folder, model=model, rank=rank, alpha=alpha, dropout=dropout, targets=targets,
                                   steps=steps, lr=lr, batch_size=batch_size, seed=seed).items() if v is not None}
    if resume:
        run = ImageLoraRun.resume(out, given)
    else:
        check(data is not None, "--data is required: 'digits' or a folder of images in class subfolders")
        run = ImageLoraRun.create(out, IMAGE_DEFAULTS | given)  # TrainConfig checks the numbers
    _describe(run, f"{len(run.data.x)} images from {run.options['data']}", run.model.unet)
    fit(run, out, checkpoint_every, checkpoint_every)
    console.print(f"adapter saved in {out / 'adapter'}; try: genlab image {(run.model.config.class_names or ['anything'])[-1]!r} "
                  f"--model {run.options['model']} --adapter {out / 'adapter'}")


def _describe(run, what: str, peft_model=None) -> None:
    peft_model = peft_model or run.model
    trainable = sum(p.numel() for p in run.trainer.params)
    total = sum(p.numel() for p in run.model.parameters())
    console.print(f"{what} · LoRA r={run.options['rank']} on {', '.join(sorted(peft_model.peft_config['default'].target_modules))} · "
                  f"{trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f}%) · "
                  + ("resuming at step " if run.trainer.step else "training from step ")
                  + f"{run.trainer.step} of {run.trainer.config.steps}")


@app.command()
def merge(
    adapter: Annotated[Path, typer.Option(help="A LoRA adapter folder (from genlab finetune text).")],
    out: Annotated[Path, typer.Option(help="Folder for the merged model (a Hugging Face model folder).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The base model. [default: the one the adapter "
                                                                       "records]")] = None,
):
    """Merge a LoRA adapter into its base model and save the result as an ordinary model folder.

    Example: genlab merge --adapter runs/velmora/adapter --out models/velmora, then genlab text "..." --model models/velmora
    """
    import shutil

    from safetensors.torch import load_file, save_file

    from genlab.errors import check
    from genlab.lora import Adapter, merge_into
    from genlab.store import atomic_dir
    from genlab.text.sources import resolve

    lora = Adapter.load(adapter)
    base = model or lora.base_model
    check(base, f"--adapter {str(adapter)!r} does not record its base model; give --model")
    lora.check_base(base)
    folder = resolve(base)
    check(not out.exists() or not any(out.iterdir()), f"--out {str(out)!r} exists and is not empty; choose a new folder")
    shards = {f.name: load_file(str(f)) for f in sorted(folder.glob("*.safetensors"))}
    merged = merge_into({k: v for shard in shards.values() for k, v in shard.items()}, lora)  # every layer, whichever shard
    with atomic_dir(out) as tmp:
        for f in folder.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        for name, shard in shards.items():  # the same files, the same keys in each
            save_file({k: merged[k].contiguous() for k in shard}, str(tmp / name), metadata={"format": "pt"})
    console.print(f"merged {adapter} into {base}: {out} (use it with --model {out})")
