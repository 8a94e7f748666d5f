"""Write the release tarball: list the storage tree, resolve overlay members, move the data.

The byte layout is decided by layover.tarball (pure); this module fills file data in at the
planned offsets by one of three data paths, chosen per member and reported:

    CLONE        FICLONERANGE shares the blob's whole 4 KiB blocks with the tarball (XFS with
                 reflink=1, btrfs); the unaligned tail is written from user space.
    KERNEL_COPY  copy_file_range: the kernel copies, nothing passes through user space (ext4,
                 tmpfs, or a clone that failed).
    BUFFERED     pread/pwrite in 1 MiB chunks: works everywhere.

A path that fails falls back to the next one for that member; a path that fails because the
filesystem cannot do it at all (EXDEV, EOPNOTSUPP, ...) is not tried again on that device.
Every path writes at explicit offsets, so a fallback rewrites the member's whole data range and
a half-done clone cannot leave stale bytes behind.

An overlay merged view cannot be cloned from (EXDEV): each member is resolved to its real file
in upper/ (whiteouts and opaque directories respected) or lower/.

Besides a storage tree on disk, a source can be a list of members whose data is a byte range
of another file (a delta copies blob members out of the full package: at aligned offsets, so
they clone too) or bytes in memory. Leading in-memory files (`first`: the contents file) go
before the tree.

The output is written to a temp name in the output's directory, fsynced, renamed, and a
`<output>.sha256` (sha256sum -c format) is written beside it the same way.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import hashlib
import os
import queue
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from layover.errors import ArchiveDamagedError, DiskFullError, StorageError
from layover.reference import Digest
from layover.storage.hashing import update_from_fd
from layover.storage.layout import V2, StorageLayout, blob_of_data_file
from layover.tarball import ALIGN, Entry, Kind, PlannedMember, data_regions, plan

CHUNK = 1 << 20
_V2_PREFIX = f"{V2.as_posix()}/"


# --- sources -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlainTree:
    root: Path  # the registry root: holds docker/registry/v2


@dataclass(frozen=True)
class OverlayTree:
    merged: Path  # the mounted merged view (the package registry's root)
    upper: Path  # the overlay's upperdir (a registry root)
    lower: Path  # the overlay's lowerdir (a registry root)


@dataclass(frozen=True)
class MemoryFile:
    """A file whose bytes are in memory, e.g. the contents file placed before the tree."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ListedMember:
    """One member given explicitly: a directory; or a file whose data is the `entry.size` bytes
    at `offset` in `path` (a member of another tarball); or a file whose bytes are `data`."""

    entry: Entry
    path: Path | None = None
    offset: int = 0
    data: bytes | None = None


@dataclass(frozen=True)
class ListedTree:
    """Members listed one by one instead of found by walking a directory (deltas)."""

    members: tuple[ListedMember, ...]


TarSource = PlainTree | OverlayTree | ListedTree


class DataPath(enum.Enum):
    CLONE = "clone"
    KERNEL_COPY = "kernel_copy"
    BUFFERED = "buffered"


ALL_PATHS: tuple[DataPath, ...] = (DataPath.CLONE, DataPath.KERNEL_COPY, DataPath.BUFFERED)


@dataclass(frozen=True)
class TarResult:
    path: Path
    sha256: str
    size: int  # bytes in the tarball
    members: int  # directories and files
    files: int
    bytes_cloned: int  # file data shared with the source by FICLONERANGE
    bytes_kernel_copied: int  # file data copied by copy_file_range
    bytes_user_copied: int  # file data that went through user space (tails, buffered copies)
    seconds: float
    fallbacks: int = 0  # members whose first-choice data path failed and was retried
    blobs_checked: int = 0  # blob members whose data was hashed against their names (check_blobs)


# --- the seam: the two system calls that may fail on a given filesystem ---------------------
_FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range)


def ficlonerange(src_fd: int, src_offset: int, length: int, dst_fd: int, dst_offset: int) -> None:
    """Share `length` bytes (block aligned) of src with dst; raises OSError like the ioctl."""
    arg = struct.pack("=qQQQ", src_fd, src_offset, length, dst_offset)
    fcntl.ioctl(dst_fd, _FICLONERANGE, arg)


def copy_range(src_fd: int, src_offset: int, length: int, dst_fd: int, dst_offset: int) -> None:
    done = 0
    while done < length:
        n = os.copy_file_range(src_fd, dst_fd, length - done, src_offset + done, dst_offset + done)
        if n == 0:
            raise _SourceShrank(done)
        done += n


