"""Manifest pruning: hide every repository's `_manifests` from the merged overlay view.

The registry then sees no images, only blobs and `_layers` links, so the package sync writes
manifests and skips every blob upload (docs/design.md §3: a manifest PUT only checks links).

Two ways to get the same merged view (tested to be equal):
  hide     one overlayfs whiteout per repository written straight into upper while the overlay
           is briefly unmounted (kernel overlay as root; adapters/overlay.whiteout_hider);
           1,000 repositories: 0.18 s
  delete   `rm -rf` of each `_manifests` through the mount (fuse-overlayfs, or no root): one
           whiteout per file and directory, serialised inside overlayfs; 1,000 repositories: 2.2 s
Deleting never renames: a rename of a lower directory fails with EXDEV.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from layover.storage.layout import StorageLayout

# Hides paths (relative to the lower dir) from the merged view; returns how many it hid.
Hider = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class PruneResult:
    repositories: int  # repositories seen
    pruned: int  # `_manifests` directories hidden or removed


def prune_manifests(archive: StorageLayout, package: StorageLayout, hide: Hider | None = None) -> PruneResult:
    """Prune the package view (`package`, the merged view of `archive`). With `hide`, by whiteouts
    in upper; without, by deleting through the mount."""
    if hide is not None:
        # whiteouts name lower's directories; the merged view is lower's until they exist
        names = archive.repository_names()
        present = [n for n in names if archive.manifests(n).is_dir()]
        hide([archive.manifests(n).relative_to(archive.root).as_posix() for n in present])
    else:
        names = package.repository_names()
        present = [n for n in names if package.manifests(n).is_dir()]
        for name in present:
            shutil.rmtree(package.manifests(name))
    return PruneResult(len(names), len(present))
