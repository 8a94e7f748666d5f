"""The run itself is killed: SIGKILL of `layover run`'s whole process group at each stage.

Every CLI run talks to ONE standing `prefect server start` (module fixture), so killing the CLI
leaves no embedded server behind and a run costs seconds, not the 15 s of a temporary server.

How a moment is hit: the run is watched (its log lines, the mount table, the output dir); at the
moment it is frozen with SIGSTOP, the state it is in is asserted (that is the state it is killed
in, honestly), then the group gets SIGKILL. The next run of the same release must clean up and
produce a tarball with the same sha256 as an uninterrupted run, leaving the archive as it was
apart from what archive sync added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from layover.testing.releases import Release
from layover.workdir import WorkDir
from tests.cli_runs import Cli, finished, run_argv
from tests.integration.conftest import ci_release
from tests.snapshot import sha256_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCALE = 0.3


# --- a standing Prefect server (prefect_api) and the CLI runs against it (tests/cli_runs.py) ---
@dataclass
class Site:
    ci_host: str
    rel: Release
    images: Path
    base: Path
    env: dict[str, str]
    runs: list[Cli] = field(default_factory=list)

    def start(self, work: Path, output: Path) -> Cli:
        run = Cli(run_argv(self.images, self.ci_host, work, output), self.env)
        self.runs.append(run)
        return run

    def complete(self, work: Path, output: Path, timeout: float = 240) -> Cli:
        run = self.start(work, output)
        assert run.wait(timeout=timeout) == 0, run.text()[-5000:]
        return run


@pytest.fixture(scope="module")
def site(prefect_api, module_registries, tmp_path_factory) -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="layover-faults-kill-"))
    s: Site | None = None
    try:
        ci = ci_release(module_registries, base, scale=SCALE)
        s = Site(ci.ci_host, ci.rel, ci.images, base, prefect_api.env(task_logs=True))
        yield s
    finally:
        try:
            for run in s.runs if s is not None else ():
                run.kill()
            for wd in base.glob("work*"):
                _cleanup_work_dir(module_registries.client, WorkDir.at(wd))
        finally:  # even if the engine went away: the temp dir never outlives the module
            shutil.rmtree(base, ignore_errors=True)


def _cleanup_work_dir(client, wd: WorkDir) -> None:
    """What a killed run may leave, removed whatever the test's outcome."""
    for c in client.containers.list(all=True, filters={"label": [f"layover.scope={wd.scope}"]}):
        c.remove(force=True, v=True)
    if _mounted(wd.merged):
        subprocess.run(["umount", "-l", str(wd.merged)], check=False)


def _mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines())


def _blobs(lower: Path) -> dict[str, str]:
    """Archive content: blob path -> sha256 of its data (uploads and links aside)."""
    root = lower / "docker/registry/v2/blobs"
    return {str(p.relative_to(root)): sha256_of(p) for p in root.rglob("data")} if root.exists() else {}