@dataclass(frozen=True)
class DataOps:
    """System calls the writer uses for clone and in-kernel copy. Tests replace them to inject
    failures; production uses the defaults."""

    clone: Callable[[int, int, int, int, int], None] = ficlonerange
    copy: Callable[[int, int, int, int, int], None] = copy_range


def _libc_sync_file_range() -> Callable[[int, int, int], None]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: the final fsync does it all
        return lambda fd, offset, length: None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return lambda fd, offset, length: fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE) and None


_SYNC_FILE_RANGE_WRITE = 2
# Starts writeback of a member's bytes as soon as they are copied, so the disk writes while
# later members are copied and hashed, instead of all 1.5 GB at the final fsync (which still
# runs and is what makes the file durable). Measured on bench storage (1.8 GB, ext4):
# 1.81 s -> 1.40 s median of 6 (bench/tar_bench.py).
start_writeback = _libc_sync_file_range()
_WRITEBACK_STEP = 8 << 20


class _SourceShrank(Exception):
    def __init__(self, got: int) -> None:
        self.got = got


# errnos meaning "this filesystem (pair) cannot do it": stop trying on that device
_UNSUPPORTED = {
    errno.EXDEV,
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EBADF,
    errno.EPERM,
}


# --- listing and overlay resolution ----------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    entry: Entry
    real: Path | None  # the file to read data from (None for directories and in-memory data)
    offset: int = 0  # where the member's data starts in `real`
    whole: bool = True  # `real` is exactly the member (its size must match), not a range of it
    data: bytes | None = None  # in-memory file data


def _refuse(path: Path, st: os.stat_result) -> StorageError:
    what = (
        "a symlink"
        if stat.S_ISLNK(st.st_mode)
        else "a device"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "a fifo"
        if stat.S_ISFIFO(st.st_mode)
        else "a socket"
        if stat.S_ISSOCK(st.st_mode)
        else "not a regular file or directory"
    )
    return StorageError(
        str(path),
        f"is {what}: registry storage holds only files and "
        "directories; remove it and write the tarball again",
    )


def _walk(root: Path) -> list[tuple[Entry, Path | None]]:
    """Every directory and regular file under root/docker, as (entry, path of a file). Other
    file types are refused: a release must not smuggle symlinks or devices into a registry host.
    Strings and the directory entries' own types, not a Path and an lstat per entry: a 600-image
    package has ~19,000 entries."""
    if not (root / V2).is_dir():
        raise StorageError(
            str(root / V2), "missing: this is not a registry root (expected docker/registry/v2 below it)"
        )
    top = os.fspath(root)
    st = os.lstat(f"{top}/docker")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(root / "docker", st)
    out: list[tuple[Entry, Path | None]] = [(Entry("docker", Kind.DIR), None)]
    stack = ["docker"]
    while stack:
        rel = stack.pop()
        with os.scandir(f"{top}/{rel}") as it:
            for d in it:
                child = f"{rel}/{d.name}"
                if d.is_dir(follow_symlinks=False):
                    out.append((Entry(child, Kind.DIR), None))
                    stack.append(child)
                elif d.is_file(follow_symlinks=False):
                    size = d.stat(follow_symlinks=False).st_size
                    out.append((Entry(child, Kind.FILE, size), Path(d.path)))
                else:
                    raise _refuse(Path(d.path), d.stat(follow_symlinks=False))
    return out


