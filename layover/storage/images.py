"""What a storage tree serves for listed images: their digests, whether they are whole, and
the untagged roots GC must keep."""

from __future__ import annotations

import os

from layover.errors import StorageError
from layover.imagelist import ImageList
from layover.manifest import parse_manifest
from layover.reference import Digest, ImageRef
from layover.storage.layout import StorageLayout, read_link
from layover.storage.walk import Refs, walk


def resolve(layout: StorageLayout, ref: ImageRef) -> Digest | None:
    """The digest `ref` pulls as from this tree, or None if it does not resolve."""
    if ref.tag is None:
        assert ref.digest is not None  # the parser guarantees a tag or a digest
        return ref.digest if layout.revision_link(ref.repository, ref.digest).is_file() else None
    link = layout.tag_current_link(ref.repository, ref.tag)
    if not link.is_file():
        return None
    return read_link(link)


def mismatches(archive: StorageLayout, package: StorageLayout, images: ImageList) -> list[str]:
    """Images whose package digest differs from the archive's (or that one side lacks)."""
    problems = []
    for ref in images.refs:
        try:
            want, got = resolve(archive, ref), resolve(package, ref)
        except StorageError as e:
            problems.append(f"{ref}: {e}")
            continue
        if want is None:
            problems.append(f"{ref}: not in the archive")
        elif got != want:
            problems.append(f"{ref}: package serves {got or 'nothing'}, archive has {want}")
        elif ref.digest is not None and got != ref.digest:
            problems.append(f"{ref}: resolves to {got}, the list pins {ref.digest}")
    return problems


def pinned_roots(images: ImageList) -> list[tuple[str, Digest]]:
    """Digest-only entries have no tag to keep them alive: GC must treat them as roots."""
    return [(r.repository, r.digest) for r in images.refs if r.tag is None and r.digest is not None]


class _Incomplete(Exception):
    """Something the image needs is missing: stop walking, a real copy must run."""


def image_complete(layout: StorageLayout, repository: str, digest: Digest) -> int | None:
    """Whether the tree serves `repository@digest` whole: every manifest revision-linked with
    data, every config and non-foreign layer linked with data. Returns the number of blobs it
    needs, or None if anything is missing or unreadable (then a real copy must run).

    Stats only, no hashing: it decides whether a copy can be skipped, and verify hashes later.
    """
    paths = layout.strings()

    def load(hex_: str, _named_by: str) -> Refs:
        data_path = paths.blob_data(hex_)
        try:
            if not layout.revision_link(repository, Digest(hex_)).is_file():
                raise _Incomplete
            with open(data_path, "rb") as f:
                return Refs.of(parse_manifest(f.read(), data_path))
        except (StorageError, OSError):
            raise _Incomplete from None

    try:
        reach = walk([(digest.hex, str(digest))], load)
    except _Incomplete:
        return None
    for hex_ in reach.blobs:
        if not (os.path.isfile(paths.layer_link(repository, hex_)) and os.path.isfile(paths.blob_data(hex_))):
            return None
    return len(reach.blobs)
