"""Where one build host keeps a release's state: the archive and the overlay around it.

    <work_dir>/
      lower/     the archive registry's storage: every release's blobs (the history)
      upper/     overlay upper layer: what this release changed (disposable)
      work/      overlayfs workdir (disposable; must share upper's filesystem)
      merged/    the package registry's storage: the overlay view (disposable)
      run/       registry configs, a decoded credentials file (0600) during a run (disposable)
      releases/  one <package sha256>.json per package built: its run report (archive status)
      logs/      one log per failed run: every failed image's full diagnostics (the newest 20)
      quarantine/<UTC time>/   damaged archive files moved out of lower/ (evidence, kept)
      lock       fcntl lock + holder description: one run per work dir

Keeping all of them in one directory keeps upper/work on lower's filesystem (docs/design.md §3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
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
    def quarantine(self) -> Path:
        """Damaged archive files, moved out of lower/ by a heal or `layover repair-archive`, one
        directory per repair: nothing found damaged is ever deleted."""
        return self.root / "quarantine"

    def quarantine_for(self, when: datetime) -> Path:
        """This repair's own directory below `quarantine` (a new one if the second is taken)."""
        stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        path, n = self.quarantine / stamp, 1
        while path.exists():
            n += 1
            path = self.quarantine / f"{stamp}-{n}"
        return path

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