def _xattr(path: str | Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def _overlay_xattr(path: str | Path, key: str) -> bytes | None:
    # trusted.* for a normal (root) mount, user.* for a `userxattr` mount
    for ns in ("trusted", "user"):
        v = _xattr(path, f"{ns}.overlay.{key}")
        if v is not None:
            return v
    return None


def _is_whiteout(path: str | Path, st: os.stat_result) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    # kernels >= 6.7 may also write whiteouts as empty files marked by an xattr
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and _overlay_xattr(path, "whiteout") is not None


class OverlayResolver:
    """Find the real file behind a merged-view path: upper first, then lower, the way
    overlayfs does without redirect_dir/metacopy (which Layover never enables)."""

    def __init__(self, upper: Path, lower: Path) -> None:
        self.upper = upper
        self.lower = lower
        self._up, self._low = os.fspath(upper), os.fspath(lower)
        self._lower_visible: dict[str, bool] = {"": True}

    def _lstat(self, path: str) -> os.stat_result | None:
        try:
            return os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):  # ENOTDIR: an ancestor is a whiteout
            return None

    def lower_visible(self, rel_dir: str) -> bool:
        """Can lower/<rel_dir>'s contents show through? Not below a whiteout or opaque dir."""
        if rel_dir in self._lower_visible:
            return self._lower_visible[rel_dir]
        parent = rel_dir.rpartition("/")[0]
        visible = self.lower_visible(parent)
        up = f"{self._up}/{rel_dir}"
        st = self._lstat(up)
        if st is not None:
            if _is_whiteout(up, st) or not stat.S_ISDIR(st.st_mode):
                visible = False  # upper replaced or deleted the whole lower directory
            elif _overlay_xattr(up, "opaque") == b"y":
                visible = False  # the directory was deleted and made again in merged
        self._lower_visible[rel_dir] = visible
        return visible

    def resolve(self, rel: str) -> Path:
        up = f"{self._up}/{rel}"
        st = self._lstat(up)
        if st is not None:
            if _is_whiteout(up, st):
                raise StorageError(
                    rel,
                    "listed in the merged view but whited out in upper: "
                    "the overlay changed while the tarball was written",
                )
            if stat.S_ISREG(st.st_mode):
                if _overlay_xattr(up, "metacopy") is not None:
                    raise StorageError(
                        up, "is a metacopy-only upper file: mount the overlay without metacopy=on"
                    )
                return Path(up)
            raise _refuse(Path(up), st)
        if self.lower_visible(rel.rpartition("/")[0]):
            low = f"{self._low}/{rel}"
            lst = self._lstat(low)
            if lst is not None and stat.S_ISREG(lst.st_mode):
                return Path(low)
        raise StorageError(
            rel,
            "listed in the merged view but found in neither upper nor "
            "lower: is the overlay mounted with these upper/lower dirs?",
        )


def list_members(source: TarSource) -> list[_Source]:
    if isinstance(source, ListedTree):
        return [_Source(m.entry, m.path, m.offset, whole=False, data=m.data) for m in source.members]
    if isinstance(source, PlainTree):
        return [_Source(e, p if e.kind is Kind.FILE else None) for e, p in _walk(source.root)]
    resolver = OverlayResolver(source.upper, source.lower)
    out = []
    for e, _ in _walk(source.merged):
        out.append(_Source(e, resolver.resolve(e.name) if e.kind is Kind.FILE else None))
    return out


# --- hashing -------------------------------------------------------------------------------
# Why a thread reading the source files: cloned and kernel-copied data never passes through
# user space, so hashing needs a read anyway. Reading the sources (usually page-cache warm: the
# blobs were just written or read) in a second thread overlaps hashing with the writer; the
# alternative, re-reading the finished tarball, is sequential and reads freshly cloned extents
# cold. Measured in bench/tar_bench.py (see docs/reflink.md). Buffered copies feed the bytes
# they already hold, so those are read once.
@dataclass(frozen=True)
class _BlobStart:
    hex: str  # the blob whose data the pieces up to the next _BlobEnd are


class _BlobEnd:
    pass


_END_BLOB = _BlobEnd()

# Below this a blob's own digest is computed inline: handing a small piece to another thread
# costs more than hashing it.
_INLINE = 256 << 10
_JOIN = 64 << 10


