"""`layover install`: put a package into a registry's storage directory, checked and crash-safe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError, UsageError


@app.command()
def install(
    package: Annotated[Path, typer.Argument(help="The package tarball (full or delta).")],
    storage: Annotated[Path, typer.Option("--storage", help="The registry's storage dir (holding docker/).")],
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected sha256 of the tarball [default: PACKAGE.sha256].")
    ] = None,
    no_checksum: Annotated[
        bool,
        typer.Option("--no-checksum", help="Do not check the tarball's sha256 (blobs are still hashed)."),
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Afterwards delete every image the package does not list (GC).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check everything and say what would change.")
    ] = False,
    deep: Annotated[
        bool,
        typer.Option("--deep", help="Hash the blobs the storage dir already holds before relying on them."),
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the install report (JSON evidence) to this file.")
    ] = None,
    restart_container: Annotated[
        str | None,
        typer.Option(
            "--restart-container", help="Docker container serving the storage dir: restarted if needed."
        ),
    ] = None,
) -> None:
    """Install a package: checksum, safe members, base present, space; then blobs, links, tags
    last; optionally prune to exactly the package; verify. A refused package changes nothing."""
    from layover.adapters.served import restart_container as restart
    from layover.adapters.served import serving_containers
    from layover.install import InstallOptions
    from layover.install import install as run_install

    try:
        if no_checksum and sha256 is not None:
            raise UsageError("give --sha256 HEX or --no-checksum, not both")
        if prune and not dry_run:
            serving = serving_containers(storage)
            if serving and restart_container not in serving:
                raise UsageError(
                    f"--prune deletes under container(s) {', '.join(serving)} serving {storage}: add "
                    f"--restart-container {serving[0]} (restarted after the prune), or stop it first"
                )
        opts = InstallOptions(
            sha256=sha256,
            checksum=not no_checksum,
            prune=prune,
            dry_run=dry_run,
            deep=deep,
            restart_container=restart_container,
        )
        result = run_install(
            package,
            storage,
            opts,
            progress=lambda line: typer.echo(f"layover: {line}", err=True),
            restarter=restart,
        )
        if report is not None:
            tmp = report.with_name(f".{report.name}.tmp")
            tmp.write_text(result.to_json())
            os.replace(tmp, report)
        typer.echo(result.summary())
        result.raise_for_verify()
    except LayoverError as e:
        fail(e)
