"""The tar writer on real filesystems: loop-mounted XFS with reflink and btrfs, ext4, tmpfs,
overlayfs.

Needs root (mount, losetup, mknod), xfsprogs, btrfs-progs, GNU tar and bsdtar. When CI=true a missing
requirement fails the test instead of skipping it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from layover.adapters.tar_writer import (
    ALL_PATHS,
    DataOps,
    DataPath,
    ListedMember,
    ListedTree,
    MemoryFile,
    OverlayResolver,
    OverlayTree,
    PlainTree,
    TarResult,
    copy_range,
    ficlonerange,
    write_tarball,
)
from layover.errors import ArchiveDamagedError, DiskFullError, StorageError
from layover.tarball import Entry, Kind
from tests.conftest import require

pytestmark = pytest.mark.integration

V2 = "docker/registry/v2"


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    p = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True)
    assert p.returncode == 0, f"{argv}: {p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def root_tools() -> None:
    require(os.geteuid() == 0, "these tests need root (mount, losetup, mknod)")
    for tool in ("mkfs.xfs", "losetup", "mount", "umount", "tar", "bsdtar", "filefrag"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")


def _loop_fs(tmp_path_factory, name: str, *mkfs: str) -> Iterator[Path]:
    """A fresh filesystem on a sparse 1 GiB loop device; unmounted and detached even on failure."""
    base = tmp_path_factory.mktemp(name)
    image, mnt = base / f"{name}.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(1 << 30)  # sparse: costs only what the tests write
    loop = ""
    mounted = False
    try:
        _run(*mkfs, image)
        loop = _run("losetup", "--find", "--show", image).strip()
        _run("mount", loop, mnt)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        image.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def xfs(root_tools, tmp_path_factory) -> Iterator[Path]:
    """XFS with reflink=1."""
    yield from _loop_fs(tmp_path_factory, "xfs", "mkfs.xfs", "-q", "-m", "reflink=1")


@pytest.fixture(scope="module")
def btrfs(root_tools, tmp_path_factory) -> Iterator[Path]:
    """btrfs: reflinks always on."""
    require(shutil.which("mkfs.btrfs") is not None, "mkfs.btrfs is not installed (btrfs-progs)")
    yield from _loop_fs(tmp_path_factory, "btrfs", "mkfs.btrfs", "-q")


@pytest.fixture(scope="module")
def tmpfs(root_tools, tmp_path_factory) -> Iterator[Path]:
    mnt = tmp_path_factory.mktemp("tmpfs")
    _run("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=False)


@pytest.fixture
def ext4(root_tools, tmp_path) -> Path:
    fstype = _run("stat", "-f", "-c", "%T", tmp_path).strip()
    require(fstype == "ext2/ext3", f"tmp_path should be on ext4, is on {fstype}")
    return tmp_path


@pytest.fixture
def scratch(request) -> Iterator[Path]:
    """A fresh directory on the filesystem named by the test's parameter."""
    base: Path = request.getfixturevalue(request.param)
    d = base / f"t-{os.urandom(4).hex()}"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- a registry-like tree with sizes around every boundary the layout cares about -----------
SIZES = [0, 71, 511, 512, 4095, 4096, 4097, 8192 + 100, 1_048_576 + 123, 3 * 1_048_576]


def _blob(rng: random.Random, size: int) -> tuple[str, bytes]:
    data = rng.randbytes(size)
    return hashlib.sha256(data + size.to_bytes(8, "big")).hexdigest(), data


def build_registry(root: Path, seed: int = 7) -> dict[str, bytes]:
    """Write a storage tree under root; return {relative file path: content}."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for size in SIZES:
        hex_, data = _blob(rng, size)
        files[f"{V2}/blobs/sha256/{hex_[:2]}/{hex_}/data"] = data
        for repo in ("lib", "lib/a"):
            files[f"{V2}/repositories/{repo}/_layers/sha256/{hex_}/link"] = f"sha256:{hex_}".encode()
    files[f"{V2}/repositories/lib/_manifests/tags/v1/current/link"] = b"sha256:" + b"1" * 64
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / V2 / "repositories/empty-dir").mkdir(parents=True)
    return files


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """(kind, permission bits, content sha256) of everything under root/docker."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root / "docker"):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = p.relative_to(root).as_posix()
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, "")
            else:
                assert stat.S_ISREG(st.st_mode), rel
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    out["docker"] = ("dir", 0, "")
    return out


