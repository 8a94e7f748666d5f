"""Package sync without a registry: link each listed image's manifests in the package's storage
tree, from the archive's own records, exactly as a registry's manifest PUTs would.

After pruning, the merged view holds every blob and `_layers` link of the archive and no
`_manifests` (docs/design.md §1, stage 3). A registry that receives a manifest PUT there checks
that the config and layers (or an index's children) are linked in that repository, finds the
manifest's blob already stored and does not write it again, then writes
    _manifests/revisions/sha256/<hex>/link                   every manifest, children included
    _manifests/tags/<tag>/current/link                       the tag
    _manifests/tags/<tag>/index/sha256/<hex>/link            the tag's history entry
and nothing else. This module does the same checks and writes the same files, in the same
order (children before their index, the tag last), each link written under a temporary name and
renamed, so a reader never sees half a link. It costs a stat and a small write per file where a
PUT costs milliseconds of HTTP and a registry container's start and stop.
`tests/integration/test_publish.py` builds packages both ways and compares every file after GC.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from layover.errors import CopyError, StorageError
from layover.manifest import ManifestKind, parse_manifest
from layover.reference import Digest, ImageRef
from layover.storage.images import resolve
from layover.storage.layout import StorageLayout


@dataclass(frozen=True)
class Published:
    digest: Digest  # what the image resolves to in the package
    manifests: int  # revision links written (children included)
    blobs: int  # configs and layers the image uses, all already linked


def publish(archive: StorageLayout, package: StorageLayout, ref: ImageRef) -> Published:
    """Link `ref`'s manifest tree in `package` as the archive has it. CopyError names what is
    missing (the archive does not hold the image whole); StorageError names a corrupt file."""
    repo = ref.repository
    top = ref.digest if ref.digest is not None else resolve(archive, ref)
    if top is None or not archive.revision_link(repo, top).is_file():
        raise CopyError(f"{ref}: the archive has no such manifest; archive sync should have copied it")
    blobs: set[Digest] = set()
    written = 0

    def link_tree(digest: Digest, seen: frozenset[Digest]) -> None:
        nonlocal written
        if digest in seen:
            raise CopyError(f"{ref}: manifest {digest} contains itself")
        data_path = package.blob_data(digest)
        try:
            data = data_path.read_bytes()
        except FileNotFoundError:
            raise CopyError(f"{ref}: manifest {digest} has no data in the package ({data_path})") from None
        manifest = parse_manifest(data, str(data_path))
        if manifest.kind is ManifestKind.INDEX:
            for child in manifest.children:
                if not package.revision_link(repo, child).is_file():
                    link_tree(child, seen | {digest})
        else:
            for blob in manifest.blobs:
                if not (package.layer_link(repo, blob).is_file() and package.blob_data(blob).is_file()):
                    raise CopyError(
                        f"{ref}: blob {blob} of manifest {digest} is not linked in {repo}; the archive "
                        "does not hold the image whole (run `layover repair-archive`, then again)"
                    )
                blobs.add(blob)
        _put_link(package.revision_link(repo, digest), digest)
        written += 1

    link_tree(top, frozenset())
    if ref.tag is not None:
        _put_link(package.tag_index_link(repo, ref.tag, top), top)
        _put_link(package.tag_current_link(repo, ref.tag), top)
    return Published(top, written, len(blobs))


def _put_link(path: Path, digest: Digest) -> None:
    """Write a link file atomically (temporary name, rename); leave an identical one alone."""
    text = str(digest).encode()
    try:
        if path.read_bytes() == text:
            return
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StorageError(str(path), f"cannot read link file: {e.strerror}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)
