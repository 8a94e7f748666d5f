"""Disks that fill up: the work dir or the output on a small loop-mounted ext4 made by the test.

A full disk must end the run with a DiskFullError naming the path and the space, leave no
partial output and an intact archive, and the next run on a bigger disk must succeed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from layover import imagelist
from layover.errors import DiskFullError, LayoverError
from layover.settings import ListFromFile, ReleaseRequest
from layover.storage.verify import verify_tarball
from layover.workdir import WorkDir
from tests.conftest import require
from tests.integration.conftest import CiSite
from tests.integration.test_release_flow import tree_hash

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
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-i", "1024", "-m", "0",
                        str(image)],
                       check=True, capture_output=True)
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
    return ReleaseRequest(
        images=ListFromFile(path=str(site.images)), source=site.ci_host, src_tls_verify=False,
        work_dir=work, output=output, concurrency=4, copy_retries=1,
    )


def _leftovers(out: Path) -> list[str]:
    """What a failed run left beside the output, apart from its report (FILE.failed.json)."""
    report = out.with_name(out.name + ".failed.json")
    assert not out.parent.exists() or report.exists(), "a failed run says where it stopped"
    return [p.name for p in out.parent.iterdir()
            if p.name.startswith((out.name, f".{out.name}")) and p != report]


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
    # what the failed sync stored stays (the archive is additive); uploads it left may be purged
    kept = {k: v for k, v in before.items() if "/_uploads/" not in k}
    assert {k: after.get(k) for k in kept} == kept