def _tree(lower: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(lower):
        rel = os.path.relpath(dirpath, lower)
        out[rel + "/"] = "dir"
        for f in files:
            out[os.path.join(rel, f)] = sha256_of(Path(dirpath, f))
    return out


@pytest.fixture(scope="module")
def baseline(site) -> tuple[str, Path]:
    """An uninterrupted run: the sha256 every recovered run must reproduce, and its work dir."""
    work, out = site.base / "work-baseline", site.base / "out" / "baseline.tar"
    site.complete(work, out)
    return sha256_of(out), work


# --- the kill ----------------------------------------------------------------------------------
def _scope_containers(docker_client, wd: WorkDir) -> list[str]:
    return [
        c.name
        for c in docker_client.containers.list(all=True, filters={"label": [f"layover.scope={wd.scope}"]})
    ]


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.partial")) if out.parent.exists() else []


def _assert_recovered(site: Site, docker_client, wd: WorkDir, out: Path, want_sha: str) -> Cli:
    again = site.complete(wd.root, out)
    assert sha256_of(out) == want_sha, "a recovered run must give the uninterrupted run's tarball"
    assert (out.with_name(out.name + ".sha256")).read_text().split()[0] == want_sha
    assert not _partials(out)
    assert not _scope_containers(docker_client, wd)
    assert not _mounted(wd.merged)
    assert not wd.src_auth.exists()
    return again


def test_the_cli_run_reaches_the_server_whole(site, baseline):
    # `layover run` exits without interpreter teardown (cli._exit_without_teardown): nothing
    # queued for the server may be lost: every task run done, the flow's last log line, the
    # report artifact.
    api = site.env["PREFECT_API_URL"]
    runs = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            "sort": "START_TIME_ASC",
            "limit": 1,
        },
    ).json()
    assert runs, "the baseline run is not on the server"
    run = runs[0]
    # events are processed by the server asynchronously: give it a moment, not a pass
    deadline = time.monotonic() + 30
    while True:
        tasks = httpx.post(
            f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}, "limit": 200}
        ).json()
        states = sorted({t["state_type"] for t in tasks})
        if (len(tasks) >= 15 and states == ["COMPLETED"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(tasks) >= 15 and states == ["COMPLETED"], (len(tasks), states)
    logs = httpx.post(
        f"{api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [str(run["id"])]}}, "limit": 200, "sort": "TIMESTAMP_DESC"},
    ).json()
    # the flow run's own last line is logged moments before the process exits
    assert any(
        entry["message"].startswith("Finished in state Completed") and not entry["task_run_id"]
        for entry in logs
    ), [entry["message"] for entry in logs][-5:]
    artifacts = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
    ).json()
    # the report, the copy stages' progress (attached sync's too), and a table of the images each archive-sync copier
    # task copied (unkeyed)
    assert sorted(a["key"] for a in artifacts if a["key"]) == [
        "archive-sync-progress",
        "attached-sync-progress",
        "package-sync-progress",
        "release-report",
    ]
    tables = [a for a in artifacts if not a["key"]]
    assert tables and all(a["type"] == "table" and a["task_run_id"] for a in tables), tables


def test_killed_during_archive_sync(site, baseline, docker_client):
    want, base_work = baseline
    wd = WorkDir.at(site.base / "work-archive-sync")
    out = site.base / "out" / "archive-sync.tar"
    run = site.start(wd.root, out)
    run.freeze_at(lambda: run.saw(r"Task run 'archive-sync: "))
    n = len(site.rel.images)
    assert not run.saw(f"archive sync: {n}/{n} images done"), "stage already over"
    assert _scope_containers(docker_client, wd), "the archive registry was running"

    # While the frozen run holds the lock, a second run fails at once naming the holder.
    started = time.monotonic()
    second = site.start(wd.root, site.base / "out" / "second.tar")
    assert second.wait(timeout=120) == 1, second.text()
    assert "is in use by run" in second.text() and f"pid {run.pid}" in second.text(), second.text()
    assert time.monotonic() - started < 60
    run.kill()  # SIGKILL works on stopped processes

    # The killed holder does not block: the next run goes straight through.
    _assert_recovered(site, docker_client, wd, out, want)
    # Archive sync only ever adds, and what it added is the complete release.
    assert _blobs(wd.lower) == _blobs(base_work / "lower")


@pytest.mark.parametrize("stage", ["overlay-mounted", "prune", "package-sync", "gc", "tarball"])
def test_killed_at_a_later_stage(site, baseline, docker_client, stage):
    want, base_work = baseline
    wd = WorkDir.at(base_work)  # its archive already holds the release: nothing to add
    out = site.base / "out" / f"{stage}.tar"
    lower_before = _tree(wd.lower)
    upper_repos = wd.upper / "docker/registry/v2/repositories"

    def whiteouts() -> bool:
        try:
            # a deleted lower dir leaves a whiteout (a 0/0 char device, or an xattr-marked
            # file on newer kernels): anything named _manifests in upper that is not a dir
            return any(not p.is_dir() for p in upper_repos.rglob("_manifests"))
        except OSError:
            return False

    for attempt in range(5):  # a very short stage can be missed; try again, never pretend
        run = site.start(wd.root, out)
        if stage == "overlay-mounted":
            run.freeze_at(lambda run=run: run.saw(finished("overlay-reset")))
            ok = _mounted(wd.merged) and not run.saw(finished("prune-manifests"))
        elif stage == "prune":
            # pruning writes whiteouts into upper while the overlay is briefly unmounted
            # (overlay.hide_in_upper): the kill may land with it mounted or not
            run.freeze_at(lambda run=run: run.saw(finished("overlay-reset")) and whiteouts())
            ok = not run.saw(finished("prune-manifests"))
        elif stage == "package-sync":
            # the first manifest the package registry wrote: a tags dir recreated in upper
            run.freeze_at(
                lambda run=run: (
                    run.saw(finished("prune-manifests"))
                    and any(True for _ in upper_repos.glob("**/_manifests/tags/*"))
                ),
            )
            ok = not run.saw(r"package sync: \d+ images written")
        elif stage == "gc":
            run.freeze_at(lambda run=run: run.saw(r"gc plan: "))
            ok = not run.saw(finished("garbage-collect"))
        else:
            run.freeze_at(lambda run=run: bool(_partials(out)) or run.saw(finished("write-tarball")))
            ok = bool(_partials(out)) and not out.exists()
        run.kill()  # SIGKILL works on stopped processes
        if ok:
            break
        print(f"\n{stage}: attempt {attempt + 1} missed the moment; the run got past it")
        # a run that got past the moment may have finished the tarball: start from no output
        out.unlink(missing_ok=True)
        out.with_name(out.name + ".sha256").unlink(missing_ok=True)
    assert ok, f"could not freeze the run during {stage} in 5 attempts"
    if stage != "prune":
        assert _mounted(wd.merged), "a killed run leaves its overlay mounted"
    if stage == "tarball":
        assert _partials(out), "killed while the partial tarball was being written"

    _assert_recovered(site, docker_client, wd, out, want)
    assert _tree(wd.lower) == lower_before, "only archive sync may change the archive"
