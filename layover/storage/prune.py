"""Manifest pruning: remove every repository's `_manifests` in the merged overlay view.

The registry then sees no images, only blobs and `_layers` links, so the package sync writes
manifests and skips every blob upload (DESIGN §3: a manifest PUT only checks links). Deleting
(never renaming) is what overlayfs allows: one whiteout per pruned directory lands in upper.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from layover.storage.layout import StorageLayout


@dataclass(frozen=True)
class PruneResult:
    repositories: int  # repositories seen
    pruned: int  # `_manifests` directories removed


def prune_manifests(layout: StorageLayout) -> PruneResult:
    names = layout.repository_names()
    pruned = 0
    for name in names:
        manifests = layout.manifests(name)
        if manifests.is_dir():
            shutil.rmtree(manifests)
            pruned += 1
    return PruneResult(len(names), pruned)