def extract_all_ways(tarball: Path, into: Path) -> dict[str, Path]:
    """Extract with GNU tar, bsdtar and tarfile; return the three roots."""
    roots = {k: into / k for k in ("gnu", "bsd", "py")}
    for d in roots.values():
        d.mkdir(parents=True)
    _run("tar", "-xf", tarball, "-C", roots["gnu"])
    _run("bsdtar", "-xpf", tarball, "-C", roots["bsd"])
    with tarfile.open(tarball) as tf:
        tf.extractall(roots["py"], filter="data")
    return roots


def assert_extracts_to(tarball: Path, expected: dict[str, tuple[str, int, str]], work: Path) -> None:
    want = {k: (kind, 0o644 if kind == "file" else 0, h) for k, (kind, _, h) in expected.items()}
    for tool, root in extract_all_ways(tarball, work).items():
        got = snapshot(root)
        assert got == want, f"{tool} extracted a different tree"


def _check_sidecar(res: TarResult) -> None:
    assert hashlib.sha256(res.path.read_bytes()).hexdigest() == res.sha256
    side = res.path.with_name(res.path.name + ".sha256")
    assert side.read_text() == f"{res.sha256}  {res.path.name}\n"
    _run("sha256sum", "-c", side.name, cwd=res.path.parent)
    assert not [p for p in res.path.parent.iterdir() if p.name.endswith(".partial")]


def _data_bytes(files: dict[str, bytes]) -> int:
    return sum(len(v) for v in files.values())


# --- determinism across data paths and filesystems ------------------------------------------
PATH_CHOICES = {
    "default": ALL_PATHS,
    "kernel": (DataPath.KERNEL_COPY, DataPath.BUFFERED),
    "buffered": (DataPath.BUFFERED,),
}


def test_every_path_on_every_filesystem_writes_the_same_bytes(xfs, btrfs, tmpfs, tmp_path):
    digests: dict[tuple[str, str], str] = {}
    results: dict[tuple[str, str], TarResult] = {}
    for fs_name, base in (("xfs", xfs), ("btrfs", btrfs), ("ext4", tmp_path), ("tmpfs", tmpfs)):
        work = base / "same-bytes"
        work.mkdir()
        try:
            files = build_registry(work / "src")
            for choice, paths in PATH_CHOICES.items():
                res = write_tarball(PlainTree(work / "src"), work / f"{choice}.tar", data_paths=paths)
                _check_sidecar(res)
                digests[fs_name, choice] = res.sha256
                results[fs_name, choice] = res
                moved = res.bytes_cloned + res.bytes_kernel_copied + res.bytes_user_copied
                assert moved == _data_bytes(files)
                assert res.files == len(files)
        finally:
            shutil.rmtree(work)
    assert len(set(digests.values())) == 1, digests

    # each filesystem really took the path it is expected to take
    for fs_name in ("xfs", "btrfs"):
        assert results[fs_name, "default"].bytes_cloned > 4 * 1_048_576
        assert results[fs_name, "default"].fallbacks == 0
    for fs_name in ("ext4", "tmpfs"):
        assert results[fs_name, "default"].bytes_cloned == 0
        assert results[fs_name, "default"].bytes_kernel_copied > 4 * 1_048_576
    assert results["xfs", "kernel"].bytes_kernel_copied == _data_bytes(files)
    assert results["xfs", "buffered"].bytes_user_copied == _data_bytes(files)


