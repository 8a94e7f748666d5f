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

import hashlib
import os
from dataclasses import dataclass

from layover.errors import ArchiveDamagedError, CopyError, StorageError
from layover.manifest import ManifestKind, parse_manifest
from layover.reference import Digest, ImageRef
from layover.storage.images import resolve
from layover.storage.layout import LINK_SIZE, StorageLayout, parse_link


@dataclass(frozen=True)
class Published:
    digest: Digest  # what the image resolves to in the package
    manifests: int  # revision links written (children included)
    blobs: int  # configs and layers the image uses, all already linked


def publish(archive: StorageLayout, package: StorageLayout, ref: ImageRef) -> Published:
    """Link `ref`'s manifest tree in `package` as the archive has it. CopyError names what is
    missing (the archive does not hold the image whole); StorageError names a corrupt file,
    ArchiveDamagedError a manifest whose bytes do not hash to its digest.

    Paths are plain strings (StrPaths) and files are probed with os calls: this runs for every
    image of every release, and pathlib objects cost more than the syscalls themselves."""
    repo = ref.repository
    top = ref.digest if ref.digest is not None else resolve(archive, ref)
    if top is None or not archive.revision_link(repo, top).is_file():
        raise CopyError(f"{ref}: the archive has no such manifest; archive sync should have copied it")
    paths = package.strings()
    blobs: set[str] = set()
    written = 0

    def link_tree(hex_: str, seen: frozenset[str]) -> None:
        nonlocal written
        if hex_ in seen:
            raise CopyError(f"{ref}: manifest sha256:{hex_} contains itself")
        data_path = paths.blob_data(hex_)
        try:
            with open(data_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CopyError(
                f"{ref}: manifest sha256:{hex_} has no data in the package ({data_path})"
            ) from None
        # Manifests are small and read anyway: hashing them here finds a damaged one before its
        # links are written (the run heals it, tasks/heal.py), where parsing alone would miss a
        # truncation that is still JSON.
        actual = hashlib.sha256(data).hexdigest()
        if actual != hex_:
            raise ArchiveDamagedError(
                data_path,
                f"{ref}: manifest sha256:{hex_} holds {len(data)} bytes hashing to sha256:{actual[:12]}...; "
                "the archive's copy is damaged",
                [hex_],
            )
        manifest = parse_manifest(data, data_path)
        if manifest.kind is ManifestKind.INDEX:
            for child in manifest.children:
                if not os.path.isfile(paths.revision_link(repo, child.hex)):
                    link_tree(child.hex, seen | {hex_})
        else:
            for blob in manifest.blobs:
                if not (
                    _linked(paths.layer_link(repo, blob.hex), blob.hex)
                    and os.path.isfile(paths.blob_data(blob.hex))
                ):
                    raise CopyError(
                        f"{ref}: blob {blob} of manifest sha256:{hex_} is not linked in {repo}; the "
                        "archive does not hold the image whole (run `layover repair-archive`, then again)"
                    )
                blobs.add(blob.hex)
        _put_link(paths.revision_dir(repo, hex_), hex_)
        written += 1

    link_tree(top.hex, frozenset())
    if ref.tag is not None:
        _put_link(paths.tag_index_dir(repo, ref.tag, top.hex), top.hex)
        _put_link(os.path.dirname(paths.tag_current_link(repo, ref.tag)), top.hex)
    return Published(top, written, len(blobs))


def _linked(path: str, hex_: str) -> bool:
    """The link exists and names `hex_`; a link with other content is corrupt (the registry would
    answer 500 for it): StorageError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(LINK_SIZE + 1)
    except FileNotFoundError:
        return False
    if parse_link(raw) != hex_:
        raise StorageError(path, f"corrupt link file: expected sha256:{hex_}, found {raw[:80]!r}")
    return True


def _put_link(directory: str, hex_: str) -> None:
    """Write `directory`/link atomically (temporary name, rename); leave an identical one alone."""
    text = b"sha256:" + hex_.encode()
    path = f"{directory}/link"
    try:
        os.mkdir(directory)
    except FileExistsError:
        try:
            with open(path, "rb") as f:
                if f.read() == text:
                    return
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(path, f"cannot read link file: {e.strerror}") from None
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
    tmp = f"{directory}/.link.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(text)
    os.replace(tmp, path)
