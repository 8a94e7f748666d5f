"""`layover run`: the release pipeline as a Prefect flow.

Prefect is imported only here (it costs about 2 s), so the other verbs start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, exit_fast, fail, quiet_prefect_defaults
from layover.errors import LayoverError, UsageError


@app.command()
def run(
    images: Annotated[Path, typer.Option(help="The release's images.list.")],
    source: Annotated[str, typer.Option(help="CI registry HOST[:PORT] to copy from.")],
    work_dir: Annotated[Path, typer.Option(help="Archive + overlay state for this build host.")],
    output: Annotated[Path, typer.Option(help="Release tarball to write (.sha256 and .json beside it).")],
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Parallel image copies [default: twice the CPUs, 2-8]."),
    ] = None,
    src_tls_verify: Annotated[
        bool, typer.Option("--src-tls-verify/--no-src-tls-verify", help="Verify the source's TLS.")
    ] = True,
    src_authfile: Annotated[
        Path | None, typer.Option(help="containers-auth.json for the source registry.")
    ] = None,
    attached: Annotated[
        str,
        typer.Option(
            metavar="copy|require|none",
            help="Signatures, attestations and SBOMs of the listed images: copy (whatever is "
            "attached), require (a signature on every listed image, else fail naming them) or none.",
        ),
    ] = "copy",
    delta_from: Annotated[
        list[str] | None,
        typer.Option(help="Also write a delta against this base package (tarball or .json); repeatable."),
    ] = None,
    copier: Annotated[
        str,
        typer.Option(
            help="Archive sync's copier: native (in process; skopeo only for schema 1 images) or "
            "skopeo (one skopeo process per image).",
        ),
    ] = "native",
    heartbeat_seconds: Annotated[
        int,
        typer.Option(
            min=0,
            help="Prefect flow-run heartbeat interval (30 or more), for an automation that marks "
            "runs whose process died as crashed; 0 (default) sends none: Prefect waits up to 1 s "
            "for its heartbeat thread at the end of every run.",
        ),
    ] = 0,
) -> None:
    """Run the release pipeline: archive sync, overlay, prune, package sync, GC, verify, tarball.

    Uses Prefect's embedded server unless PREFECT_API_URL is set.
    """
    from pydantic import ValidationError

    from layover.settings import ListFromFile, ReleaseRequest

    optional: dict[str, object] = {"concurrency": concurrency} if concurrency is not None else {}
    try:
        request = ReleaseRequest.model_validate(
            {
                "images": ListFromFile(path=str(images)),
                "source": source,
                "work_dir": work_dir,
                "output": output,
                **optional,
                "src_tls_verify": src_tls_verify,
                "src_authfile": src_authfile,
                "copier": copier,
                "attached": attached,
                "delta_from": tuple(delta_from or ()),
            }
        )
    except ValidationError as e:
        fail(UsageError("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())))
    from layover import imagelist

    try:
        imagelist.load(images)  # every bad line, at once, before Prefect spends seconds starting
    except LayoverError as e:
        fail(e)
    if 0 < heartbeat_seconds < 30:
        fail(
            UsageError(
                f"--heartbeat-seconds {heartbeat_seconds}: Prefect needs 30 or more; use 0 for no heartbeats"
            )
        )
    quiet_prefect_defaults()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.release import release

    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: heartbeat_seconds or None}):
            report = release(request)
    except LayoverError as e:
        fail(e)
    except Exception as e:  # noqa: BLE001 - the CLI's contract is a one-line reason, never a traceback
        fail(RuntimeError(f"{type(e).__name__}: {e}"))
    typer.echo(report.to_text())
    exit_fast(0)
