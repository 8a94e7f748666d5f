"""Apply a GC plan: delete exactly the planned paths, references before blobs, then the
directories that became empty.

Deletes, never renames: on an overlay merged view a rename of a lower directory fails with
EXDEV (docs/design.md §3). Safe to run again after a crash: a path already gone is skipped, and
the apply order keeps every intermediate tree markable by the next plan.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from layover.errors import GCError
from layover.storage.gc import Deletion, DeletionKind, GCPlan
from layover.storage.layout import StorageLayout
from layover.units import human_bytes


@dataclass(frozen=True)
class GCResult:
    deleted: int  # planned paths removed (already-absent ones are not counted)
    dirs_removed: int  # directories removed because they became empty
    bytes_freed: int
    seconds: float

    def summary(self) -> str:
        return (
            f"GC applied: removed {self.deleted} paths and {self.dirs_removed} empty dirs, "
            f"freed {human_bytes(self.bytes_freed)} in {self.seconds:.2f}s"
        )


def apply_gc(plan: GCPlan, *, workers: int = 4, progress: Callable[[int], None] | None = None) -> GCResult:
    """Delete the planned paths, then directories left empty. Safe to re-run after a crash.

    Kinds are applied one after the other (references before blobs); within a kind, paths are
    independent and `workers` threads delete them, which overlaps the filesystem's metadata
    latency (journal, overlayfs whiteouts). `progress(n)` is called as each chunk of n planned
    paths is done (a long archive prune says how far it is).
    """
    start = time.monotonic()
    layout = plan.layout
    tops = {DeletionKind.REPOSITORY_INTERNAL: str(layout.repositories), DeletionKind.BLOB: str(layout.blobs)}
    deleted = 0
    freed = 0
    prune_from: set[tuple[str, str]] = set()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for kind in DeletionKind:
            batch = [d for d in plan.deletions if d.kind is kind]
            chunks = [batch[i : i + 512] for i in range(0, len(batch), 512)]
            for chunk, (n, size, parents) in zip(chunks, pool.map(_delete_chunk, chunks), strict=True):
                deleted += n
                freed += size
                if progress is not None:
                    progress(len(chunk))
                # Only a removed repository or blob may leave empty parents worth removing. In a
                # kept repository an empty `_layers` still matters: the catalog lists it.
                if kind in tops:
                    prune_from.update((p, tops[kind]) for p in parents)
    dirs_removed = 0
    for start_dir, top in sorted(prune_from, key=lambda p: -len(p[0])):
        dirs_removed += _remove_empty_upwards(start_dir, top)
    return GCResult(deleted, dirs_removed, freed, time.monotonic() - start)


def _delete_chunk(chunk: list[Deletion]) -> tuple[int, int, set[str]]:
    deleted = freed = 0
    parents: set[str] = set()
    for d in chunk:
        try:
            if not _delete(d):
                continue  # gone already: a second apply of the same plan is harmless
        except OSError as e:
            raise GCError(
                f"{d.path}: cannot delete ({e.strerror}); GC stopped part way. What is "
                "left is consistent: fix the cause and run GC again"
            ) from None
        deleted += 1
        freed += d.size
        parents.add(os.path.dirname(d.path))
    return deleted, freed, parents


# The one file a blob, revision, tag-index or layer-link directory holds. Unlinking it and
# rmdir-ing its directory is 2 syscalls where rmtree needs ~8: apply touches ~100k of them.
_LEAF = {
    DeletionKind.BLOB: "data",
    DeletionKind.REVISION: "link",
    DeletionKind.TAG_INDEX: "link",
    DeletionKind.LAYER_LINK: "link",
}


def _delete(d: Deletion) -> bool:
    """Remove one planned path; False if it was already gone."""
    leaf = _LEAF.get(d.kind)
    if leaf is not None:
        try:
            os.unlink(f"{d.path}/{leaf}")
            os.rmdir(d.path)
            return True
        except NotADirectoryError:  # a stray file where a directory belongs
            os.unlink(d.path)
            return True
        except FileNotFoundError:
            if not os.path.lexists(d.path):
                return False
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
    # Anything else (uploads, repository internals, a directory with extra files): rmtree,
    # which unlinks and rmdirs bottom-up and never renames.
    try:
        if os.path.isdir(d.path) and not os.path.islink(d.path):
            shutil.rmtree(d.path)
        else:
            os.unlink(d.path)
    except FileNotFoundError:
        return False
    return True


def _remove_empty_upwards(path: str, top: str) -> int:
    """rmdir `path` and its parents while empty, stopping below `top`."""
    removed = 0
    while path.startswith(top + os.sep):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:  # not empty (a nested repository, other blobs): stop here
            break
        else:
            removed += 1
        path = os.path.dirname(path)
    return removed


def remove_empty_dirs(layout: StorageLayout) -> int:
    """Remove what an apply killed before its last step leaves: empty `blobs/sha256/<hh>` dirs,
    and empty repository path dirs (a removed repository's, bottom-up). A complete apply removes
    them itself; the next plan has nothing to say about them, and an empty directory in the archive
    would show up in every package built from it. Internal `_*` dirs are never touched (an empty
    `_layers` of a kept repository is still listed by the catalog). Returns how many were removed.
    """
    removed = 0
    blobs = str(layout.blobs)
    if os.path.isdir(blobs):
        for name in sorted(os.listdir(blobs)):
            removed += _rmdir_if_empty(os.path.join(blobs, name))
    top = str(layout.repositories)
    paths: list[str] = []
    for dirpath, dirnames, _ in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.startswith("_")]  # never into internals
        if dirpath != top:
            paths.append(dirpath)
    for path in reversed(paths):  # children before their parents
        removed += _rmdir_if_empty(path)
    return removed


def _rmdir_if_empty(path: str) -> int:
    try:
        os.rmdir(path)
    except OSError:  # not empty, not a directory, or gone
        return 0
    return 1