@pytest.mark.parametrize("scratch", ["xfs", "btrfs", "ext4"], indirect=True)
def test_gnu_tar_bsdtar_and_tarfile_extract_exactly_the_source(scratch):
    build_registry(scratch / "src")
    res = write_tarball(PlainTree(scratch / "src"), scratch / "release.tar")
    assert_extracts_to(res.path, snapshot(scratch / "src"), scratch / "x")
    listing = _run("tar", "--utc", "-tvf", res.path)
    assert " 0/0 " in listing and "1970-01-01 00:00" in listing


def test_the_tarball_and_its_checksum_get_the_umasks_mode(tmp_path):
    build_registry(tmp_path / "src")
    old = os.umask(0o027)
    try:
        res = write_tarball(PlainTree(tmp_path / "src"), tmp_path / "release.tar")
    finally:
        os.umask(old)
    side = res.path.with_name(res.path.name + ".sha256")
    assert (stat.S_IMODE(res.path.stat().st_mode), stat.S_IMODE(side.stat().st_mode)) == (0o640, 0o640)


@pytest.mark.parametrize("scratch", ["xfs", "btrfs"], indirect=True)
def test_cloned_members_share_extents_and_cost_no_space(scratch):
    src = scratch / "src"
    blob = src / V2 / "blobs/sha256/aa/big"
    blob.mkdir(parents=True)
    (blob / "data").write_bytes(os.urandom(64 * 1_048_576 + 5))
    os.sync()

    def free() -> int:
        s = os.statvfs(scratch)
        return s.f_bavail * s.f_frsize

    before = free()
    cloned = write_tarball(PlainTree(src), scratch / "cloned.tar")
    os.sync()
    used_by_clone = before - free()
    frag = _run("filefrag", "-v", cloned.path)
    assert "shared" in frag, frag
    assert cloned.bytes_cloned == 64 * 1_048_576

    before = free()
    copied = write_tarball(PlainTree(src), scratch / "copied.tar", data_paths=(DataPath.BUFFERED,))
    os.sync()
    used_by_copy = before - free()
    assert copied.sha256 == cloned.sha256
    assert used_by_copy >= 64 * 1_048_576
    assert used_by_clone < 4 * 1_048_576, used_by_clone


# --- leading in-memory files and members read from another tarball (deltas) ----------------
@pytest.mark.parametrize("scratch", ["xfs", "btrfs", "ext4"], indirect=True)
def test_an_in_memory_first_member_and_ranges_of_another_tarball(scratch, request):
    """The contents file leads; a tarball re-rooted from another one's members (what a delta
    does) extracts to the same files, and on XFS/btrfs clones its blocks out of the first."""
    files = build_registry(scratch / "src")
    note = b'{"what": "contents"}\n' * 400  # > 4 KiB: an aligned member written from memory
    full = write_tarball(
        PlainTree(scratch / "src"), scratch / "full.tar", first=[MemoryFile("layover/contents.json", note)]
    )
    with tarfile.open(full.path) as tf:
        members = tf.getmembers()
        assert members[0].name == "layover/contents.json"
        assert tf.extractfile(members[0]).read() == note  # type: ignore[union-attr]
    again = write_tarball(
        PlainTree(scratch / "src"),
        scratch / "again.tar",
        first=[MemoryFile("layover/contents.json", note)],
        data_paths=(DataPath.BUFFERED,),
    )
    assert again.sha256 == full.sha256

    listed = [ListedMember(Entry("layover", Kind.DIR)), ListedMember(Entry("layover/delta", Kind.DIR))]
    for m in members[1:]:
        entry = Entry(f"layover/delta/{m.name}", Kind.DIR if m.isdir() else Kind.FILE, m.size)
        listed.append(ListedMember(entry, full.path if m.isfile() else None, m.offset_data))
    delta = write_tarball(
        ListedTree(tuple(listed)), scratch / "delta.tar", first=[MemoryFile("layover/contents.json", b"{}")]
    )
    _check_sidecar(delta)
    out = scratch / "x"
    out.mkdir()
    _run("tar", "-xf", delta.path, "-C", out)
    for rel, data in files.items():
        assert (out / "layover/delta" / rel).read_bytes() == data, rel
    if request.node.callspec.params["scratch"] in ("xfs", "btrfs"):
        big = sum(len(d) - len(d) % 4096 for d in files.values() if len(d) >= 4096)
        assert delta.bytes_cloned == big, "the aligned members of the full tarball clone into the delta"


