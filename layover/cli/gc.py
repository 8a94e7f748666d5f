"""`layover gc`: garbage-collect a registry storage directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError, UsageError


@app.command()
def gc(
    storage_dir: Annotated[Path, typer.Argument(help="Registry root (the directory holding docker/).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; change nothing.")] = False,
) -> None:
    """Garbage-collect a registry storage directory: keep exactly what tags reach."""
    from layover.adapters.served import refuse_if_served
    from layover.storage.gc import plan_gc
    from layover.storage.layout import StorageLayout
    from layover.storage.vacuum import apply_gc

    try:
        layout = StorageLayout(storage_dir.absolute())
        if not layout.v2.is_dir():
            raise UsageError(f"{storage_dir}: no docker/registry/v2 inside; give the registry's root dir")
        refuse_if_served(layout.root)
        plan = plan_gc(layout)
        typer.echo(plan.summary())
        if not dry_run:
            apply_gc(plan)
            typer.echo("done")
    except LayoverError as e:
        fail(e)
