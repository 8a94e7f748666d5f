"""`python -m layover.testing push|list`: put a sample release into a registry, or print its list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layover.errors import LayoverError
from layover.testing.push import push_release
from layover.testing.releases import release

app = typer.Typer(add_completion=False, help="Deterministic sample images for Layover.")


@app.command()
def push(
    registry: Annotated[str, typer.Option(help="Registry to push to, 127.0.0.1:PORT (plain HTTP).")],
    release_number: Annotated[int, typer.Option("--release", help="Sample release: 1, 2 or 3.")] = 1,
    list_out: Annotated[Path | None, typer.Option(help="Write the release's images.list here.")] = None,
    scale: Annotated[float, typer.Option(help="Multiply every layer's size by this factor.")] = 1.0,
    pin_digests: Annotated[bool, typer.Option(help="Write repo:tag@digest lines in the list.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the registry to answer /v2/.")] = 30.0,
) -> None:
    """Push a sample release into a registry and write its images.list."""
    rel = release(release_number, scale)
    try:
        results = push_release(registry, rel, ready_timeout=wait)
    except LayoverError as e:  # a clear one-line message, not a traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    uploaded = sum(r.blobs_uploaded for r in results)
    mounted = sum(r.blobs_mounted for r in results)
    present = sum(r.blobs_present for r in results)
    typer.echo(
        f"pushed release {rel.number}: {len(results)} images to {registry} "
        f"(blobs: {uploaded} uploaded, {mounted} mounted from another repository, "
        f"{present} already present)"
    )
    if list_out is not None:
        list_out.write_text(rel.list_text(pin_digests=pin_digests))
        typer.echo(f"wrote {list_out}")


@app.command("list")
def list_(
    release_number: Annotated[int, typer.Option("--release", help="Sample release: 1, 2 or 3.")] = 1,
    scale: Annotated[float, typer.Option(help="Multiply every layer's size by this factor.")] = 1.0,
    pin_digests: Annotated[bool, typer.Option(help="Write repo:tag@digest lines.")] = False,
) -> None:
    """Print a sample release's images.list."""
    typer.echo(release(release_number, scale).list_text(pin_digests=pin_digests), nl=False)


if __name__ == "__main__":
    app()
