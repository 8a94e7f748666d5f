"""Explain a failed copy into a registry of ours from what it is handed: the registry's log and
its storage directory.

A registry writing to a full disk, or reading a damaged file, answers a bare HTTP 500, which
looks transient and would be retried into the ground. Both are named here instead, and neither is
a `Transient` error: neither clears itself.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layover.errors import DiskFullError, LayoverError, StorageError
from layover.reference import ImageRef
from layover.storage.layout import StorageLayout
from layover.storage.repair import scan_repository

_NO_SPACE = "no space left on device"
_LOG_TAIL = 20000  # the registry logs every request: only the latest lines can be about this copy


def disk_full(ref: ImageRef, storage: Path, registry_log: str) -> DiskFullError | None:
    """The registry said ENOSPC: name the directory and what is free (space and inodes)."""
    if _NO_SPACE not in registry_log[-_LOG_TAIL:]:
        return None
    st = os.statvfs(storage)
    # ENOSPC also means "no inodes left": registry storage is many small files and dirs
    inodes = f", {st.f_favail} inodes free" if st.f_files else ""
    return DiskFullError(
        f"{storage}: no space left on device while copying {ref} "
        f"({st.f_bavail * st.f_frsize} bytes{inodes}; the image's new blobs and links need more)",
        hint="free space (or inodes) or move the work dir to a bigger disk and run again; the archive "
        "keeps everything already copied, nothing was shipped",
    )


@contextmanager
def full_disk_named(directory: Path, doing: str) -> Iterator[None]:
    """ENOSPC (or EDQUOT) while a stage writes `directory` (the overlay's upper dir): a
    DiskFullError naming it, what is free and what to do, instead of a bare OSError."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        st = os.statvfs(directory)
        inodes = f", {st.f_favail} inodes free" if st.f_files else ""
        raise DiskFullError(
            f"{directory}: no space left on device during {doing} ({st.f_bavail * st.f_frsize} bytes"
            f"{inodes}): free space (or inodes) on that filesystem or move the work dir to a bigger "
            "disk, and run again; the archive is untouched and nothing shipped"
        ) from None


def damaged_storage(
    ref: ImageRef, storages: list[Path], error: LayoverError, work_dir: Path
) -> StorageError | None:
    """A damaged link or manifest under the repository being copied: name the file and the fix."""
    seen: set[str] = set()
    for storage in storages:
        real = os.path.realpath(storage)
        if real in seen:
            continue
        seen.add(real)
        damage = scan_repository(StorageLayout(Path(real)), ref.repository)
        if damage:
            return StorageError(
                str(damage[0].path),
                f"{damage[0].reason} ({len(damage)} damaged file(s) for {ref.repository}); nothing shipped",
                hint=f"run `layover repair-archive {work_dir}` and run again: archive sync re-fetches "
                "the removed files from the source",
                detail=f"found after: {error}\n{error.detail}",
            )
    return None
