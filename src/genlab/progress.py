"""Progress bars. Loops in genlab are generators; these wrap them for the terminal.

All output for people goes to stderr, so stdout stays the generated text (pipe-friendly).
"""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False)


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

