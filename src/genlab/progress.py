"""Progress bars. Loops in genlab are generators; these wrap them for the terminal.

All output for people goes to stderr, so stdout stays the generated text (pipe-friendly).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)


def quiet() -> bool:
    return os.environ.get("GENLAB_QUIET", "") not in ("", "0")


@contextlib.contextmanager
def stage_progress(title: str, stages: int):
    """A bar over named stages of a slow one-off job: `with stage_progress(t, 3) as advance: advance("x")`."""
    if quiet() or not sys.stderr:
        yield lambda name: None
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(title, total=stages)
        done = [-1]

        def advance(name: str) -> None:
            done[0] += 1
            bar.update(task, completed=done[0], description=f"{title}: {name}")

        yield advance
        bar.update(task, completed=stages, description=f"{title}: done")



@contextlib.contextmanager
def step_progress(title: str, total: int, start: int = 0):
    """A bar over the steps of a loop, with a live status text:
    `with step_progress("train", 1000) as update: update(step, "loss 0.12 · 4.1 it/s")`."""
    if quiet() or not sys.stderr:
        yield lambda completed, info="": None
        return
    if not console.is_terminal:  # a log file or CI: a plain line every 30 s instead of a live bar
        last = [time.monotonic()]

        def log(completed: int, info: str = "") -> None:
            if time.monotonic() - last[0] >= 30 or completed == total:
                last[0] = time.monotonic()
                console.print(f"{title} {completed}/{total} {info}", markup=False)

        yield log
        return
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(title, total=total, completed=start, info="")

        def update(completed: int, info: str = "") -> None:
            bar.update(task, completed=completed, info=info)

        yield update
