"""Where one build host keeps a release's state: the archive and the overlay around it.

    <work_dir>/
      lower/     the archive registry's storage: every release's blobs (the history)
      upper/     overlay upper layer: what this release changed (disposable)
      work/      overlayfs workdir (disposable; must share upper's filesystem)
      merged/    the package registry's storage: the overlay view (disposable)
      run/       registry configs, a decoded credentials file (0600) during a run (disposable)
      releases/  one <package sha256>.json per package built: its run report (archive status)
      logs/      one log per failed run: every failed image's full diagnostics (the newest 20)
      lock       fcntl lock + holder description: one run per work dir

Keeping all of them in one directory keeps upper/work on lower's filesystem (docs/design.md §3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from layover.storage.layout import StorageLayout


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> WorkDir:
        return cls(Path(path).absolute())

    @property
    def lower(self) -> Path:
        return self.root / "lower"

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def src_auth(self) -> Path:
        """Credentials from a Prefect Secret block, written for skopeo only while a run needs them."""
        return self.run / "src-auth.json"

    @property
    def releases(self) -> Path:
        """One `<package sha256>.json` per package built (the sidecar's report with its contents):
        what retention reads, and where a delta finds the base a git tag names."""
        return self.root / "releases"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def archive(self) -> StorageLayout:
        return StorageLayout(self.lower)

    @property
    def package(self) -> StorageLayout:
        return StorageLayout(self.merged)

    @property
    def scope(self) -> str:
        """Label value that ties containers to this work dir, so a crashed run's are found."""
        return "wd-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
