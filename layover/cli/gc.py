"""`layover gc`: garbage-collect a registry storage directory."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError, UsageError
from layover.units import human_bytes

SHOWN = 50  # deletions a dry run prints; --json gives all of them


@app.command()
def gc(
    storage_dir: Annotated[Path, typer.Argument(help="Registry root (the directory holding docker/).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan only; list what would go, change nothing.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="With --dry-run: the whole plan as JSON.")] = False,
) -> None:
    """Garbage-collect a registry storage directory: keep exactly what tags reach."""
    from layover.adapters.served import refuse_if_served
    from layover.storage.gc import plan_gc
    from layover.storage.layout import StorageLayout
    from layover.storage.vacuum import apply_gc

    try:
        if json_out and not dry_run:
            raise UsageError("--json goes with --dry-run: it prints the plan instead of applying it")
        layout = StorageLayout(storage_dir.absolute())
        if not layout.v2.is_dir():
            raise UsageError(f"{storage_dir}: no docker/registry/v2 inside; give the registry's root dir")
        refuse_if_served(layout.root)
        plan = plan_gc(layout)
        if json_out:
            typer.echo(
                json.dumps(
                    {
                        "summary": plan.summary(),
                        "bytes_freed": plan.bytes_freed,
                        "counts": asdict(plan.counts),
                        "deletions": [{**asdict(d), "kind": d.kind.value} for d in plan.deletions],
                        "warnings": [asdict(w) for w in plan.warnings],
                    },
                    indent=2,
                )
            )
            return
        typer.echo(plan.summary())
        if dry_run:
            for d in plan.deletions[:SHOWN]:
                size = f" ({human_bytes(d.size)})" if d.size else ""
                typer.echo(f"  would delete {d.kind.value}: {d.path}{size}")
            if len(plan.deletions) > SHOWN:
                typer.echo(f"  ... and {len(plan.deletions) - SHOWN} more (--json lists every one)")
            return
        apply_gc(plan)
        typer.echo("done")
    except LayoverError as e:
        fail(e)