# --- fallbacks ----------------------------------------------------------------------------
@pytest.mark.parametrize("scratch", ["xfs", "btrfs"], indirect=True)
def test_a_clone_that_fails_midway_falls_back_without_corrupting_output(scratch):
    files = build_registry(scratch / "src")
    reference = write_tarball(
        PlainTree(scratch / "src"), scratch / "ref.tar", data_paths=(DataPath.BUFFERED,)
    )
    calls = []

    def flaky_clone(src_fd: int, src_off: int, length: int, dst_fd: int, dst_off: int) -> None:
        calls.append(length)
        if len(calls) == 2:
            # leave wrong bytes in the member's range (a half-done clone), then fail
            ficlonerange(src_fd, src_off, 4096, dst_fd, dst_off)
            with open("/dev/urandom", "rb") as r:
                os.pwrite(dst_fd, r.read(length), dst_off)
            raise OSError(errno.EIO, "injected clone failure")
        ficlonerange(src_fd, src_off, length, dst_fd, dst_off)

    res = write_tarball(PlainTree(scratch / "src"), scratch / "flaky.tar", ops=DataOps(clone=flaky_clone))
    assert res.sha256 == reference.sha256
    assert res.fallbacks == 1
    assert res.bytes_cloned > 0 and res.bytes_kernel_copied > 0
    assert len(calls) > 2  # EIO is not "unsupported": later members still clone
    assert res.bytes_cloned + res.bytes_kernel_copied + res.bytes_user_copied == _data_bytes(files)
    _check_sidecar(res)


@pytest.mark.parametrize("scratch", ["ext4"], indirect=True)
def test_an_unsupported_path_is_not_retried_on_the_same_device(scratch):
    build_registry(scratch / "src")
    clones, copies = [], []

    def no_clone(*args: int) -> None:
        clones.append(args)
        raise OSError(errno.EOPNOTSUPP, "no reflinks here")

    def no_copy(*args: int) -> None:
        copies.append(args)
        raise OSError(errno.EXDEV, "cross device")

    res = write_tarball(
        PlainTree(scratch / "src"), scratch / "r.tar", ops=DataOps(clone=no_clone, copy=no_copy)
    )
    assert len(clones) == 1 and len(copies) == 1
    assert res.bytes_cloned == res.bytes_kernel_copied == 0
    ref = write_tarball(
        PlainTree(scratch / "src"), scratch / "k.tar", ops=DataOps(clone=no_clone, copy=copy_range)
    )
    assert ref.sha256 == res.sha256


def _named_registry(root: Path) -> dict[str, bytes]:
    """A storage tree whose blobs are named by their sha256, as a registry's are: the sizes
    around every boundary, and one well past the size hashed on the second thread."""
    rng = random.Random(5)
    blobs: dict[str, bytes] = {}
    for size in [*SIZES, 5 * 1_048_576 + 17]:
        data = rng.randbytes(size)
        hex_ = hashlib.sha256(data).hexdigest()
        blobs[hex_] = data
        path = root / V2 / "blobs/sha256" / hex_[:2] / hex_ / "data"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        link = root / V2 / "repositories/lib/_layers/sha256" / hex_ / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_bytes(f"sha256:{hex_}".encode())
    return blobs


