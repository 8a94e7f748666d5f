"""`layover run`: the release pipeline as a Prefect flow.

In this order, so that a mistake costs a second, not a run:
  1. settings: flags, else LAYOVER_* variables (layover/settings.py RunSettings)
  2. the list, every bad line at once
  3. preflight (layover/preflight.py): paths, space, tools, credentials, the source answering
  4. Prefect's temporary server, in a session of its own (unless PREFECT_API_URL is set),
     started while this process imports Prefect (about 2 s, so it is only imported here)
  5. the flow, with progress on stderr; the report on stdout

Ctrl-C or SIGTERM stops the run within seconds (copies killed, registries removed, overlay
unmounted, no partial tarball, FILE.failed.json saying where) and exits 130 or 143; a second
Ctrl-C exits at once, leaving the cleanup to the next run.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from layover import naming, progress
from layover.cli import progress_view
from layover.cli.app import OPTIONS, app, exit_fast, fail, quiet_prefect_defaults
from layover.errors import Interrupted, LayoverError, UsageError, signal_of

if TYPE_CHECKING:
    from layover.settings import ReleaseRequest

_LIST = "The list"
_SOURCE = "Where images come from"
_PREFECT = "Copies and Prefect"


@app.command()
def run(
    images: Annotated[
        Path | None,
        typer.Option(metavar="FILE", rich_help_panel=_LIST, help="The release's images.list file."),
    ] = None,
    images_git: Annotated[
        str | None,
        typer.Option(
            metavar="REPO",
            rich_help_panel=_LIST,
            help="Read the list from this git repository (path or URL) instead.",
        ),
    ] = None,
    images_ref: Annotated[
        str | None,
        typer.Option(metavar="REF", rich_help_panel=_LIST, help="Branch, tag or commit to read the list at."),
    ] = None,
    images_path: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            rich_help_panel=_LIST,
            help="The list's path in the repository [default: images.list].",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            metavar="HOST[:PORT]",
            rich_help_panel=_SOURCE,
            help="Registry to copy from, for references that name no host of their own.",
        ),
    ] = None,
    registry_map: Annotated[
        list[str] | None,
        typer.Option(
            metavar="FROM=TO",
            rich_help_panel=_SOURCE,
            help="Read images whose registry is FROM from TO instead (a mirror). Repeatable.",
        ),
    ] = None,
    src_tls_verify: Annotated[
        bool | None,
        typer.Option(
            "--src-tls-verify/--no-src-tls-verify",
            rich_help_panel=_SOURCE,
            help="Verify the source registries' TLS certificates [default: verify].",
        ),
    ] = None,
    src_authfile: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            rich_help_panel=_SOURCE,
            help="containers-auth.json for the source registries [default: where skopeo looks: "
            "REGISTRY_AUTH_FILE, then the containers and docker files].",
        ),
    ] = None,
    src_cert_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            rich_help_panel=_SOURCE,
            help="Directory with the source registries' CA as *.crt (a private CA).",
        ),
    ] = None,
    src_credentials_block: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            rich_help_panel=_SOURCE,
            help="A Prefect Secret block holding a containers-auth.json (needs PREFECT_API_URL).",
        ),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Archive and overlay state of this build host.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Release tarball to write; FILE.sha256 and FILE.json beside it."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            metavar="N",
            rich_help_panel=_PREFECT,
            help="Parallel image copies, 1-64 [default: twice the CPUs, 2-8].",
        ),
    ] = None,
    lock_wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="SECONDS",
            rich_help_panel=_PREFECT,
            help="Wait this long for another run of the work dir to finish [default: 0, fail at once].",
        ),
    ] = None,
    copy_timeout: Annotated[
        float | None,
        typer.Option(
            min=1,
            metavar="SECONDS",
            rich_help_panel=_PREFECT,
            help="Give up one attempt of one image copy after this long [default: 900].",
        ),
    ] = None,
    copy_retries: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=10,
            metavar="N",
            rich_help_panel=_PREFECT,
            help="Retries per image copy on network and 5xx errors [default: 3].",
        ),
    ] = None,
    heartbeat_seconds: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            rich_help_panel=_PREFECT,
            help="Prefect flow-run heartbeats every N s (30 or more), for an automation that marks "
            "runs whose process died as crashed [default: 0, none].",
        ),
    ] = None,
    copier: Annotated[
        str | None,
        typer.Option(
            metavar="native|skopeo",
            rich_help_panel=_PREFECT,
            help="Archive sync's copier: native (in process; skopeo only for schema 1 images) or "
            "skopeo (one process per image) [default: native].",
        ),
    ] = None,
    package_sync: Annotated[
        str | None,
        typer.Option(
            metavar="files|registry",
            rich_help_panel=_PREFECT,
            help="Package sync: files (links written from the archive's records) or registry "
            "(manifests PUT through a package registry); same tarball [default: files].",
        ),
    ] = None,
    source_down_seconds: Annotated[
        float | None,
        typer.Option(
            min=1,
            metavar="SECONDS",
            rich_help_panel=_PREFECT,
            help="Stop (exit 4) when no request to the source has succeeded for this long [default: 60].",
        ),
    ] = None,
    stage_deadline_seconds: Annotated[
        float | None,
        typer.Option(
            min=1,
            metavar="SECONDS",
            rich_help_panel=_PREFECT,
            help="Give up archive sync's remaining retries after this long [default: 7200].",
        ),
    ] = None,
    attached: Annotated[
        str | None,
        typer.Option(
            metavar="copy|require|none",
            help="Signatures, attestations and SBOMs of the listed images: copy what is attached, "
            "require a signature on every listed image (else fail naming them), or none "
            "[default: copy].",
        ),
    ] = None,
    delta_from: Annotated[
        list[str] | None,
        typer.Option(
            metavar="BASE",
            help="Also write OUTPUT.from-<base>.tar holding only what BASE lacks: a package (tarball "
            "or its .json) or a git tag whose package this work dir built. Repeatable.",
        ),
    ] = None,
) -> None:
    """Run the release pipeline: archive sync, overlay, prune, package sync, GC, verify, tarball.

    Every option can also be set as LAYOVER_<OPTION> (e.g. LAYOVER_WORK_DIR). Prefect's
    temporary server is used unless PREFECT_API_URL is set.
    """
    from pydantic import ValidationError

    from layover import imagelist, preflight
    from layover.adapters.host import LocalHost
    from layover.settings import ListFromGit, RunSettings

    naming.use("cli")
    given = {k: v for k, v in locals().items() if k in _FLAGS and v not in (None, [])}
    checked = time.monotonic()
    try:
        settings = RunSettings(**given)
        request = settings.request()
        if 0 < settings.heartbeat_seconds < 30:
            raise UsageError(
                f"--heartbeat-seconds {settings.heartbeat_seconds}: Prefect needs 30 or "
                "more; use 0 for no heartbeats"
            )
        if isinstance(request.images, ListFromGit):
            from layover.adapters.git import read_list_at

            got = read_list_at(request.images.repo, request.images.ref, request.images.path)
            listed = imagelist.parse_bytes(got.data, f"{got.repo}:{got.path}@{got.ref}")
        else:
            listed = imagelist.load(request.images.path)  # every bad line, before anything starts
        plan = preflight.plan_for(request, listed)
        preflight.check(plan, LocalHost())
        preflight.remember_passed(plan)  # the flow's preflight task then passes at once
    except ValidationError as e:  # a LAYOVER_* variable of the wrong type
        fail(
            UsageError(
                "; ".join(f"LAYOVER_{'_'.join(map(str, x['loc'])).upper()}: {x['msg']}" for x in e.errors())
            )
        )
    except LayoverError as e:
        fail(e)
    except KeyboardInterrupt:  # Ctrl-C during preflight: nothing was started, nothing to undo
        typer.echo("\nlayover: interrupted by SIGINT before anything started", err=True)
        raise typer.Exit(128 + signal.SIGINT) from None
    if OPTIONS.debug:
        typer.echo(f"layover: preflight passed in {time.monotonic() - checked:.2f} s", err=True)
    code = _run_flow(request, settings.heartbeat_seconds)
    exit_fast(code)


_FLAGS = (
    "images",
    "images_git",
    "images_ref",
    "images_path",
    "source",
    "registry_map",
    "src_tls_verify",
    "src_authfile",
    "src_cert_dir",
    "src_credentials_block",
    "work_dir",
    "output",
    "concurrency",
    "lock_wait",
    "copy_timeout",
    "copy_retries",
    "heartbeat_seconds",
    "copier",
    "package_sync",
    "source_down_seconds",
    "stage_deadline_seconds",
    "attached",
    "delta_from",
)


def _run_flow(request: ReleaseRequest, heartbeat_seconds: int) -> int:
    """Start Prefect (and its server if needed), run the flow, print the report; the exit code."""
    from layover.adapters import run as commands
    from layover.adapters.prefect_server import EmbeddedServer

    stopper = _Stopper()
    stopper.install()
    tracker = progress.StageTracker()
    view = progress_view.view_for(OPTIONS.verbosity)
    failed_json = request.output.with_name(request.output.name + ".failed.json")
    try:
        quiet_prefect_defaults()
        server: EmbeddedServer | None = None
        if not os.environ.get("PREFECT_API_URL"):
            server = EmbeddedServer()
            server.launch()  # it imports Prefect while we do
        from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        from flows.release import release

        overrides: dict = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: heartbeat_seconds or None}
        if server is not None and PREFECT_API_URL.value():  # a profile names a server: use that
            server.stop()
            server = None
        if server is not None:
            seconds = server.wait_ready()
            if OPTIONS.debug:
                typer.echo(f"layover: Prefect's temporary server answered after {seconds:.1f} s", err=True)
            overrides[PREFECT_API_URL] = server.api_url
        with temporary_settings(overrides), progress.reporting_to(progress.Tee(tracker, view)):
            report = release(request)
    except BaseException as e:
        progress_view.close(view)
        sig = signal_of(e)
        if sig is None and not isinstance(e, Exception):
            raise  # SystemExit and friends
        also = [f"report: {failed_json}"] if failed_json.exists() else []
        if sig is not None:
            commands.stop_all(sig)
            where = f" in {tracker.current}" if tracker.current else ""
            typer.echo(
                f"layover: interrupted by {signal.Signals(sig).name}{where}; nothing was shipped, "
                "what was archived stays: run again to continue",
                err=True,
            )
            for line in also:
                typer.echo(f"  {line}", err=True)
            return 128 + sig
        if not isinstance(e, LayoverError):  # a bug: say it in one line (--debug: the traceback)
            if OPTIONS.debug:
                traceback.print_exception(e)
            e = LayoverError(
                f"{type(e).__name__}: {' '.join(str(e).split())[:300]} (a bug: run again "
                "with --debug for the traceback and report it)"
            )
        fail(e, also=also)
    progress_view.close(view)
    typer.echo(report.to_text())
    return 0


class _Stopper:
    """SIGINT and SIGTERM for the whole run. The first one ends every copy and unwinds the run
    (KeyboardInterrupt / Interrupted) so that it cleans up and reports; a second Ctrl-C exits
    at once. While the flow runs, Prefect's own SIGTERM handler takes SIGTERM (it records the
    crash, then sends SIGTERM again: that one finds the run already stopping and is ignored)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        from layover.adapters import run as commands

        if self.signal is not None:
            if signum == signal.SIGINT:
                os.write(2, b"\nlayover: second Ctrl-C: exiting now; the next run cleans up\n")
                os._exit(128 + signum)  # the kernel stops Prefect's server (PR_SET_PDEATHSIG)
            return
        self.signal = signum
        commands.stop_all(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted("stopped by SIGTERM", signum)
