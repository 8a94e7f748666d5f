"""Disks that fill up: the work dir or the output on a small loop-mounted ext4 made by the test.

A full disk must end the run with a DiskFullError naming the path and the space, in one attempt,
leave no partial output, nothing mounted and an intact archive (content and metadata), and the
next run with space must succeed. The moments: the output disk before the tarball (preflight),
the work dir's disk during archive sync, during package sync (filled while the run is frozen
right after pruning), and one disk holding work dir and output, full during the tarball write.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layover import imagelist
from layover.adapters import overlay
from layover.errors import DiskFullError, LayoverError
from layover.settings import ReleaseRequest
from layover.storage.verify import verify_tarball
from layover.workdir import WorkDir
from tests.cli_runs import Cli, finished, run_argv
from tests.conftest import require
from tests.integration.conftest import CiSite
from tests.integration.flow_requests import release_request
from tests.integration.test_release_flow import tree_hash
from tests.snapshot import assert_unchanged, sha256_of, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _no_space_floor(monkeypatch):
    """These disks are filled mid-run on purpose (the estimate can be wrong): preflight's
    floor for a first release would refuse to start on them (tests/integration/test_cli_preflight.py
    covers that refusal)."""
    from layover import preflight

    monkeypatch.setattr(preflight, "SPACE_FLOOR", 0)


SCALE = 0.3


@pytest.fixture(scope="module")
def site(prefect_harness, ci_site) -> CiSite:
    return ci_site("faults-disk", scale=SCALE)


class LoopDisks:
    """Small ext4 filesystems on loop devices; every one unmounted (and its loop device freed:
    `mount -o loop` sets autoclear) at teardown, whatever happened."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def make(self, name: str, kib: int) -> Path:
        image, mnt = self.base / f"{name}.img", self.base / name
        with open(image, "wb") as fh:
            fh.truncate(kib * 1024)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", "1024", "-i", "1024", "-m", "0", str(image)],
            check=True,
            capture_output=True,
        )
        mnt.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True, capture_output=True)
        self.mounted.append(mnt)
        return mnt

    def grow(self, mnt: Path, kib: int) -> None:
        """The admin's fix: unmount, enlarge the image, resize2fs, mount again at the same path."""
        image = self.base / f"{mnt.name}.img"
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
        with open(image, "r+b") as fh:
            fh.truncate(kib * 1024)
        subprocess.run(["e2fsck", "-f", "-y", str(image)], capture_output=True)  # resize2fs wants it
        subprocess.run(["resize2fs", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True, capture_output=True)

    def cleanup(self) -> None:
        for mnt in reversed(self.mounted):
            # anything a failed run left mounted inside (the overlay) first
            for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
                point = line.split()[1]
                if point == str(mnt) or point.startswith(f"{mnt}/"):
                    subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture
def disks(tmp_path, docker_client) -> Iterator[LoopDisks]:
    require(os.geteuid() == 0, "loop mounts need root")
    d = LoopDisks(tmp_path)
    try:
        yield d
    finally:
        # a registry container holding a bind mount would keep the loop device busy
        for mnt in d.mounted:
            scope = WorkDir.at(mnt / "work").scope
            for c in docker_client.containers.list(all=True, filters={"label": [f"layover.scope={scope}"]}):
                c.remove(force=True, v=True)
        d.cleanup()


def _request(site: CiSite, work: Path, output: Path) -> ReleaseRequest:
    return release_request(site.ci_host, site.images, work, output, copy_retries=1)


def _leftovers(out: Path) -> list[str]:
    """What a failed run left beside the output, apart from its report (FILE.failed.json)."""
    report = out.with_name(out.name + ".failed.json")
    assert not out.parent.exists() or report.exists(), "a failed run says where it stopped"
    return [
        p.name for p in out.parent.iterdir() if p.name.startswith((out.name, f".{out.name}")) and p != report
    ]


def test_output_disk_full_names_the_path_and_size_and_a_bigger_disk_works(site, disks, tmp_path):
    from flows.release import release as release_flow

    small = disks.make("out-small", 256)
    work = tmp_path / "work"
    out = small / "release.tar"
    with pytest.raises(DiskFullError) as info:
        release_flow(_request(site, work, out))
    message = str(info.value)
    print(f"\n{message}")
    assert str(small) in message and "bytes" in message and "free" in message
    assert _leftovers(out) == [], "partial tarball left behind"
    archive = tree_hash(work / "lower")
    assert archive, "archive sync completed before the tarball stage"

    bigger = tmp_path / "bigger"
    bigger.mkdir()
    report = release_flow(_request(site, work, bigger / "release.tar"))
    assert verify_tarball(bigger / "release.tar", imagelist.load(site.images)).ok
    assert report.sha256
    after = tree_hash(work / "lower")
    assert {k: after.get(k) for k in archive} == archive


def test_work_dir_disk_full_fails_clearly_and_the_grown_disk_works(site, disks, tmp_path):
    from flows.release import release as release_flow

    disk = disks.make("work-small", 400)
    work, out = disk / "work", tmp_path / "out" / "release.tar"
    with pytest.raises(LayoverError) as info:
        release_flow(_request(site, work, out))
    message = str(info.value)
    print(f"\n{message}")
    assert "no space left" in message.lower()
    assert str(disk) in message or str(work) in message
    assert not out.exists() and not (out.parent.exists() and _leftovers(out))
    before = tree_hash(work / "lower")

    disks.grow(disk, 64 * 1024)  # ext4 adds inodes only with new block groups (8 MiB each)
    release_flow(_request(site, work, out))
    assert verify_tarball(out, imagelist.load(site.images)).ok
    after = tree_hash(work / "lower")
    # what the failed sync stored stays (the archive is additive); uploads it left may be purged,
    # and a link file the registry created but could not fill when the disk ran out (empty:
    # corrupt, no digest in it) is written whole by the run that has the space
    torn = {k for k, v in before.items() if v == _EMPTY and k.endswith("/link")}
    kept = {k: v for k, v in before.items() if "/_uploads/" not in k and k not in torn}
    assert {k: after.get(k) for k in kept} == kept
    assert all(after.get(k) not in (None, _EMPTY) for k in torn), torn


_EMPTY = hashlib.sha256(b"").hexdigest()


def _fill(mnt: Path) -> Path:
    """Take every free block of the filesystem at `mnt` (fallocate, smaller and smaller)."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        offset, chunk = 0, max(4096, os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize)
        while chunk >= 1024:
            try:
                os.posix_fallocate(fd, offset, chunk)
                offset += chunk
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def _shrink_to(mnt: Path, free: int) -> Path:
    """Leave about `free` bytes free on the filesystem at `mnt`, with one filler file."""
    filler = mnt / "filler"
    have = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    assert have > free, (have, free)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, have - free)
    finally:
        os.close(fd)
    return filler


def _partial_tarballs(directory: Path) -> list[Path]:
    return list(directory.glob(".*.partial"))


def _du(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, n)).st_blocks * 512 for d, ds, fs in os.walk(path) for n in ds + fs)


def _nothing_left(wd: WorkDir, docker_client) -> None:
    assert not overlay.is_mounted(wd.merged), "the overlay was left mounted"
    assert not docker_client.containers.list(all=True, filters={"label": [f"layover.scope={wd.scope}"]})


def _task_runs(flow_run_id, name: str) -> list:
    """The task runs of `name` in a flow run (rows reach the server a moment after the run:
    wait until the failed one is there)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            runs = [
                t
                for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
                if t.name.startswith(name)
            ]
        if (
            runs and all(t.state is not None and t.state.is_final() for t in runs)
        ) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def test_one_disk_for_work_dir_and_output_full_during_the_tarball_write(site, disks, docker_client):
    """The tarball fits no more once the package is built: DiskFullError by type, after one
    attempt of the tarball task, no partial file, an untouched archive; with space it works."""
    from flows.release import release as release_flow

    disk = disks.make("one-disk", 16 * 1024)
    wd = WorkDir.at(disk / "work")
    first = release_flow(_request(site, wd.root, disk / "first.tar"))
    size = (disk / "first.tar").stat().st_size
    for p in disk.glob("first.tar*"):
        p.unlink()
    upper = _du(wd.upper) + _du(wd.work)
    for d in (wd.upper, wd.work):  # the next reset would delete them off the critical path
        shutil.rmtree(d)
    before = snapshot(wd.lower)
    # room for the overlay's links and whiteouts (half as much again as the last run's took),
    # not for the tarball: ext4 cannot reflink, so the tarball needs its full size again
    free = upper * 3 // 2 + size // 4
    assert free < size - upper, (upper, size)
    filler = _shrink_to(disk, free)
    out = disk / "release.tar"
    # With the last release's record, preflight refuses before anything starts ...
    refused = release_flow(_request(site, wd.root, out), return_state=True)
    assert refused.is_failed()
    with pytest.raises(DiskFullError, match="estimated from the last release"):
        refused.result()
    assert snapshot(wd.lower) == before and not _partial_tarballs(disk)
    # ... without it (as on a first run) the disk fills during the tarball write itself
    shutil.rmtree(wd.releases)
    state = release_flow(_request(site, wd.root, out), return_state=True)
    assert state.is_failed()
    with pytest.raises(DiskFullError) as info:
        state.result()
    message = str(info.value)
    print(f"\n{message}")
    assert "\n" not in message and str(disk) in message and "no space left" in message
    tar_runs = _task_runs(state.state_details.flow_run_id, "write-tarball")
    assert [(t.run_count, t.state.type.value) for t in tar_runs] == [(1, "FAILED")], tar_runs
    assert _leftovers(out) == []
    assert_unchanged(before, snapshot(wd.lower))
    _nothing_left(wd, docker_client)

    filler.unlink()
    again = release_flow(_request(site, wd.root, out))
    assert again.sha256 == first.sha256 == sha256_of(out)


def test_work_dir_disk_full_during_package_sync_is_one_line_and_leaves_nothing(
    site, disks, prefect_api, docker_client, tmp_path
):
    """`layover run` frozen right after pruning, its work dir's disk filled, then let go: the
    links package sync writes into the overlay's upper dir find no space."""
    # above preflight's floor for a first release (256 MiB; a CLI run has it), filled mid-run
    disk = disks.make("work-pkg", 400 * 1024)
    wd = WorkDir.at(disk / "work")
    out = tmp_path / "out" / "release.tar"
    argv = run_argv(site.images, site.ci_host, wd.root, out)
    env = prefect_api.env(task_logs=True)
    first = Cli(argv, env)
    assert first.wait(timeout=240) == 0, first.text()[-3000:]
    want = sha256_of(out)
    for p in out.parent.glob(f"{out.name}*"):
        p.unlink()
    before = snapshot(wd.lower)

    run = Cli(argv, env)
    run.freeze_at(lambda: run.saw(finished("prune-manifests")), what="pruning done")
    assert not run.saw(r"package sync: \d+ images written")
    filler = _fill(disk)
    run.thaw()
    assert run.wait(timeout=240) == 5, run.text()[-3000:]
    errors = [line for line in run.text().splitlines() if line.startswith("layover: error:")]
    print(f"\n{errors}")
    assert len(errors) == 1, run.text()[-3000:]
    assert "no space left on device during package sync" in errors[0] and str(wd.upper) in errors[0]
    assert not out.exists() and _leftovers(out) == []
    assert_unchanged(before, snapshot(wd.lower))
    _nothing_left(wd, docker_client)

    filler.unlink()
    again = Cli(argv, env)
    assert again.wait(timeout=240) == 0, again.text()[-3000:]
    assert sha256_of(out) == want
