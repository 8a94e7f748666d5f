"""`layover delta`: a package carrying only the blobs a customer on BASE does not have."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError


@app.command()
def delta(
    new: Annotated[Path, typer.Argument(help="The new release's full package tarball.")],
    base: Annotated[
        Path, typer.Option("--base", help="The package the customer has: its tarball or its .json.")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Delta tarball to write [default: NEW.from-BASE.tar beside NEW]."),
    ] = None,
) -> None:
    """Write a delta: every manifest, tag and link of NEW, only the blob data BASE lacks.
    `layover install` applies it only to a storage dir holding BASE's blobs."""
    from layover.delta import default_output, write_delta
    from layover.package import read_record

    try:
        record = read_record(base)
        new_sha = read_record(new).sha256
        result = write_delta(new, record, output or default_output(new, record), new_sha256=new_sha)
    except LayoverError as e:
        fail(e)
    typer.echo(result.summary())