class _Hasher(threading.Thread):
    """The stream's sha256; with `check_blobs`, also each blob member's own digest from the same
    reads, on a second thread (hashlib drops the GIL): the release's blobs are then read and
    hashed once for both, and a blob that does not hash to its name is caught before the
    tarball is published (docs/design.md §1, stages 6-7)."""

    def __init__(self, check_blobs: bool = False) -> None:
        super().__init__(name="tar-sha256", daemon=True)
        self.h = hashlib.sha256()
        self.q: queue.Queue[bytes | tuple[int, int, int] | _BlobStart | _BlobEnd | None] = queue.Queue(
            maxsize=64
        )
        self.error: BaseException | None = None
        self.pieces = 0  # how many pieces were fed: lets the writer tell whether it may retry
        self.check_blobs = check_blobs
        self.blob: tuple[str, hashlib._Hash] | None = None  # the blob member being fed
        self.checked = 0  # blobs whose digest was computed
        self.damaged: list[tuple[str, str]] = []  # (name hex, what the data hashes to)
        self._beside = ThreadPoolExecutor(1, thread_name_prefix="tar-blob-sha256") if check_blobs else None
        self._pending: list[bytes] = []  # small pieces fed but not queued yet
        self._pending_size = 0

    def run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is None:
                    return
                if self.error is not None:
                    if isinstance(item, tuple):
                        os.close(item[0])
                    continue
                try:
                    self._take(item)
                except BaseException as e:  # noqa: BLE001 - re-raised in the writer thread by finish()
                    self.error = e
        finally:
            if self._beside is not None:
                self._beside.shutdown()

    def _take(self, item: bytes | tuple[int, int, int] | _BlobStart | _BlobEnd) -> None:
        if isinstance(item, _BlobStart):
            self.blob = (item.hex, hashlib.sha256())
        elif isinstance(item, _BlobEnd):
            assert self.blob is not None
            name, h = self.blob
            self.blob = None
            self.checked += 1
            if h.hexdigest() != name:
                self.damaged.append((name, h.hexdigest()))
        elif isinstance(item, bytes):
            self.h.update(item)
            if self.blob is not None:
                self.blob[1].update(item)
        else:
            fd, offset, length = item
            try:
                also = self.blob[1] if self.blob is not None else None
                beside = self._beside if length >= _INLINE else None
                if update_from_fd(self.h, fd, offset, length, also=also, beside=beside) != length:
                    raise StorageError(f"fd {fd}", "source file shrank while hashing")
            finally:
                os.close(fd)

    # Small pieces (headers, padding, link files) are joined before they are queued: a queue
    # hand-off per piece made the writer wait on this thread for a package of many small files.
    def _flush(self) -> None:
        if self._pending:
            self.q.put(b"".join(self._pending))
            self._pending.clear()
            self._pending_size = 0

    def _put(self, item: tuple[int, int, int] | _BlobStart | _BlobEnd) -> None:
        self._flush()
        self.q.put(item)

    def begin_blob(self, hex_: str) -> None:
        if self.check_blobs:
            self._put(_BlobStart(hex_))

    def end_blob(self) -> None:
        if self.check_blobs:
            self._put(_END_BLOB)

    def feed(self, data: bytes) -> None:
        if data:
            self.pieces += 1
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size >= _JOIN:
                self._flush()

    def feed_file(self, fd: int, offset: int, length: int) -> None:
        if length:
            self.pieces += 1
            self._put((os.dup(fd), offset, length))

    def finish(self) -> str:
        self._flush()
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise self.error
        return self.h.hexdigest()

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        self.q.put(None)
        self.join()


# --- the writer ----------------------------------------------------------------------------
def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


@dataclass
class _Stats:
    cloned: int = 0
    kernel: int = 0
    user: int = 0
    fallbacks: int = 0
    disabled: set[tuple[DataPath, int]] = field(default_factory=set)  # (path, source st_dev)


