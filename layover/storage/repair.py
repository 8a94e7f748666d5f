"""Find damaged files in an archive (registry storage) and plan their removal, so the next
run's archive sync fetches them again from the source.

Why removal repairs: archive sync copies every listed image with skopeo, which asks the
archive registry for each blob and always PUTs the manifests. A blob whose data is gone is
uploaded again; a `_layers` link that is gone is written again with the upload; a manifest
blob or a revision/tag link that is gone is rewritten by the manifest PUT. A damaged file left
in place is worse than a missing one: the registry answers HEAD 200 for a truncated blob and
skopeo skips it.

What counts as damage:
    blob data whose sha256 is not its name     (truncated, overwritten, bit rot)
    a link file that is not "sha256:<64 hex>"   (garbage, empty, newline-padded)
    a revision-linked manifest that is not JSON (only possible if its digest also mismatches,
                                                 reported once as a blob)

Pure: no Prefect, Docker or subprocess. `scan` plans, `apply_repair` deletes.
"""

from __future__ import annotations

import enum
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from layover.storage.hashing import sha256_file
from layover.storage.layout import StorageLayout, parse_link


class Damage(enum.Enum):
    BLOB_DIGEST = "blob-digest-mismatch"
    LINK = "corrupt-link"


@dataclass(frozen=True)
class Finding:
    kind: Damage
    path: Path  # the damaged file
    remove: Path  # what repair deletes: the blob's or the link's own directory
    reason: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.path}: {self.reason}"


@dataclass(frozen=True)
class RepairPlan:
    root: Path
    findings: tuple[Finding, ...]
    blobs_checked: int
    links_checked: int

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        head = (f"archive {self.root}: {self.blobs_checked} blobs and {self.links_checked} links "
                f"checked, {len(self.findings)} damaged")
        return "\n".join([head, *(f"  - {f}" for f in self.findings)])


def scan(layout: StorageLayout) -> RepairPlan:
    """Check every blob's digest and every link file's syntax; change nothing."""
    findings: list[Finding] = []
    blobs = links = 0
    for digest in layout.blob_digests():
        data = layout.blob_data(digest)
        if not data.exists():
            continue  # a foreign layer, or a blob GC removed: nothing to check
        blobs += 1
        actual, size = sha256_file(data)
        if actual != digest.hex:
            findings.append(Finding(Damage.BLOB_DIGEST, data, layout.blob_dir(digest),
                                    f"{size} bytes hashing to sha256:{actual[:12]}...; "
                                    "truncated or overwritten"))
    link_findings, links = _scan_links(layout.repositories)
    findings += link_findings
    return RepairPlan(layout.root, tuple(findings), blobs, links)


def scan_repository(layout: StorageLayout, repository: str) -> tuple[Finding, ...]:
    """Damage one repository can hit: its link files (nested repositories included) and the
    manifest blobs its revision links name. Cheap enough to run when a copy of that repository
    fails, to name the file instead of a bare HTTP 500."""
    findings, _ = _scan_links(layout.repo(repository))
    bad = {f.path for f in findings}
    for digest in layout.digest_dirs(layout.revisions(repository)):
        if layout.revision_link(repository, digest) in bad:
            continue
        data = layout.blob_data(digest)
        if not data.is_file():
            continue
        actual, size = sha256_file(data)
        if actual != digest.hex:
            findings.append(Finding(Damage.BLOB_DIGEST, data, layout.blob_dir(digest),
                                    f"manifest of {repository}: {size} bytes hashing to "
                                    f"sha256:{actual[:12]}...; truncated or overwritten"))
    return tuple(findings)


def _scan_links(top: Path) -> tuple[list[Finding], int]:
    findings: list[Finding] = []
    links = 0
    if not top.is_dir():
        return findings, links
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != "_uploads")  # uploads hold no links
        if "link" not in filenames:
            continue
        path = Path(dirpath) / "link"
        links += 1
        raw = path.read_bytes()
        if parse_link(raw) is None:
            # the link's own <hex> (or current/) dir: the registry rewrites it on the next push
            findings.append(Finding(Damage.LINK, path, path.parent,
                                    f"expected sha256:<64 hex>, found {raw[:40]!r}"))
    return findings, links


def apply_repair(plan: RepairPlan) -> int:
    """Delete what `plan` found damaged; returns how many entries were removed."""
    removed = 0
    for f in plan.findings:
        if f.remove.is_dir():
            shutil.rmtree(f.remove)
            removed += 1
        elif f.remove.exists():
            f.remove.unlink()
            removed += 1
    return removed
