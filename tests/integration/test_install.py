"""`layover install` at a customer site, on real parts: packages made by the release flow, a
registry container (blob-descriptor cache ON, as a customer's may run) serving the storage dir
throughout, skopeo pulling every image back, `layover install` run as a real process.

Hostile tarballs are made here from a real package; a refused one must leave the storage dir
byte for byte as it was. The crash tests stop a real install at an exact point (its failpoints,
layover/install.py), check what a serving registry sees, SIGKILL it and run it again.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layover.adapters.registry_api import RegistryAPI
from layover.contents import CONTENTS_MEMBER, Contents
from layover.install import InstallOptions
from layover.install import install as install_lib
from layover.manifest import parse_manifest
from layover.reference import Digest
from layover.storage.layout import StorageLayout
from tests.conftest import require
from tests.integration.customer_site import (
    LAYOVER,
    extract,
    install,
    pull_all,
    snapshot,
)
from tests.integration.test_faults_disk import LoopDisks
from tests.integration.test_tar_writer import _loop_fs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(packages, tmp_path_factory) -> dict[str, Path]:
    """What plain `tar -xf` gives: release 1; release 1 then 2; release 2 alone."""
    base = tmp_path_factory.mktemp("reference")
    one = extract(packages.tars[1], base / "r1")
    both = extract(packages.tars[2], extract(packages.tars[1], base / "r1+r2"))
    two = extract(packages.tars[2], base / "r2")
    return {"r1": one, "r1+r2": both, "r2": two}


def _repos(c: Contents) -> set[str]:
    return {i.repository for i in c.images}


def serves_whole(api: RegistryAPI) -> int:
    """Every tag the registry lists resolves, and every manifest and blob below it is served with
    the right bytes: what a client pulling at that moment would get. Returns tags checked."""
    checked = 0
    for repo in api.catalog():
        for tag in api.tags(repo):
            stack = [api.manifest(repo, tag).data]
            while stack:
                m = parse_manifest(stack.pop(), f"{repo}:{tag}")
                stack += [api.manifest(repo, c).data for c in m.children]
                for blob in m.blobs:
                    api.get_blob(repo, blob)  # verified against its digest
            checked += 1
    return checked


# --- issue 12: install into an empty dir and over an older release, a registry serving it ------
def test_install_empty_then_older_release_then_prune_while_a_cached_registry_serves(
    packages, cached_registries, reference, tmp_path
):
    storage = tmp_path / "registry"
    storage.mkdir()
    reg = cached_registries.start("customer", storage)
    api = RegistryAPI(reg.host)
    c1, c2 = packages.contents(1), packages.contents(2)
    first = c1.images[0]
    blob = Digest(first.blobs[0][7:])
    # lookups that miss before the install ...
    assert not api.manifest_exists(first.repository, first.tag or "")
    assert not api.blob_exists(first.repository, blob)

    out = install(packages.tars[1], "--storage", storage, "--report", tmp_path / "r1.json")
    assert "restart: not needed" in out.stdout
    # ... are served right after it, with no restart: misses are not cached (docs/design.md §3)
    assert api.blob_exists(first.repository, blob)
    assert snapshot(storage) == snapshot(reference["r1"]), "install must give what tar -xf gives"
    assert pull_all(reg.host, c1, tmp_path / "pull") == 2 * len(c1.images)

    install(packages.tars[2], "--storage", storage)
    assert set(api.catalog()) == _repos(c1) | _repos(c2), "additive: release 1's images stay"
    assert snapshot(storage) == snapshot(reference["r1+r2"])
    pull_all(reg.host, c2, tmp_path / "pull")
    pull_all(reg.host, c1, tmp_path / "pull")

    # --prune deletes under the serving registry: the CLI wants it named, to restart it after
    refused = install(packages.tars[2], "--storage", storage, "--prune", check=False)
    assert refused.returncode == 2 and reg.name in refused.stderr
    out = install(packages.tars[2], "--storage", storage, "--prune", "--restart-container", reg.name)
    assert "--prune deleted files" in out.stdout
    assert snapshot(storage) == snapshot(reference["r2"]), "after --prune: exactly release 2"
    api.wait_ready()
    assert set(api.catalog()) == _repos(c2)
    pull_all(reg.host, c2, tmp_path / "pull")
    for gone in {i.repository for i in c1.images} - _repos(c2):
        assert api.tags(gone) == ()

    report = json.loads((tmp_path / "r1.json").read_text())
    assert report["checksum"] == "verified" and report["schema"] == "layover.install-report/1"
    assert (
        report["package_sha256"] == packages.tars[1].with_name("release-1.tar.sha256").read_text().split()[0]
    )
    assert report["verify"]["ok"] and report["blobs"]["written"] == len(c1.blobs)


def test_pruning_under_a_cached_registry_without_a_restart_serves_stale_blobs(
    packages, cached_registries, tmp_path
):
    """Why --restart-container exists: after a prune the cache still answers for deleted blobs."""
    storage = tmp_path / "registry"
    storage.mkdir()
    for n in (1, 2):
        install_lib(packages.tars[n], storage, InstallOptions())
    reg = cached_registries.start("stale", storage)
    api = RegistryAPI(reg.host)
    c1, c2 = packages.contents(1), packages.contents(2)
    gone = next(i for i in c1.images if i.repository not in _repos(c2))
    only = Digest(next(b for b in gone.blobs if b not in {x.digest for x in c2.blobs})[7:])
    api.get_blob(gone.repository, only)  # served once: now in the cache
    report = install_lib(packages.tars[2], storage, InstallOptions(prune=True))
    assert report.restart.needed
    assert not StorageLayout(storage).blob_data(only).exists()
    assert api.blob_exists(gone.repository, only), "negative control: the cache answers for a deleted blob"
    cached_registries.restart(reg)
    assert not api.blob_exists(gone.repository, only)


# --- hostile and damaged packages: refused, the storage dir byte-identical ------------------------
Member = tuple[tarfile.TarInfo, bytes]


def _members(tar: Path) -> list[Member]:
    with tarfile.open(tar) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else b"") for m in tf.getmembers()]  # type: ignore[union-attr]


def _write(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            info = _copy(info)
            info.size = len(data) if info.isfile() else 0
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    _checksum(path)
    return path


def _checksum(path: Path) -> None:
    import hashlib

    path.with_name(path.name + ".sha256").write_text(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    )


def _copy(info: tarfile.TarInfo) -> tarfile.TarInfo:
    new = tarfile.TarInfo(info.name)
    for attr in (
        "size",
        "mode",
        "mtime",
        "type",
        "linkname",
        "uid",
        "gid",
        "uname",
        "gname",
        "devmajor",
        "devminor",
    ):
        setattr(new, attr, getattr(info, attr))
    return new


def _extra(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info, data


def _first_blob(ms: list[Member], at_least: int = 1, avoid: frozenset[str] = frozenset()) -> int:
    return next(
        i
        for i, (m, d) in enumerate(ms)
        if m.name.endswith("/data") and len(d) >= at_least and m.name.split("/")[-2] not in avoid
    )


def _mutate(kind: str, installed: frozenset[str]) -> Callable[[list[Member]], list[Member]]:
    """`installed`: blob hexes the storage dir holds already (an install keeps those unread)."""
    v2 = "docker/registry/v2"

    def go(ms: list[Member]) -> list[Member]:
        if kind == "dotdot":
            return [*ms, _extra(f"{v2}/../../../escaped")]
        if kind == "absolute":
            return [*ms, _extra("/tmp/layover-escaped")]
        if kind == "symlink":
            return [*ms, _extra(f"{v2}/repositories/evil", tarfile.SYMTYPE, b"", "/etc")]
        if kind == "hardlink":
            return [*ms, _extra(f"{v2}/blobs/evil", tarfile.LNKTYPE, b"", "/etc/passwd")]
        if kind == "device":
            return [*ms, _extra(f"{v2}/dev-null", tarfile.CHRTYPE, b"")]
        if kind == "setuid":
            i = _first_blob(ms)
            info = _copy(ms[i][0])
            info.mode = 0o4755
            return [*ms[:i], (info, ms[i][1]), *ms[i + 1 :]]
        if kind == "duplicate":
            return [*ms, ms[-1]]
        if kind == "larger":
            i = _first_blob(ms)
            return [*ms[:i], (ms[i][0], ms[i][1] + b"x"), *ms[i + 1 :]]
        if kind == "undeclared":
            hex_ = "ab" * 32
            return [*ms, _extra(f"{v2}/blobs/sha256/ab/{hex_}/data", data=b"not a declared blob")]
        if kind == "missing":
            i = _first_blob(ms)
            return [*ms[:i], *ms[i + 1 :]]
        if kind == "tampered":
            i = _first_blob(ms, 100, avoid=installed)
            data = bytearray(ms[i][1])
            data[50] ^= 0xFF
            return [*ms[:i], (ms[i][0], bytes(data)), *ms[i + 1 :]]
        if kind == "contents-not-first":
            return [*ms[1:], ms[0]]
        raise AssertionError(kind)

    return go


HOSTILE = {
    "dotdot": "non-normal path",
    "absolute": "absolute",
    "symlink": "symbolic link",
    "hardlink": "hard link",
    "device": "character device",
    "setuid": "setuid",
    "duplicate": "appears twice",
    "larger": "bytes, layover/contents.json says",
    "undeclared": "not declared",
    "missing": "declared by layover/contents.json but missing",
    "tampered": "hash",
    "contents-not-first": "first member",
}


@pytest.fixture(scope="module")
def release_1_installed(packages, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("hostile") / "registry"
    storage.mkdir()
    install_lib(packages.tars[1], storage, InstallOptions())
    return storage


def _refused(package: Path, storage: Path, *extra: str) -> str:
    before = snapshot(storage)
    p = install(package, "--storage", storage, *extra, check=False)
    assert snapshot(storage) == before, "a refused package must change nothing"
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("layover: error:")]
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert len(errors) == 1 and len(p.stderr.strip().splitlines()[-1]) > 20, p.stderr
    return errors[0]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_members_are_refused_and_change_nothing(packages, release_1_installed, tmp_path, kind):
    installed = frozenset(b.digest[7:] for b in packages.contents(1).blobs)
    bad = _write(tmp_path / f"{kind}.tar", _mutate(kind, installed)(_members(packages.tars[2])))
    error = _refused(bad, release_1_installed)
    assert HOSTILE[kind] in error, error
    assert str(bad) in error
    assert not (Path("/tmp") / "layover-escaped").exists()


def test_a_wrong_checksum_and_a_truncated_tarball_are_refused(packages, release_1_installed, tmp_path):
    good = packages.tars[2]
    copy = tmp_path / "release-2.tar"
    copy.write_bytes(good.read_bytes())
    copy.with_name("release-2.tar.sha256").write_text(f"{'0' * 64}  release-2.tar\n")
    assert "checksum says" in _refused(copy, release_1_installed)
    assert "checksum says" in _refused(good, release_1_installed, "--sha256", "1" * 64)

    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 1024, len(data) - 700):  # in a blob, before the end marker
        short = tmp_path / f"cut-{cut}.tar"
        short.write_bytes(data[:cut])
        _checksum(short)  # even with a matching checksum (or --no-checksum) it is refused
        assert "truncated" in _refused(short, release_1_installed)
        assert "truncated" in _refused(short, release_1_installed, "--no-checksum")
    no_sum = tmp_path / "nosum" / "release-2.tar"
    no_sum.parent.mkdir()
    no_sum.write_bytes(data)
    assert "--no-checksum" in _refused(no_sum, release_1_installed)


def test_a_package_from_before_contents_files_is_refused(packages, release_1_installed, tmp_path):
    old_style = _write(
        tmp_path / "old.tar", [m for m in _members(packages.tars[2]) if m[0].name != CONTENTS_MEMBER]
    )
    assert "first member" in _refused(old_style, release_1_installed)


def test_dry_run_checks_everything_and_changes_nothing(packages, release_1_installed):
    before = snapshot(release_1_installed)
    p = install(packages.tars[2], "--storage", release_1_installed, "--dry-run", "--prune")
    assert snapshot(release_1_installed) == before
    assert "would install" in p.stdout and "checksum, members, manifests, space" in p.stdout
    assert "tag(s) the package does not list would be deleted" in p.stdout


def test_what_the_install_creates_belongs_to_the_storage_dirs_owner_whatever_the_umask(packages, tmp_path):
    """A registry running as its own user (Harbor's runs as 10000) must be able to write beside
    what was installed; the modes are those tar -xf gives as root."""
    require(os.geteuid() == 0, "chown needs root")
    storage = tmp_path / "registry"
    storage.mkdir()
    os.chown(storage, 10000, 10000)
    old = os.umask(0o077)
    try:
        install_lib(packages.tars[1], storage, InstallOptions())
    finally:
        os.umask(old)
    for dirpath, dirnames, filenames in os.walk(storage):
        for name in dirnames + filenames:
            st = os.lstat(Path(dirpath) / name)
            assert (st.st_uid, st.st_gid) == (10000, 10000), name
            assert stat.S_IMODE(st.st_mode) == (0o755 if name in dirnames else 0o644), name


@pytest.fixture(params=["xfs", "btrfs"])
def reflink_fs(request, tmp_path_factory) -> Iterator[Path]:
    require(os.geteuid() == 0, "loop mounts need root")
    mkfs = ("mkfs.xfs", "-q", "-m", "reflink=1") if request.param == "xfs" else ("mkfs.btrfs", "-q")
    require(shutil.which(mkfs[0]) is not None and shutil.which("filefrag") is not None, f"{mkfs[0]} missing")
    yield from _loop_fs(tmp_path_factory, request.param, *mkfs)


def test_on_xfs_and_btrfs_blob_data_is_cloned_out_of_the_tarball(packages, reference, reflink_fs, tmp_path):
    package = reflink_fs / "release-1.tar"
    for suffix in ("", ".sha256"):
        shutil.copyfile(f"{packages.tars[1]}{suffix}", f"{package}{suffix}")
    storage = reflink_fs / "registry"
    storage.mkdir()
    report = install_lib(package, storage, InstallOptions())
    blobs = packages.contents(1).blobs
    assert report.blobs.bytes_cloned == sum(b.size - b.size % 4096 for b in blobs if b.size >= 4096) > 0
    assert snapshot(storage) == snapshot(reference["r1"])
    biggest = max(blobs, key=lambda b: b.size)
    frag = subprocess.run(
        ["filefrag", "-v", str(StorageLayout(storage).blob_data(Digest(biggest.digest[7:])))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "shared" in frag, frag

    # the package on another filesystem: nothing can be cloned, the install copies instead
    elsewhere = reflink_fs / "from-ext4"
    elsewhere.mkdir()
    report = install_lib(packages.tars[1], elsewhere, InstallOptions())
    assert report.blobs.bytes_cloned == 0 and report.blobs.bytes_written == sum(b.size for b in blobs)
    assert snapshot(elsewhere) == snapshot(reference["r1"])


# --- killed at three points, then run again: the same end state ------------------------------------
def _stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"install exited {proc.returncode} before its failpoint: {proc.communicate()}"
            )
        state = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state == "T":
            return
        time.sleep(0.02)
    raise AssertionError("install did not reach its failpoint")


@pytest.mark.parametrize("point", ["install.blobs-midway", "install.links", "install.tags-midway"])
def test_sigkill_at_three_points_then_a_rerun_converges(
    packages, cached_registries, reference, tmp_path, point
):
    storage = tmp_path / "registry"
    storage.mkdir()
    install_lib(packages.tars[1], storage, InstallOptions())
    reg = cached_registries.start("kill", storage)
    api = RegistryAPI(reg.host)
    c1, c2 = packages.contents(1), packages.contents(2)
    pull_all(reg.host, c1, tmp_path / "pull")  # the cache holds release 1 now
    layout = StorageLayout(storage)
    new_blobs = {b.digest[7:] for b in c2.blobs} - {b.digest[7:] for b in c1.blobs}
    new_tags = {(i.repository, i.tag) for i in c2.images} - {(i.repository, i.tag) for i in c1.images}
    assert new_blobs and len(new_tags) >= 3

    proc = subprocess.Popen(
        [LAYOVER, "install", str(packages.tars[2]), "--storage", str(storage)],
        env={**os.environ, "LAYOVER_FAILPOINTS": point},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _stopped(proc)
        blobs_in = {h for h in new_blobs if layout.blob_data(Digest(h)).is_file()}
        tags_in = {t for t in new_tags if layout.tag_current_link(*t).is_file()}
        if point == "install.blobs-midway":
            assert 0 < len(blobs_in) < len(new_blobs) and not tags_in
        elif point == "install.links":
            assert blobs_in == new_blobs and not tags_in
            for img in c2.images:
                assert all(layout.layer_link(img.repository, Digest(b[7:])).is_file() for b in img.blobs)
                assert all(
                    layout.revision_link(img.repository, Digest(m[7:])).is_file() for m in img.manifests
                )
        else:
            assert blobs_in == new_blobs and 0 < len(tags_in) < len(new_tags)
        # what a client sees at this moment: every tag whole, release 1 untouched
        assert serves_whole(api) == len(c1.images) + len(tags_in)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert (storage / ".layover-install").exists(), "the killed install left its staging dir"

    install(packages.tars[2], "--storage", storage)
    assert snapshot(storage) == snapshot(reference["r1+r2"])
    assert serves_whole(api) == len(c1.images) + len(new_tags)
    pull_all(reg.host, c2, tmp_path / "pull")


# --- a full disk ------------------------------------------------------------------------------
@pytest.fixture
def disks(tmp_path) -> Iterator[LoopDisks]:
    require(os.geteuid() == 0, "loop mounts need root")
    d = LoopDisks(tmp_path)
    try:
        yield d
    finally:
        d.cleanup()


def test_a_disk_too_small_is_refused_before_anything_is_written(packages, disks):
    storage = disks.make("tiny", 1024) / "registry"
    storage.mkdir()
    p = install(packages.tars[1], "--storage", storage, check=False)
    assert p.returncode == 5 and "not enough space" in p.stderr and str(storage) in p.stderr, p.stderr
    assert snapshot(storage) == {}


def test_a_disk_that_fills_during_the_install_fails_cleanly_and_a_rerun_works(packages, reference, disks):
    mnt = disks.make("small", 8 * 1024)
    storage = mnt / "registry"
    storage.mkdir()
    proc = subprocess.Popen(
        [LAYOVER, "install", str(packages.tars[1]), "--storage", str(storage)],
        env={**os.environ, "LAYOVER_FAILPOINTS": "install.checked"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _stopped(proc)  # every check passed, the space check too; now someone else fills the disk
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 5 and "no space left" in err, err
    assert snapshot(storage) == {}, "nothing half-written is in place, no staging left"
    filler.unlink()
    install(packages.tars[1], "--storage", storage)
    assert snapshot(storage) == snapshot(reference["r1"])
