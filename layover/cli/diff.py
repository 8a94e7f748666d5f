"""`layover diff`: images added, changed and removed between two packages, and the bytes a
customer on the old one still needs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The package the customer has (tarball or .json).")],
    new: Annotated[Path, typer.Argument(help="The package they are offered (tarball or .json).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
) -> None:
    """Compare two packages' contents: images added, changed, removed; bytes still needed."""
    from layover.diff import diff as compare
    from layover.package import read_contents

    try:
        report = compare(read_contents(old), read_contents(new))
    except LayoverError as e:
        fail(e)
    typer.echo(report.to_json() if json_out else report.to_text())
