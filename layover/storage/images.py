"""Resolve listed images to the manifest digests a storage tree serves for them."""

from __future__ import annotations

from layover.errors import StorageError
from layover.imagelist import ImageList
from layover.storage.layout import StorageLayout, read_link
from layover.reference import Digest, ImageRef


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


def image_complete(layout: StorageLayout, repository: str, digest: Digest) -> int | None:
    """Whether the tree serves `repository@digest` whole: every manifest revision-linked with
    data, every config and non-foreign layer linked with data. Returns the number of blobs it
    needs, or None if anything is missing or unreadable (then a real copy must run).

    Stats only, no hashing: it decides whether a copy can be skipped, and verify hashes later.
    """
    from layover.manifest import parse_manifest  # local: keeps this module's import light

    blobs: set[Digest] = set()
    todo, seen = [digest], set()
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        data_path = layout.blob_data(d)
        if not layout.revision_link(repository, d).is_file() or not data_path.is_file():
            return None
        try:
            manifest = parse_manifest(data_path.read_bytes(), str(data_path))
        except (StorageError, OSError):
            return None
        todo.extend(manifest.children)
        needed = [manifest.config] if manifest.config is not None else []
        needed += [layer.digest for layer in manifest.layers if not layer.foreign]
        for b in needed:
            if not (layout.layer_link(repository, b).is_file() and layout.blob_data(b).is_file()):
                return None
            blobs.add(b)
    return len(blobs)
