"""`layover verify`: check a package (directory or tarball) against a list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError, UsageError


@app.command()
def verify(
    target: Annotated[Path, typer.Argument(help="Registry root dir, or a release tarball.")],
    images: Annotated[
        Path,
        typer.Option(
            help="The images.list the package must hold exactly; a tarball may also hold the "
            "attached artifacts its contents file records (docs/attached.md)."
        ),
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
) -> None:
    """Check a package: every listed image complete, every blob's sha256, nothing extra.

    A delta tarball lacks its base's blob data: verify checks everything else and says how many
    blobs it left to `layover install`."""
    from layover import imagelist
    from layover.package import claims_reader
    from layover.storage.layout import StorageLayout
    from layover.storage.verify import verify_storage, verify_tarball

    try:
        listed = imagelist.load(images)
        if target.is_dir():
            report = verify_storage(StorageLayout(target.absolute()), listed)
        elif target.is_file():
            report = verify_tarball(target, listed, claims=claims_reader(listed))
        else:
            raise UsageError(f"{target}: no such directory or tarball")
    except LayoverError as e:
        fail(e)
    typer.echo(report.to_json() if json_out else report.summary())
    if not report.ok:
        raise typer.Exit(1)