@pytest.mark.parametrize("scratch", ["xfs", "ext4"], indirect=True)
@pytest.mark.parametrize("choice", list(PATH_CHOICES))
def test_blobs_are_hashed_against_their_names_and_a_damaged_one_publishes_nothing(scratch, choice):
    blobs = _named_registry(scratch / "src")
    paths = PATH_CHOICES[choice]
    plain = write_tarball(PlainTree(scratch / "src"), scratch / "plain.tar", data_paths=paths)
    checked = write_tarball(PlainTree(scratch / "src"), scratch / "r.tar", data_paths=paths, check_blobs=True)
    # the same bytes as without the check, and every blob member hashed once
    assert checked.sha256 == plain.sha256 and plain.blobs_checked == 0
    assert checked.blobs_checked == len(blobs)
    _check_sidecar(checked)
    kept = checked.path.read_bytes()

    # one byte flipped in the middle of the largest blob, and the smallest non-empty one emptied
    big = max(blobs, key=lambda h: len(blobs[h]))
    small = min((h for h in blobs if blobs[h]), key=lambda h: len(blobs[h]))
    for hex_, data in (
        (big, blobs[big][:100] + bytes([blobs[big][100] ^ 1]) + blobs[big][101:]),
        (small, b""),
    ):
        (scratch / "src" / V2 / "blobs/sha256" / hex_[:2] / hex_ / "data").write_bytes(data)
    with pytest.raises(ArchiveDamagedError) as info:
        write_tarball(PlainTree(scratch / "src"), scratch / "r.tar", data_paths=paths, check_blobs=True)
    message = str(info.value)
    assert "\n" not in message and "2 blob(s) do not hash to their names" in message, message
    assert info.value.blobs == tuple(sorted((big, small)))
    # nothing published: the previous tarball and its checksum stay, no partial file is left
    assert checked.path.read_bytes() == kept
    _check_sidecar(checked)


@pytest.mark.parametrize("scratch", ["ext4"], indirect=True)
def test_disk_full_keeps_the_previous_release_and_leaves_no_temp_file(scratch):
    build_registry(scratch / "src")
    old = write_tarball(PlainTree(scratch / "src"), scratch / "r.tar")
    old_bytes = old.path.read_bytes()
    (scratch / "src" / V2 / "blobs/extra").write_bytes(b"new")

    def full(*args: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="no space left"):
        write_tarball(PlainTree(scratch / "src"), scratch / "r.tar", ops=DataOps(clone=full, copy=full))
    assert old.path.read_bytes() == old_bytes
    _check_sidecar(old)


@pytest.mark.parametrize("scratch", ["ext4"], indirect=True)
@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
def test_links_and_special_files_are_refused(scratch, kind):
    build_registry(scratch / "src")
    bad = scratch / "src" / V2 / "repositories/lib/oops"
    if kind == "symlink":
        bad.symlink_to("/etc/passwd")
    elif kind == "fifo":
        os.mkfifo(bad)
    else:
        os.mknod(bad, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    with pytest.raises(StorageError, match="oops"):
        write_tarball(PlainTree(scratch / "src"), scratch / "r.tar")
    assert sorted(p.name for p in scratch.iterdir()) == ["src"]


def test_a_tree_without_registry_storage_is_refused(tmp_path):
    (tmp_path / "docker").mkdir()
    with pytest.raises(StorageError, match="not a registry root"):
        write_tarball(PlainTree(tmp_path), tmp_path / "r.tar")


# --- overlay ------------------------------------------------------------------------------
@pytest.fixture
def overlay(request, root_tools) -> Iterator[OverlayTree]:
    """lower = a registry tree; merged changed the way a release run changes it."""
    base: Path = request.getfixturevalue(request.param)
    d = base / f"ovl-{os.urandom(4).hex()}"
    lower, upper, work, merged = (d / n for n in ("lower", "upper", "work", "merged"))
    for p in (upper, work, merged):
        p.mkdir(parents=True)
    build_registry(lower)
    mounted = False
    try:
        _run(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}",
            merged,
        )
        mounted = True
        yield OverlayTree(merged=merged, upper=upper, lower=lower)
    finally:
        if mounted:
            subprocess.run(["umount", merged], check=False)
        shutil.rmtree(d, ignore_errors=True)


