"""The `genlab` command. Each subcommand is a thin layer over the Python API.

text.py holds text, chat and models; image.py holds image; imagine.py holds imagine;
embed.py holds embed; train.py holds `train ...`; demo.py the demo. This file holds the app and the one place errors become exit code 2.

Text goes to stdout, everything for people (progress, timings, errors) to stderr.
Bad input is answered by one line, `genlab: error: ...`, and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from genlab.errors import GenlabError, check
from genlab.progress import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="genlab: text and image generative models, side by side, on an ordinary machine.",
)

train_app = typer.Typer(no_args_is_help=True, help="Train a model from scratch: images (diffusion, gan, ar-image, vae + text2image) or text (lm, diffusion-lm). Every trainer also runs under torchrun --nproc_per_node N (DDP).")
app.add_typer(train_app, name="train")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the typer app, turning every input error into one line and exit code 2."""
    import warnings

    warnings.showwarning = lambda message, *_: console.print(f"genlab: warning: {message}", markup=False, soft_wrap=True)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="genlab", standalone_mode=False)
    except _click_errors() as e:  # unknown option or command, missing argument, a value of the wrong type
        message, ctx = e.format_message(), getattr(e, "ctx", None)
        if message.startswith("No such command") and ctx is not None and hasattr(ctx.command, "list_commands"):
            message += f" Choose one of: {', '.join(ctx.command.list_commands(ctx))}."  # e.g. an unknown family to train
        _fail(message)
    except GenlabError as e:
        _fail(e.renamed(flag))
    except typer.Exit as e:
        code = e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        console.print("\ngenlab: interrupted")
        sys.exit(130)
    except BrokenPipeError:  # `genlab text ... | head`
        sys.stderr.close()
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)


def _click_errors() -> tuple[type, ...]:
    """Usage-error classes of the click typer uses (vendored as typer._click since typer 0.26)."""
    classes = []
    try:
        from typer._click.exceptions import ClickException

        classes.append(ClickException)
    except ImportError:
        pass
    try:
        import click

        classes.append(click.ClickException)
    except ImportError:
        pass
    return tuple(classes)


FLAGS = {"n": "-n", "trajectory_frames": "--frames"}  # where a flag is not the field's name with dashes


def flag(name: str) -> str:
    """The command-line flag of a library field: steps -> --steps, max_new_tokens -> --max-new-tokens."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def read_text_file(flag: str, path: str) -> str:
    """The text of a file a flag names (--grammar, --json-schema, --layout): one line if it is missing or not UTF-8."""
    from pathlib import Path

    file = Path(path).expanduser()
    check(file.is_file(), f"{flag} {path}: no such file")
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GenlabError(f"{flag} {path} cannot be read as UTF-8 text ({type(e).__name__})") from None


def _fail(message: str) -> None:
    console.quiet = False  # a quiet process (rank > 0 under torchrun) still says why it stops
    console.print(f"genlab: error: {message}", markup=False, soft_wrap=True)
    sys.exit(2)




# register the subcommands (after `app` exists)
from genlab.cli import compare, demo, distill, embed, finetune, image, imagine, models, replay, serve, text, train  # noqa: E402,F401