class _Writer:
    def __init__(
        self, out_fd: int, paths: Sequence[DataPath], ops: DataOps, check_blobs: bool = False
    ) -> None:
        self.out = out_fd
        self.paths = tuple(paths)
        self.ops = ops
        self.stats = _Stats()
        self.hasher = _Hasher(check_blobs)
        self.unflushed = 0  # where the bytes not yet handed to writeback start

    def _writeback(self, end: int) -> None:
        # In steps of at least _WRITEBACK_STEP: one call per member cost 28 us each, 0.2 s of a
        # 600-image package's 7,000 mostly tiny files.
        if end - self.unflushed >= _WRITEBACK_STEP:
            start_writeback(self.out, self.unflushed, end - self.unflushed)
            self.unflushed = end

    def member(self, pm: PlannedMember, src: _Source) -> None:
        _pwrite_all(self.out, pm.header, pm.offset)
        self.hasher.feed(pm.header)
        if pm.entry.kind is Kind.FILE:
            if src.data is not None:
                if len(src.data) != pm.entry.size:
                    raise StorageError(pm.entry.name, "in-memory data does not match its planned size")
                _pwrite_all(self.out, src.data, pm.data_offset)
                self.hasher.feed(src.data)
                self.stats.user += len(src.data)
            else:
                assert src.real is not None
                blob = blob_of_data_file(pm.entry.name.removeprefix(_V2_PREFIX))
                if blob is not None:
                    self.hasher.begin_blob(blob)
                self._data(pm, src)
                if blob is not None:
                    self.hasher.end_blob()
            self._writeback(pm.data_offset + pm.entry.size)
        if pm.padding:
            pad = bytes(pm.padding)
            _pwrite_all(self.out, pad, pm.data_offset + pm.entry.size)
            self.hasher.feed(pad)

    def _data(self, pm: PlannedMember, source: _Source) -> None:
        real, offset = source.real, source.offset
        assert real is not None
        src = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(src)
            if source.whole and st.st_size != pm.entry.size:
                raise StorageError(
                    str(real),
                    f"is {st.st_size} bytes, was {pm.entry.size} when "
                    "listed: storage changed while writing; run again",
                )
            if not source.whole and st.st_size < offset + pm.entry.size:
                raise StorageError(
                    str(real),
                    f"is {st.st_size} bytes, too short for {pm.entry.name} "
                    f"at offset {offset}: the file changed; run again",
                )
            # a clone shares whole blocks: only a range that starts on a block boundary can
            candidates = [
                p
                for p in self.paths
                if (p, st.st_dev) not in self.stats.disabled and not (p is DataPath.CLONE and offset % ALIGN)
            ]
            for i, path in enumerate(candidates):
                last = i == len(candidates) - 1
                fed = self.hasher.pieces
                try:
                    self._by(path, pm, src, offset)
                    return
                except _SourceShrank:
                    raise StorageError(
                        str(real), "shrank while it was copied: storage changed while writing; run again"
                    ) from None
                except OSError as e:
                    # a buffered copy hashes as it goes: once it has fed the hasher, retrying
                    # the member would hash its bytes twice
                    if e.errno in (errno.ENOSPC, errno.EDQUOT) or last or self.hasher.pieces != fed:
                        raise
                    if e.errno in _UNSUPPORTED:
                        self.stats.disabled.add((path, st.st_dev))
                    self.stats.fallbacks += 1
            if not candidates:
                raise StorageError(str(real), "no data path left to copy it")
        finally:
            os.close(src)

    def _by(self, path: DataPath, pm: PlannedMember, src: int, offset: int) -> None:
        size, dst = pm.entry.size, pm.data_offset
        if path is DataPath.BUFFERED:
            self._buffered(src, offset, size, dst)
            self.stats.user += size
            return
        if path is DataPath.KERNEL_COPY:
            self.ops.copy(src, offset, size, self.out, dst)
            self.hasher.feed_file(src, offset, size)
            self.stats.kernel += size
            return
        clonable, tail = data_regions(pm)
        if clonable:
            self.ops.clone(src, offset, clonable, self.out, dst)
        tail_bytes = os.pread(src, tail, offset + clonable) if tail else b""
        if len(tail_bytes) != tail:
            raise _SourceShrank(clonable + len(tail_bytes))
        _pwrite_all(self.out, tail_bytes, dst + clonable)
        # fed only now that the whole member is written, so a failure above can fall back
        self.hasher.feed_file(src, offset, clonable)
        self.hasher.feed(tail_bytes)
        self.stats.cloned += clonable
        self.stats.user += tail

    def _buffered(self, src: int, offset: int, length: int, dst: int) -> None:
        while length:
            data = os.pread(src, min(CHUNK, length), offset)
            if not data:
                raise _SourceShrank(offset)
            _pwrite_all(self.out, data, dst)
            self.hasher.feed(data)
            n = len(data)
            offset += n
            dst += n
            length -= n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def partial_files(output: Path) -> list[Path]:
    """Temp files a write of `output` (its .sha256, its deltas `<stem>.from-<base>.tar`) left: a
    run killed while writing."""
    if not output.parent.is_dir():
        return []
    return sorted(
        {
            *output.parent.glob(f".{output.name}.*.partial"),
            *output.parent.glob(f".{output.name}.sha256.*.partial"),
            *output.parent.glob(f".{output.name.removesuffix('.tar')}.from-*.partial"),
        }
    )


def _partial(output: Path, name: str) -> tuple[int, str]:
    """A temp file beside `output`, with the mode a plain create would give it (mkstemp makes
    0600; a release tarball and its checksum are meant to be read by others, as the umask says)."""
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{name}.", suffix=".partial")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _write_sidecar(output: Path, digest: str) -> None:
    side = output.with_name(output.name + ".sha256")
    fd, tmp = _partial(output, side.name)
    try:
        _pwrite_all(fd, f"{digest}  {output.name}\n".encode(), 0)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, side)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _source_dir(source: TarSource, output: Path) -> Path:
    if isinstance(source, PlainTree):
        return source.root
    if isinstance(source, OverlayTree):
        return source.lower
    return next((m.path for m in source.members if m.path is not None), output.parent)


