"""`layover push`: every image of a package into an existing registry (layover/push.py)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import Interrupted, LayoverError, UsageError
from layover.push import OnExistingTag


@app.command()
def push(
    package: Annotated[Path, typer.Argument(help="The package tarball (its .sha256 beside it).")],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="HOST[:PORT][/PREFIX]",
            help="The registry to push to; PREFIX is put before every repository path.",
        ),
    ],
    dest_authfile: Annotated[
        Path | None,
        typer.Option(
            help="containers-auth.json for the registry [default: where skopeo looks: "
            "REGISTRY_AUTH_FILE, containers/auth.json, ~/.docker/config.json]."
        ),
    ] = None,
    dest_cert_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory with the registry's CA (NAME.crt) and client pairs (NAME.cert + NAME.key)."
        ),
    ] = None,
    dest_tls_verify: Annotated[
        bool, typer.Option("--dest-tls-verify/--no-dest-tls-verify", help="Verify the registry's TLS.")
    ] = True,
    on_existing_tag: Annotated[
        OnExistingTag,
        typer.Option(
            case_sensitive=False,
            help="A tag of the registry that points at another digest: fail (nothing is pushed), "
            "skip that image, or overwrite the tag.",
        ),
    ] = OnExistingTag.FAIL,
    concurrency: Annotated[int, typer.Option(min=1, max=32, help="Images pushed in parallel.")] = 4,
    sha256: Annotated[
        str | None, typer.Option(help="The package's sha256 [default: read from PACKAGE.sha256].")
    ] = None,
    no_checksum: Annotated[
        bool, typer.Option("--no-checksum", help="Do not check the package's sha256 first.")
    ] = False,
    report: Annotated[Path | None, typer.Option(help="Write the push report (JSON) here.")] = None,
    progress_seconds: Annotated[
        float, typer.Option(min=0.2, help="How often to print progress on stderr.")
    ] = 10.0,
) -> None:
    """Push every image of a package into a registry: digests kept, blobs it has skipped, tags last."""
    from layover.adapters.credential_helper import resolver
    from layover.adapters.registry_client import DESTINATION, Endpoint, RegistryClient
    from layover.package import expected_sha256
    from layover.push import Destination, Options, check_sha256, open_package
    from layover.push import push as push_package

    try:
        if no_checksum and sha256 is not None:
            raise UsageError("--sha256 and --no-checksum: give one of them")
        destination = Destination.parse(to)
        if not package.is_file():
            raise UsageError(f"{package}: no such package file")
        seconds: dict[str, float] = {}
        started = time.monotonic()
        if not no_checksum:
            check_sha256(package, expected_sha256(package, sha256))
            seconds["sha256"] = round(time.monotonic() - started, 3)
        endpoint = Endpoint(
            destination.host, tls_verify=dest_tls_verify, cert_dir=dest_cert_dir, flags=DESTINATION
        )
        options = Options(destination, on_existing_tag=on_existing_tag, concurrency=concurrency)
        ticker = _Ticker(progress_seconds)
        started = time.monotonic()
        with (
            RegistryClient(endpoint, resolver(dest_authfile, DESTINATION.authfile)) as client,
            open_package(package) as pkg,
        ):
            seconds["index"] = round(time.monotonic() - started, 3)
            try:
                result = push_package(pkg, client, options, progress=ticker)
            finally:
                ticker.stop()
        result.seconds = {**seconds, **result.seconds}
    except LayoverError as e:
        fail(e)
    except KeyboardInterrupt:
        fail(
            Interrupted(
                "push interrupted; run the same push again: it sends nothing twice and writes the tags last",
                signal.SIGINT,
            )
        )
    if report is not None:
        report.write_text(result.to_json())
    typer.echo(result.to_text())


class _Ticker:
    """Progress as a plain line on stderr every few seconds: images done of total, bytes sent."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.images = self.done = self.sent = 0
        self.total: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def stage_started(self, stage: str, *, images: int = 0, bytes_total: int | None = None) -> None:
        self.images, self.total = images, bytes_total
        self._thread = threading.Thread(target=self._loop, name="push-progress", daemon=True)
        self._thread.start()

    def image_started(self, stage: str, image: str) -> None:
        pass

    def image_done(self, stage: str, image: str, *, bytes_copied: int = 0, ok: bool = True) -> None:
        with self._lock:
            self.done += 1
            self.sent += bytes_copied

    def stage_finished(self, stage: str, *, ok: bool = True) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._line()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._line()

    def _line(self) -> None:
        from layover.units import human_bytes

        with self._lock:
            done, sent = self.done, self.sent
        of = f" of {human_bytes(self.total)}" if self.total is not None else ""
        elapsed = time.monotonic() - self._started
        print(
            f"push: {done}/{self.images} images, {human_bytes(sent)}{of} sent, {elapsed:.0f} s",
            file=sys.stderr,
            flush=True,
        )
