"""`layover repair-archive`: remove damaged archive files so the next run fetches them again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError, UsageError


@app.command("repair-archive")
def repair_archive(
    work_dir: Annotated[Path, typer.Argument(help="The work dir whose archive (lower/) to repair.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report damage; change nothing.")] = False,
) -> None:
    """Move damaged archive files (bad blob digests, garbage links) out of the archive, into
    WORK_DIR/quarantine/, so the next `layover run` fetches them again from the source. Exits 1
    if damage was found in a dry run."""
    from datetime import datetime

    from layover.adapters import overlay
    from layover.adapters.served import refuse_if_served
    from layover.storage.repair import repair, scan
    from layover.workdir import WorkDir

    try:
        wd = WorkDir.at(work_dir)
        if not wd.archive.v2.is_dir():
            raise UsageError(f"{wd.lower}: no archive here (no docker/registry/v2); check --work-dir")
        if overlay.is_mounted(wd.merged):
            raise LayoverError(
                f"{wd.merged} is mounted over the archive: is a run in progress? "
                "wait for it, or run `layover run` once to clean up a killed run"
            )
        refuse_if_served(wd.lower)
        plan = scan(wd.archive)
        typer.echo(plan.summary())
        if plan.ok:
            return
        if dry_run:
            raise typer.Exit(1)
        done = repair(plan, wd.quarantine_for(datetime.now()))
        typer.echo(
            f"moved {len(done.moved)} damaged entries out of the archive into {done.quarantine}; "
            "run `layover run` for each affected release: archive sync fetches them again "
            "from the source"
        )
    except LayoverError as e:
        fail(e)
