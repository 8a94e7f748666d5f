"""`layover registry-image`: make sure the registry image exists."""

from __future__ import annotations

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError


@app.command("registry-image")
def registry_image() -> None:
    """Make sure the registry image exists (registry:2, or one built from Debian's binary)."""
    from layover.adapters.registry import docker_client
    from layover.adapters.registry_image import ensure_registry_image

    try:
        typer.echo(ensure_registry_image(docker_client()))
    except LayoverError as e:
        fail(e)