def _preflight_space(source: TarSource, output: Path, need: int) -> None:
    """Fail before writing when the tarball cannot fit. Only when the output is on another
    filesystem than the sources: on the same one, reflinks may need almost no new space."""
    src = _source_dir(source, output)
    if os.stat(src).st_dev == os.stat(output.parent).st_dev:
        return
    free = _free(output.parent)
    if free < need:
        raise DiskFullError(
            f"{output.parent}: not enough space for the release tarball: {need} bytes needed, "
            f"{free} bytes free (a different filesystem from {src}, so nothing can be "
            "reflinked); free space or write it elsewhere. Nothing was written."
        )


def write_tarball(
    source: TarSource,
    output: Path,
    *,
    data_paths: Sequence[DataPath] = ALL_PATHS,
    ops: DataOps | None = None,
    mtime: int = 0,
    first: Sequence[MemoryFile] = (),
    check_blobs: bool = False,
) -> TarResult:
    """Write the release tarball of `source` to `output` and `<output>.sha256` beside it.

    data_paths: the data paths to try, in order, per member (the default tries clone, then
    copy_file_range, then a buffered copy). Whatever is chosen, the bytes are the same.
    first: in-memory files written before the tree, in this order (the contents file).
    check_blobs: hash every blob member's data against its name while writing (no extra read);
    if any differs, nothing is published and ArchiveDamagedError names them.
    """
    if not data_paths:
        raise ValueError("data_paths must name at least one data path")
    started = time.perf_counter()
    output = Path(output)
    leading = [_Source(Entry(f.name, Kind.FILE, len(f.data)), None, data=f.data) for f in first]
    sources = list_members(source)
    tarplan = plan((s.entry for s in sources), mtime=mtime, first=[s.entry for s in leading])
    real = {s.entry.name: s for s in [*leading, *sources]}
    if not output.parent.is_dir():
        raise StorageError(str(output.parent), "output directory does not exist; create it first")
    _preflight_space(source, output, tarplan.size)

    fd, tmp, writer = -1, "", None
    try:  # from the temp file's creation on: a Ctrl-C anywhere below leaves no partial file
        fd, tmp = _partial(output, output.name)
        writer = _Writer(fd, data_paths, ops or DataOps(), check_blobs)
        writer.hasher.start()
        for pm in tarplan.members:
            writer.member(pm, real[pm.entry.name])
        _pwrite_all(fd, tarplan.trailer, tarplan.trailer_offset)
        writer.hasher.feed(tarplan.trailer)
        # a failed clone may have grown the file past its planned end; the plan is the truth
        os.ftruncate(fd, tarplan.size)
        digest = writer.hasher.finish()
        if writer.hasher.damaged:
            raise _damaged(source, writer.hasher.damaged)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        # drop the old checksum first: a crash between the renames then leaves a tarball with
        # no .sha256 (not shipped) rather than one with a stale .sha256
        output.with_name(output.name + ".sha256").unlink(missing_ok=True)
        os.rename(tmp, output)
        _write_sidecar(output, digest)
        _fsync_dir(output.parent)
    except OSError as e:
        if writer is not None and writer.hasher.is_alive():
            writer.hasher.abort()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"{output.parent}: no space left writing the release tarball ({tarplan.size} "
                f"bytes planned, {_free(output.parent)} bytes free before writing; with reflinks "
                "on XFS/btrfs it needs far less): free space or write it elsewhere; the partial "
                "file was removed"
            ) from e
        raise
    except BaseException:
        if writer is not None and writer.hasher.is_alive():
            writer.hasher.abort()
        raise
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            Path(tmp).unlink(missing_ok=True)

    assert writer is not None  # the try above either made it or raised
    st = writer.stats
    return TarResult(
        path=output,
        sha256=digest,
        size=tarplan.size,
        members=len(tarplan.members),
        files=sum(1 for pm in tarplan.members if pm.entry.kind is Kind.FILE),
        bytes_cloned=st.cloned,
        bytes_kernel_copied=st.kernel,
        bytes_user_copied=st.user,
        seconds=time.perf_counter() - started,
        fallbacks=st.fallbacks,
        blobs_checked=writer.hasher.checked,
    )


def _damaged(source: TarSource, damaged: list[tuple[str, str]]) -> ArchiveDamagedError:
    name, got = damaged[0]
    root = source.merged if isinstance(source, OverlayTree) else getattr(source, "root", Path("."))
    where = StorageLayout(root).blob_data(Digest(name))
    return ArchiveDamagedError(
        str(where),
        f"tarball: {len(damaged)} blob(s) do not hash to their names, no tarball written; first: "
        f"sha256:{name} hashes to sha256:{got}",
        sorted(n for n, _ in damaged),
    )
