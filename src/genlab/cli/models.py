"""genlab models: every model this machine can run, on stdout (a table, or --json)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated

import typer

from genlab.cli import app


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="One JSON list instead of a table.")] = False):
    """List every model genlab can run: the bundled ones, then those converted into the cache.

    Each row: name, family, kind, parameters, size, what it generates and its default sampler.
    Use a name with --model: genlab image --model digits-gan 7, genlab text --model pydoc-gpt "The for".
    """
    from rich.console import Console
    from rich.table import Table

    from genlab.registry import list_models

    rows = list_models()
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        return
    table = Table(title="genlab models", title_justify="left")
    for col in ("name", "family", "kind", "parameters", "size", "generates", "default sampler"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, r.family, r.kind, f"{r.parameters / 1e6:.2f}M" if r.parameters else "?",
                      f"{r.size_bytes / 1e6:.1f} MB" if r.installed else "not installed",
                      r.generates if r.installed else r.location, r.default_sampler)
    Console(file=sys.stdout, width=max(Console().width, 160), highlight=False).print(table)
