"""Which blobs a registry's storage already holds, and in which repository: what a copy into it
can skip (linked here already) or mount (linked in another repository: one request, no bytes).

Read from the storage tree, not over HTTP: our registries run without a blob-descriptor cache
(docs/design.md §3), so the tree is the truth, and a stat costs microseconds where a HEAD costs
milliseconds. The repository index is built on first use (one listing per repository) and
updated as copies land blobs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from layover.reference import Digest
from layover.storage.images import image_complete
from layover.storage.layout import StorageLayout


class BlobHolders:
    """layover.adapters.registry_copy.Destination for a registry storage tree; thread-safe."""

    def __init__(self, layout: StorageLayout) -> None:
        self.layout = layout
        self._paths = layout.strings()
        self._lock = threading.Lock()
        self._homes: dict[Digest, str] | None = None
        self._busy: dict[Digest, threading.Event] = {}

    def has_blob(self, repository: str, digest: Digest) -> bool:
        p = self._paths
        return os.path.isfile(p.layer_link(repository, digest.hex)) and os.path.isfile(
            p.blob_data(digest.hex)
        )

    def has_manifest(self, repository: str, digest: Digest) -> bool:
        """The repository holds this manifest whole (its revision and every blob it needs), so
        a copy may skip it: a revision whose layers went missing is copied again."""
        return image_complete(self.layout, repository, digest) is not None

    def holder(self, digest: Digest) -> str | None:
        with self._lock:
            if self._homes is None:
                self._homes = self._scan()
            home = self._homes.get(digest)
        if home is not None and self.has_blob(home, digest):
            return home
        return None

    def landed(self, repository: str, digest: Digest) -> None:
        with self._lock:
            if self._homes is not None:
                self._homes.setdefault(digest, repository)

    def claim(self, digest: Digest) -> Callable[[], None] | None:
        """One upload of a blob at a time: the right to upload it now (call the result when
        done), or None once another copy's upload finished (it may be mountable now)."""
        with self._lock:
            busy = self._busy.get(digest)
            if busy is None:
                done = self._busy[digest] = threading.Event()

                def release() -> None:
                    with self._lock:
                        self._busy.pop(digest, None)
                    done.set()

                return release
        busy.wait()
        return None

    def _scan(self) -> dict[Digest, str]:
        homes: dict[Digest, str] = {}
        for name in self.layout.repository_names():
            for digest in self.layout.layer_digests(name):
                homes.setdefault(digest, name)
        return homes
