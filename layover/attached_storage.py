"""Attachment discovery over a registry storage tree, and verify's check of a package's attachments.

`StorageAttachmentReader` is layover.attached.AttachmentReader over the files a registry serves
(tags from `_manifests/tags`, manifests from revision links and blob data). Storage has no
referrers API, so discovery finds referrers through the tag schema, as a client of that registry
would. Attached sync reads the archive through it (a manifest by digest that the archive holds
costs no request to the source); verify reads the package through it.

`attached_differences` is verify's comparison: every artifact recorded at the source at sync time
is in the package (tags pointing at the recorded digests), and discovery over the package finds
nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from layover.attached import AttachedRecord, discover
from layover.errors import LayoverError, StorageError
from layover.manifest import Descriptor, parse_manifest
from layover.reference import Digest, ImageRef
from layover.storage.layout import StorageLayout, parse_link

_MAX_MANIFEST = 4 << 20  # the registry refuses bigger manifests


class StorageAttachmentReader:
    """Reads tags and manifests from a storage tree. A missing or broken one reads as absent:
    verify's other checks name broken files, and attached sync then asks the source."""

    def __init__(self, layout: StorageLayout) -> None:
        self.layout = layout
        self.paths = layout.strings()

    def tags(self, repository: str) -> Sequence[str]:
        try:
            names = sorted(os.listdir(self.paths.tags(repository)))
        except (FileNotFoundError, NotADirectoryError):
            return ()
        return tuple(t for t in names if os.path.isfile(self.paths.tag_current_link(repository, t)))

    def manifest(self, repository: str, ref: str | Digest) -> tuple[bytes, str, Digest] | None:
        if isinstance(ref, Digest):
            hex_: str | None = ref.hex
        else:
            hex_ = _link(self.paths.tag_current_link(repository, ref))
        if hex_ is None or _link(self.paths.revision_link(repository, hex_)) != hex_:
            return None
        try:
            with open(self.paths.blob_data(hex_), "rb") as f:
                data = f.read(_MAX_MANIFEST + 1)
        except OSError:
            return None
        try:
            media_type = parse_manifest(data, self.paths.blob_data(hex_)).media_type or ""
        except StorageError:
            return None
        return data, media_type, Digest(hex_)

    def referrers(self, repository: str, digest: Digest) -> Sequence[Descriptor] | None:
        return None  # storage has no referrers API: the tag schema is what a client would use


def _link(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return parse_link(f.read(128))
    except OSError:
        return None


def _tagged(reader: StorageAttachmentReader, repository: str, tag: str) -> Digest | None:
    got = reader.manifest(repository, tag)
    return got[2] if got is not None else None


def attached_differences(layout: StorageLayout, record: AttachedRecord) -> list[str]:
    """How the package's attachments differ from what was recorded at the source at sync time,
    one line per listed image (empty: they are the same)."""
    reader = StorageAttachmentReader(layout)
    problems = []
    for entry in record.images:
        want = entry.found
        try:
            got = discover(reader, ImageRef(want.repository, None, want.digest))
        except LayoverError as e:
            problems.append(f"{entry.ref}: {e}")
            continue
        # A referrer the source listed through its referrers API has no tag here, so discovery
        # over the package cannot find it: it must be stored, by digest.
        missing = sorted(
            str(d) for d in want.digests - got.digests if reader.manifest(want.repository, d) is None
        )
        extra = sorted(str(d) for d in got.digests - want.digests)
        moved = sorted(t for t, d in want.tags.items() if _tagged(reader, want.repository, t) != d)
        if missing or extra or moved:
            parts = [
                f"{len(missing)} recorded artifact(s) missing (first {missing[0]})" if missing else "",
                f"{len(extra)} artifact(s) the source did not have (first {extra[0]})" if extra else "",
                f"tag(s) {', '.join(moved[:3])} not at the recorded digest" if moved else "",
            ]
            problems.append(f"{entry.ref}: " + "; ".join(p for p in parts if p))
    return problems
