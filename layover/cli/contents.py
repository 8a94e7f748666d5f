"""`layover contents`: what a package holds, from its tarball or its .json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError, UsageError


@app.command()
def contents(
    package: Annotated[
        Path | None, typer.Argument(help="A release tarball, or its .json (sidecar or releases/ record).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the contents document itself.")] = False,
    schema: Annotated[bool, typer.Option("--schema", help="Print the contents file's JSON Schema.")] = False,
) -> None:
    """Print what a package holds: its list, every image's digest and platforms, its blobs."""
    from layover.contents import describe, schema_text
    from layover.package import read_contents

    try:
        if schema:
            typer.echo(schema_text(), nl=False)
            return
        if package is None:
            raise UsageError("give a PACKAGE (a release tarball or its .json), or --schema")
        found = read_contents(package)
    except LayoverError as e:
        fail(e)
    if json_out:
        typer.echo(found.to_bytes().decode(), nl=False)
    else:
        typer.echo(describe(found, package.name))