def _change_like_a_release(tree: OverlayTree, seed: int = 11) -> None:
    rng = random.Random(seed)
    m = tree.merged / V2
    blobs = sorted((m / "blobs/sha256").glob("*/*"))
    shutil.rmtree(blobs[0])  # -> whiteout in upper
    (m / "repositories/lib/_layers/sha256" / blobs[1].name / "link").unlink()  # -> whiteout
    shutil.rmtree(m / "repositories/lib/_manifests")  # prune, then the registry recreates it:
    tag = m / "repositories/lib/_manifests/tags/v2/current"
    tag.mkdir(parents=True)  # -> opaque directory
    (tag / "link").write_bytes(b"sha256:" + b"2" * 64)
    hex_, data = _blob(rng, 2 * 1_048_576 + 9)  # a new blob, only in upper
    new = m / "blobs/sha256" / hex_[:2] / hex_
    new.mkdir(parents=True, exist_ok=True)
    (new / "data").write_bytes(data)
    with open(m / "repositories/lib/a/_layers/sha256" / blobs[2].name / "link", "ab") as f:
        f.write(b"")  # opened for writing: copied up, same content


@pytest.mark.parametrize("overlay", ["xfs", "btrfs", "ext4"], indirect=True)
def test_merged_overlay_view_with_whiteouts_and_opaque_dir(overlay, tmp_path):
    _change_like_a_release(overlay)
    up = overlay.upper / V2
    whiteouts = [p for p in up.rglob("*") if p.is_char_device() and os.lstat(p).st_rdev == 0]
    assert len(whiteouts) == 2
    assert os.getxattr(up / "repositories/lib/_manifests", "trusted.overlay.opaque") == b"y"

    out = overlay.upper.parent / "out"  # same filesystem as upper and lower: clones possible
    out.mkdir()
    res = write_tarball(overlay, out / "release.tar")
    _check_sidecar(res)
    assert_extracts_to(res.path, snapshot(overlay.merged), tmp_path / "x")
    plain = write_tarball(PlainTree(overlay.merged), tmp_path / "plain.tar", data_paths=(DataPath.BUFFERED,))
    assert plain.sha256 == res.sha256
    if _run("stat", "-f", "-c", "%T", overlay.upper).strip() in ("xfs", "btrfs"):
        # cloning needs the real files: from the merged view it would fail with EXDEV
        assert res.bytes_cloned > 0 and res.fallbacks == 0


@pytest.mark.parametrize("overlay", ["ext4"], indirect=True)
def test_resolver_hides_lower_below_whiteouts_and_opaque_dirs(overlay):
    _change_like_a_release(overlay)
    r = OverlayResolver(overlay.upper, overlay.lower)
    lower_tags = sorted((overlay.lower / V2 / "repositories/lib/_manifests").rglob("link"))
    assert lower_tags
    for link in lower_tags:  # still on disk in lower, hidden by the opaque dir
        with pytest.raises(StorageError, match="neither upper nor lower"):
            r.resolve(link.relative_to(overlay.lower).as_posix())
    deleted = next(p for p in (overlay.upper / V2 / "blobs/sha256").glob("*/*") if p.is_char_device())
    with pytest.raises(StorageError, match="neither upper nor lower"):  # a whited-out directory
        r.resolve(deleted.relative_to(overlay.upper).as_posix() + "/data")
    deleted_link = next(
        p for p in (overlay.upper / V2 / "repositories/lib/_layers").rglob("link") if p.is_char_device()
    )
    with pytest.raises(StorageError, match="whited out"):  # a whited-out file
        r.resolve(deleted_link.relative_to(overlay.upper).as_posix())
    new_tag = f"{V2}/repositories/lib/_manifests/tags/v2/current/link"
    assert r.resolve(new_tag) == overlay.upper / new_tag
    a_lower_blob = next(
        p
        for p in (overlay.lower / V2 / "blobs/sha256").glob("*/*/data")
        if not (overlay.upper / p.relative_to(overlay.lower)).parent.exists()
    )
    rel = a_lower_blob.relative_to(overlay.lower).as_posix()
    assert r.resolve(rel) == a_lower_blob
