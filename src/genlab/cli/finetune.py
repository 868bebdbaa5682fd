"""genlab finetune text|image (LoRA) and genlab merge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genlab.cli import app
from genlab.cli.train import Resume, options_command, start, train
from genlab.progress import console
from genlab.training import options as opts

finetune_app = typer.Typer(no_args_is_help=True, help="Fine-tune a model with LoRA adapters (the base stays frozen).")
app.add_typer(finetune_app, name="finetune")



@options_command("text", opts.TextLoraOptions, finetune_app)
def finetune_text(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and adapter/ (a PEFT folder).")] = Path("runs/lora-text"),
    resume: Resume = False,
    given: dict = None,
):
    """Teach a language model something new with LoRA: train small adapters, keep the base frozen.

    Example: genlab finetune text --data examples/velmora/train.jsonl --eval examples/velmora/heldout.jsonl --out runs/velmora
    Then:    genlab text "Where is Velmora?" --adapter runs/velmora/adapter
    """
    from genlab.lora.train_text import TextLoraRun

    run = start(TextLoraRun, out, resume, given)
    _describe(run, f"{len(run.examples)} examples from {run.options.data}")
    before = run.held_out_loss() if run.trainer.step == 0 else None
    train(run)
    after = run.held_out_loss()
    if after is not None:
        console.print(f"held-out loss {'' if before is None else f'{before:.4f} -> '}{after:.4f} on {run.options.eval}")
    console.print(f"adapter saved in {out / 'adapter'}; try: genlab chat --model {run.options.model} --adapter {out / 'adapter'}")


@options_command("image", opts.ImageLoraOptions, finetune_app)
def finetune_image(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, samples/ and adapter/ (a PEFT folder).")] = Path("runs/lora-image"),
    resume: Resume = False,
    given: dict = None,
):
    """Teach a diffusion model a new style with LoRA, trained with the same denoising loss as from scratch.

    Example: genlab finetune image --data runs/bold-digits --model digits --targets all-linear,conv1,conv2 --out runs/bold
    Then:    genlab image "7" --adapter runs/bold/adapter
    """
    from genlab.lora.train_image import ImageLoraRun

    run = start(ImageLoraRun, out, resume, given)
    _describe(run, f"{len(run.data.x)} images from {run.options.data}", run.model.unet)
    train(run)
    console.print(f"adapter saved in {out / 'adapter'}; try: genlab image {(run.model.config.class_names or ['anything'])[-1]!r} "
                  f"--model {run.options.model} --adapter {out / 'adapter'}")


def _describe(run, what: str, peft_model=None) -> None:
    peft_model = peft_model or run.model
    trainable = sum(p.numel() for p in run.trainer.params)
    total = sum(p.numel() for p in run.model.parameters())
    console.print(f"{what} · LoRA r={run.options.rank} on {', '.join(sorted(peft_model.peft_config['default'].target_modules))} · "
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

    from safetensors.torch import save_file

    from genlab.errors import check
    from genlab.lora.adapter import Adapter, merge_into
    from genlab.store import atomic_dir, check_writable, load_weights, writing
    from genlab.text.sources import resolve

    check_writable(out, "--out", folder=True)
    check(not out.exists() or not any(out.iterdir()), f"--out {str(out)!r} exists and is not empty; choose a new folder")
    lora = Adapter.load(adapter)
    base = model or lora.base_model
    check(base, f"--adapter {str(adapter)!r} does not record its base model; give --model")
    lora.check_base(base)
    folder = resolve(base)
    shards = {f.name: load_weights(f) for f in sorted(folder.glob("*.safetensors"))}
    merged = merge_into({k: v for shard in shards.values() for k, v in shard.items()}, lora)  # every layer, whichever shard
    with writing(out, "--out"), atomic_dir(out) as tmp:
        for f in folder.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        for name, shard in shards.items():  # the same files, the same keys in each
            save_file({k: merged[k].contiguous() for k in shard}, str(tmp / name), metadata={"format": "pt"})
    console.print(f"merged {adapter} into {base}: {out} (use it with --model {out})")
