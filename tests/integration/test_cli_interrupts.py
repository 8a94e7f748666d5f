"""Ctrl-C and SIGTERM stop `layover run` cleanly, at three stages.

Ctrl-C is typed into a pseudo-terminal (the terminal sends SIGINT to the CLI's whole foreground
process group, skopeo included), with Prefect's temporary server: it must outlive the keystroke
and record the run's end. SIGTERM goes to the CLI alone (a Prefect cancel, `kill`), against a
standing server: the CLI itself must end the copies.

How a moment is hit: the run is watched (a skopeo copy running, a manifest tag written into the
overlay, the partial tarball); at the moment the process group is frozen with SIGSTOP, the
signal is sent, and the group thawed. Where it stopped is then read from FILE.failed.json, which
is asserted, so a run that got past the moment is tried again, never passed off.

After each stop: the exit code, the seconds to exit, nothing left (commands, containers, mount,
partial tarball, server), the run's end recorded in Prefect, and a re-run that gives the
uninterrupted run's sha256.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from layover.workdir import WorkDir
from tests.cli_runs import Cli, base_env, descendants, layover, mounted_under, started_servers
from tests.integration.conftest import ci_release
from tests.snapshot import sha256_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCALE = 1.0
STAGES = ("archive sync", "package sync", "tarball")
EXIT_TIMES: list[tuple[str, str, float]] = []


@dataclass
class Site:
    ci: str
    images: Path
    base: Path
    env: dict[str, str]  # against the standing server
    docker: object
    runs: list[Cli] = field(default_factory=list)

    def argv(self, work: Path, out: Path, *extra: str, copier: str = "native") -> list[str]:
        return layover(
            *extra,
            "run",
            "--copier",
            copier,
            "--images",
            str(self.images),
            "--source",
            self.ci,
            "--no-src-tls-verify",
            "--work-dir",
            str(work),
            "--output",
            str(out),
            "--concurrency",
            "4",
        )

    def start(self, work: Path, out: Path, *, tty: bool = False, embedded: bool = False) -> Cli:
        """Ctrl-C (tty) runs copy with skopeo: the terminal signals its processes too; SIGTERM
        runs copy in-process (the default): the CLI alone must stop its own copies."""
        env = dict(self.env)
        if embedded:  # Prefect's temporary server, in a home of its own
            home = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=self.base))
            env = base_env(home)
        # what a run killed mid-copy cannot remove (skopeo's temp dir) lands in the module's
        # base dir, removed at teardown, not in /tmp
        tmp = self.base / "tmp"
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
        cli = Cli(self.argv(work, out, copier="skopeo" if tty else "native"), env, tty=tty, embedded=embedded)
        self.runs.append(cli)
        return cli

    def complete(self, work: Path, out: Path) -> Cli:
        cli = self.start(work, out)
        assert cli.wait(timeout=300) == 0, cli.text()[-4000:]
        return cli


@pytest.fixture(scope="module")
def site(prefect_api, module_registries, docker_client, require_root_overlay, skopeo_bin) -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="layover-cli-interrupts-"))
    s: Site | None = None
    try:
        ci = ci_release(module_registries, base, scale=SCALE)
        s = Site(ci.ci_host, ci.images, base, prefect_api.env(), docker_client)
        yield s
    finally:
        for cli in s.runs if s else ():
            cli.kill()
        for wd in base.glob("work*"):
            _cleanup(docker_client, WorkDir.at(wd))
        shutil.rmtree(base, ignore_errors=True)
        if EXIT_TIMES:
            print("\nseconds from the signal to the exit of `layover run`:")
            for sig, stage, seconds in EXIT_TIMES:
                print(f"  {sig:<8} {stage:<14} {seconds:.2f}")


def _cleanup(client, wd: WorkDir) -> None:
    for c in client.containers.list(all=True, filters={"label": [f"layover.scope={wd.scope}"]}):
        c.remove(force=True, v=True)
    for m in mounted_under(wd.root):
        subprocess.run(["umount", "-l", m], check=False)


@pytest.fixture(scope="module")
def baseline(site) -> str:
    out = site.base / "out" / "baseline.tar"
    site.complete(site.base / "work-baseline", out)
    return sha256_of(out)


def _moment(site: Site, stage: str, cli: Cli, wd: WorkDir, out: Path) -> Callable[[], bool]:
    upper_tags = wd.upper / "docker/registry/v2/repositories"
    if stage == "archive sync" and cli.tty:
        return lambda: any("skopeo" in cmd and " copy " in cmd for _, cmd in descendants(cli.pid))
    if stage == "archive sync":  # in-process copies: the archive registry up, a first blob landed
        blobs = wd.lower / "docker/registry/v2/blobs"

        def copying() -> bool:
            try:
                if not any(True for _ in blobs.glob("sha256/*/*/data")):
                    return False
            except OSError:
                return False
            labels = [f"layover.scope={wd.scope}", "layover.role=archive"]
            return bool(site.docker.containers.list(filters={"label": labels}))  # type: ignore[attr-defined]

        return copying
    if stage == "package sync":
        # pruning leaves only whiteouts in upper: a tag's current/link written there since this
        # run started (a stopped run leaves its own) is this run's package sync at work
        since = time.time()

        def package_sync() -> bool:
            try:
                return any(
                    link.stat().st_mtime >= since
                    for link in upper_tags.glob("**/_manifests/tags/*/current/link")
                )
            except OSError:  # dirs come and go under the glob while the run writes them
                return False

        return package_sync
    return lambda: any(out.parent.glob(f".{out.name}.*.partial"))


def _stop_at(site: Site, stage: str, sig: int, wd: WorkDir, out: Path, *, tty: bool) -> tuple[Cli, float]:
    """Start a run, stop it at `stage` with `sig`; the run and the seconds from signal to exit."""
    for attempt in range(5):
        for stale in (out, out.with_name(out.name + ".sha256")):
            stale.unlink(missing_ok=True)
        cli = site.start(wd.root, out, tty=tty, embedded=tty)
        cli.freeze_at(_moment(site, stage, cli, wd, out), what=stage)
        if sig == signal.SIGINT:
            cli.ctrl_c()  # the terminal signals the frozen group; it is delivered on thaw
        else:
            os.kill(cli.pid, signal.SIGTERM)  # the CLI alone: it must end its commands itself
        sent = time.monotonic()
        cli.thaw()
        code = cli.wait(timeout=120)
        took = time.monotonic() - sent
        failed = (
            json.loads(out.with_name(out.name + ".failed.json").read_text())
            if out.with_name(out.name + ".failed.json").exists()
            else {}
        )
        if failed.get("failed_stage") == stage:
            assert code == 128 + sig, cli.text()[-3000:]
            return cli, took
        print(f"\n{stage}: attempt {attempt + 1} stopped in {failed.get('failed_stage')!r}, exit {code}")
    raise AssertionError(f"could not stop a run in {stage} in 5 attempts")


def _nothing_left(site: Site, cli: Cli, wd: WorkDir, out: Path) -> None:
    assert not descendants(cli.pid), "every command of the run ended"
    assert not [
        c.name
        for c in site.docker.containers.list(  # type: ignore[attr-defined]
            all=True, filters={"label": [f"layover.scope={wd.scope}"]}
        )
    ], "registries removed"
    assert not mounted_under(wd.root), f"overlay unmounted:\n{cli.text()[-6000:]}"
    assert not list(out.parent.glob(f".{out.name}.*.partial")), "no partial tarball"
    assert not out.exists() and not wd.src_auth.exists()
    if cli.embedded:
        assert not started_servers(cli.home), "Prefect's temporary server stopped with the CLI"


def _recorded_end(site: Site, cli: Cli) -> str:
    """The run's final state type as its Prefect server recorded it."""
    if cli.embedded:  # the server is gone with the CLI: its database says
        with sqlite3.connect(cli.home / "prefect.db") as db:
            return db.execute("SELECT state_type FROM flow_run ORDER BY created DESC LIMIT 1").fetchone()[0]
    api = site.env["PREFECT_API_URL"]
    deadline = time.monotonic() + 30
    while True:
        runs = httpx.post(
            f"{api}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC", "limit": 1}, timeout=10
        ).json()
        state = runs[0]["state_type"] if runs else None
        if state in ("CRASHED", "FAILED", "CANCELLED", "COMPLETED") or time.monotonic() > deadline:
            return str(state)
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("sig", "tty"), [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "sigterm"]
)
def test_stopped_at_three_stages_cleans_up_reports_and_resumes(site, baseline, sig, tty):
    name = signal.Signals(sig).name
    wd = WorkDir.at(site.base / f"work-{name}")
    out = site.base / "out" / f"{name}.tar"
    for stage in STAGES:
        cli, took = _stop_at(site, stage, sig, wd, out, tty=tty)
        EXIT_TIMES.append((name, stage, took))
        text = cli.text()
        assert f"layover: interrupted by {name} in {stage}; nothing was shipped" in text, text[-3000:]
        assert "Traceback" not in text
        _nothing_left(site, cli, wd, out)
        report = json.loads(out.with_name(out.name + ".failed.json").read_text())
        assert (report["status"], report["failed_stage"], report["sha256"]) == ("interrupted", stage, "")
        assert _recorded_end(site, cli) == "CRASHED", "the server recorded the run's end"
        again = site.complete(wd.root, out)
        assert sha256_of(out) == baseline, "a re-run gives the uninterrupted run's tarball"
        assert not out.with_name(out.name + ".failed.json").exists(), "a success removes the failure report"
        assert "archive sync" in again.text()


def test_a_second_ctrl_c_exits_at_once_and_the_next_run_cleans_up(site, baseline):
    wd = WorkDir.at(site.base / "work-twice")
    out = site.base / "out" / "twice.tar"
    cli = site.start(wd.root, out, tty=True, embedded=True)
    cli.wait_until(_moment(site, "archive sync", cli, wd, out), what="a copy")
    cli.ctrl_c()
    # the first Ctrl-C ended every copy; the run is cleaning up when the second comes
    cli.wait_until(
        lambda: not any("skopeo" in c for _, c in descendants(cli.pid)), what="copies ended", timeout=30
    )
    cli.ctrl_c()
    sent = time.monotonic()
    assert cli.wait(timeout=60) == 130
    EXIT_TIMES.append(("SIGINT x2", "archive sync", time.monotonic() - sent))
    assert "second Ctrl-C: exiting now" in cli.text() or "interrupted by SIGINT" in cli.text()
    deadline = time.monotonic() + 15  # the kernel stops the server when the CLI dies
    while started_servers(cli.home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not started_servers(cli.home)
    site.complete(wd.root, out)
    assert sha256_of(out) == baseline
