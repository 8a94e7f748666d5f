"""Damaged files in an archive (registry storage): find them, move them out of the tree, and put
damaged blobs back from elsewhere. `layover repair-archive` and the release run's heal
(tasks/heal.py) are both `repair` below; they differ only in whether a `fetch` is given.

Why moving a damaged file out repairs: a blob whose data is gone is uploaded again by the next
copy that needs it, which writes its `_layers` link again; a manifest blob or a revision/tag link
that is gone is rewritten by the manifest PUT. A damaged file left in place is worse than a
missing one: the registry answers HEAD 200 for a truncated blob, and archive sync's skip (which
stats, never hashes) takes the image as whole.

What counts as damage:
    blob data whose sha256 is not its name     (truncated, overwritten, bit rot)
    a link file that is not "sha256:<64 hex>"   (garbage, empty, newline-padded)
    a revision-linked manifest that is not JSON (only possible if its digest also mismatches,
                                                 reported once as a blob)

Nothing is deleted: every damaged entry is moved into a quarantine directory, at the same
relative path it had under the storage root, so the evidence stays for whoever looks into it.

Pure: no Prefect, Docker or subprocess. `scan` plans, `repair` moves (and, given a `fetch`,
refills); `needed_by` says which listed images need a damaged blob and where the source may
still have it.
"""

from __future__ import annotations

import enum
import os
import shutil
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from layover.errors import StorageError
from layover.manifest import parse_manifest
from layover.reference import Digest, ImageRef
from layover.storage.hashing import sha256_file
from layover.storage.images import resolve
from layover.storage.layout import StorageLayout, parse_link
from layover.storage.walk import Refs, walk


class Damage(enum.Enum):
    BLOB_DIGEST = "blob-digest-mismatch"
    LINK = "corrupt-link"


@dataclass(frozen=True)
class Finding:
    kind: Damage
    path: Path  # the damaged file
    remove: Path  # what repair moves out: the blob's or the link's own directory
    reason: str
    digest: Digest | None = None  # the damaged blob (BLOB_DIGEST findings)

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
        head = (
            f"archive {self.root}: {self.blobs_checked} blobs and {self.links_checked} links "
            f"checked, {len(self.findings)} damaged"
        )
        return "\n".join([head, *(f"  - {f}" for f in self.findings)])


def scan(layout: StorageLayout, digests: Iterable[Digest] | None = None) -> RepairPlan:
    """Check every blob's digest and every link file's syntax; change nothing. With `digests`,
    check only those blobs and no links: the heal confirms in the archive itself what verify
    found through the overlay."""
    findings: list[Finding] = []
    blobs = links = 0
    for digest in layout.blob_digests() if digests is None else sorted(set(digests), key=str):
        data = layout.blob_data(digest)
        if not data.exists():
            continue  # a foreign layer, or a blob GC removed: nothing to check
        blobs += 1
        damaged = _misnamed_blob(layout, digest, "")
        if damaged is not None:
            findings.append(damaged)
    if digests is None:
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
        if not layout.blob_data(digest).is_file():
            continue
        damaged = _misnamed_blob(layout, digest, f"manifest of {repository}: ")
        if damaged is not None:
            findings.append(damaged)
    return tuple(findings)


def _misnamed_blob(layout: StorageLayout, digest: Digest, what: str) -> Finding | None:
    """A finding if the blob's data does not hash to its name (hashes the whole file)."""
    data = layout.blob_data(digest)
    actual, size = sha256_file(data)
    if actual == digest.hex:
        return None
    return Finding(
        Damage.BLOB_DIGEST,
        data,
        layout.blob_dir(digest),
        f"{what}{size} bytes hashing to sha256:{actual[:12]}...; truncated or overwritten",
        digest,
    )


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
            findings.append(
                Finding(Damage.LINK, path, path.parent, f"expected sha256:<64 hex>, found {raw[:40]!r}")
            )
    return findings, links


@dataclass(frozen=True)
class Need:
    """Who needs one damaged blob, and where a copy of it may be had."""

    images: tuple[str, ...]  # listed images whose tree reaches it
    repositories: tuple[str, ...]  # repositories holding it: the needing images' first, then
    # every other repository of the tree that links it
    manifest: bool  # a manifest (revision-linked somewhere) rather than a config or layer


def needed_by(
    layout: StorageLayout, refs: Iterable[ImageRef], digests: Collection[Digest]
) -> dict[Digest, Need]:
    """For each of `digests`, the listed images that need it and the repositories to ask for it.
    A damaged manifest is not read (its bytes cannot be trusted), so what only it names is found
    through the tree's links instead."""
    wanted = {d.hex: d for d in digests}
    images: dict[str, list[str]] = {h: [] for h in wanted}
    repos: dict[str, list[str]] = {h: [] for h in wanted}
    paths = layout.strings()

    def note(hex_: str, ref: ImageRef) -> None:
        if str(ref) not in images[hex_]:
            images[hex_].append(str(ref))
        if ref.repository not in repos[hex_]:
            repos[hex_].append(ref.repository)

    for ref in refs:
        try:
            top = resolve(layout, ref)
        except StorageError:
            continue  # a corrupt tag link: not this function's to report
        if top is None:
            continue

        def load(hex_: str, _label: str, ref: ImageRef = ref) -> Refs | None:
            if hex_ in wanted:
                note(hex_, ref)
                return None  # damaged: do not read what it names
            try:
                with open(paths.blob_data(hex_), "rb") as f:
                    return Refs.of(parse_manifest(f.read(), paths.blob_data(hex_)))
            except (OSError, StorageError):
                return None

        for hex_ in walk([(top.hex, str(ref))], load).blobs:
            if hex_ in wanted:
                note(hex_, ref)
    names = layout.repository_names() if wanted else []
    out: dict[Digest, Need] = {}
    for hex_, digest in wanted.items():
        linked = [n for n in names if os.path.isfile(paths.layer_link(n, hex_))]
        revised = [n for n in names if os.path.isfile(paths.revision_link(n, hex_))]
        every = repos[hex_] + [n for n in linked + revised if n not in repos[hex_]]
        out[digest] = Need(tuple(images[hex_]), tuple(dict.fromkeys(every)), bool(revised))
    return out


# Puts damaged blobs back from elsewhere (the source registry); returns the ones it could not.
Fetch = Callable[[Sequence[Digest]], Sequence[Digest]]


@dataclass(frozen=True)
class Repaired:
    quarantine: Path  # where the damaged entries went, each at its path relative to the root
    moved: tuple[Path, ...]  # the damaged entries, as they were named in the tree
    fetched: tuple[Digest, ...]  # damaged blobs put back (by `fetch`)
    lost: tuple[Digest, ...]  # damaged blobs `fetch` could not put back


def repair(plan: RepairPlan, quarantine: Path, fetch: Fetch | None = None) -> Repaired:
    """The one repair: move every damaged entry of `plan` out of the tree into `quarantine` (on
    the same filesystem a rename), then, with `fetch`, put the damaged blobs back."""
    moved: list[Path] = []
    for f in plan.findings:
        if not (f.remove.is_dir() or f.remove.exists()):
            continue
        target = quarantine / f.remove.relative_to(plan.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(f.remove, target)  # a rename; a copy and delete only across filesystems
        moved.append(f.path)
    blobs = [f.digest for f in plan.findings if f.digest is not None]
    lost = tuple(fetch(blobs)) if fetch is not None and blobs else ()
    fetched = tuple(d for d in blobs if d not in lost) if fetch is not None else ()
    return Repaired(quarantine, tuple(moved), fetched, lost)
