"""Copy one image between two registries in process: manifests byte for byte, blobs streamed.

    GET  manifest (tag or digest) from the source           exact bytes, digest checked
    for an index: each child manifest by digest, depth first
    for an image: config and layers (foreign layers are not copied: they live elsewhere,
                  as skopeo leaves them), up to three at a time, each one
        present   the destination repository already links it        nothing sent
        mounted   another destination repository holds it            one POST ?mount=&from=
        uploaded  GET streamed from the source, hashed on the way, into one PUT (small) or
                  PATCH + PUT (large); a digest mismatch cancels the upload before it commits
    PUT  children by digest, then the top manifest by tag (or digest)

What the destination holds is asked of a `Destination` (the archive answers from its storage
tree, without a request); what the copy moved is recorded in `Landed` as it goes, so an attempt
that fails half way still says which blobs it landed (docs/reliability.md: retries that converge).

Schema 1 manifests are not handled: `NeedsSkopeo` says so and the caller hands the image to skopeo.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import httpx

from layover.adapters.registry_client import FetchedManifest, RegistryClient
from layover.errors import (
    CopyError,
    ImageNotFoundError,
    InputError,
    LayoverError,
    RegistryError,
    StorageError,
    Transient,
    TransientCopyError,
)
from layover.manifest import MANIFEST_MEDIA_TYPES, ManifestKind, parse_manifest
from layover.reference import Digest

_IN_MEMORY = 8 << 20  # blobs up to this size move as one GET and one PUT; larger ones stream
_BLOBS_AT_ONCE = 3  # blobs of one image copied at a time (each may hold _IN_MEMORY bytes)
_REQUEST_RETRY_DELAYS = (0.25, 0.5, 1.0)  # a source read is tried at most 4 times per attempt
T = TypeVar("T")


class NeedsSkopeo(LayoverError):
    """The image uses a format the in-process copier leaves to skopeo (schema 1)."""


class Destination(Protocol):
    """What the copy needs to know about the destination registry's storage."""

    def has_blob(self, repository: str, digest: Digest) -> bool:
        """The repository links the blob and its data exists: nothing to send."""

    def has_manifest(self, repository: str, digest: Digest) -> bool:
        """The repository holds this manifest whole (an index child already copied)."""

    def holder(self, digest: Digest) -> str | None:
        """Another repository that links the blob (a mount source), or None."""

    def landed(self, repository: str, digest: Digest) -> None:
        """The blob is now linked in `repository` (uploaded or mounted)."""

    def claim(self, digest: Digest) -> Callable[[], None] | None:
        """Exclusive right to upload `digest` now: a release function, or None after another
        copy's upload of it finished (then look again: it may be mountable)."""


@dataclass
class Landed:
    """What one attempt moved so far; filled in as it goes, read also after a failure."""

    uploaded: list[tuple[Digest, int]] = field(default_factory=list)  # (digest, bytes)
    mounted: list[Digest] = field(default_factory=list)
    present: list[Digest] = field(default_factory=list)
    manifests: int = 0

    @property
    def blobs(self) -> int:
        """Blobs this attempt added to the destination: its progress."""
        return len(self.uploaded) + len(self.mounted)


def copy_image(
    src: RegistryClient,
    dst: RegistryClient,
    repository: str,
    tag: str | None,
    digest: Digest | None,
    destination: Destination,
    *,
    landed: Landed | None = None,
    source_ok: Callable[[], None] = lambda: None,
    sleep: Callable[[float], object] = time.sleep,
) -> Digest:
    """Copy `repository[:tag][@digest]` (same name on both sides): read by digest when pinned,
    write by tag when there is one (as skopeo does); return the top manifest's digest.

    `source_ok` is called after each request the source answered well (the stage's watch for a
    source that is down). Errors: the source's own (ImageNotFoundError, AuthError, TLSError) as
    they are; anything worth a retry as TransientCopyError; the rest as CopyError.
    """
    landed = landed if landed is not None else Landed()
    where = f"{src.host}/{repository}"
    again = functools.partial(_again, sleep=sleep)
    reference: str | Digest = digest if digest is not None else str(tag)

    def fetch(ref: str | Digest) -> FetchedManifest:
        fetched = again(lambda: src.get_manifest(repository, ref))
        source_ok()
        return fetched

    def copy_blob(digest: Digest, size: int | None) -> None:
        while True:
            if destination.has_blob(repository, digest):
                landed.present.append(digest)
                return
            home = destination.holder(digest)
            if home is not None and home != repository and dst.mount_blob(repository, digest, home):
                destination.landed(repository, digest)
                landed.mounted.append(digest)
                return
            release = destination.claim(digest)
            if release is None:
                continue  # another copy just uploaded it: mount it from there
            try:
                if size is not None and size <= _IN_MEMORY:
                    data = again(lambda: src.get_blob(repository, digest))
                    source_ok()
                    dst.upload_blob(repository, digest, data, check_present=False)
                else:  # streamed: a retry starts the blob over (a cancelled upload commits nothing)
                    again(
                        lambda: dst.upload_blob(
                            repository,
                            digest,
                            _noting(src.iter_blob(repository, digest), source_ok),
                            size=size,
                            check_present=False,
                        )
                    )
                destination.landed(repository, digest)
                landed.uploaded.append((digest, size if size is not None else 0))
            finally:
                release()
            return

    def copy_tree(top: FetchedManifest, dest_ref: str | Digest, seen: frozenset[Digest]) -> None:
        if top.digest in seen:
            raise CopyError(f"{where}@{top.digest}: the manifest contains itself")
        manifest = parse_manifest(top.data, f"{where}@{top.digest}")
        if manifest.kind is ManifestKind.SCHEMA1:
            raise NeedsSkopeo(f"{where}@{top.digest} is a schema 1 manifest")
        if manifest.kind is ManifestKind.INDEX:
            for child in manifest.children:
                if destination.has_manifest(repository, child):
                    continue
                copy_tree(fetch(child), child, seen | {top.digest})
        else:
            sizes = _sizes(top.data)
            _each(lambda d: copy_blob(d, sizes.get(d)), list(dict.fromkeys(manifest.blobs)))
        dst.put_manifest(repository, dest_ref, top.data, _media_type(top, manifest.media_type))
        landed.manifests += 1

    try:
        top = fetch(reference)  # by digest, get_manifest checks the bytes hash to it
        copy_tree(top, tag if tag is not None else top.digest, frozenset())
    except (InputError, NeedsSkopeo, CopyError):
        raise
    except StorageError as e:  # the source served a document that is no manifest
        raise CopyError(f"{where}:{reference}: {e}") from None
    except Transient as e:
        raise TransientCopyError(f"{where}:{reference}: {e}") from None
    except httpx.TransportError as e:  # a body cut off while it was read
        raise TransientCopyError(
            f"{where}:{reference}: {type(e).__name__}: {e} (retrying may help)"
        ) from None
    except RegistryError as e:
        # data that does not hash to its digest came over the wire: a broken proxy or a
        # truncated answer more often than a corrupt registry, so worth another attempt
        kind = TransientCopyError if "hash to" in str(e) else CopyError
        raise kind(f"{where}:{reference}: {e}") from None
    return top.digest


def _each(work: Callable[[Digest], None], digests: list[Digest]) -> None:
    """`work` for each blob, `_BLOBS_AT_ONCE` at a time: an image's blobs are independent, and
    one after the other an image costs the sum of their round trips (an incremental release's
    few copies wait on those, not on bytes; docs/benchmarks.md). After a failure no further blob
    starts; the ones under way end first (so `Landed` is whole), then the first failure in
    document order is raised."""
    if len(digests) <= 1 or _BLOBS_AT_ONCE <= 1:
        for digest in digests:
            work(digest)
        return
    with ThreadPoolExecutor(min(_BLOBS_AT_ONCE, len(digests)), thread_name_prefix="blob") as pool:
        futures = [pool.submit(work, digest) for digest in digests]
        for future in as_completed(futures):
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                break
    for future in futures:
        if not future.cancelled() and (error := future.exception()) is not None:
            raise error


def _again(read: Callable[[], T], *, sleep: Callable[[float], object]) -> T:
    """One source read, retried where it failed: a request that broke (reset, 5xx, a body cut
    off, data that does not hash to its digest) is sent again after 0.25, 0.5, 1 s (±50%), so one
    bad answer costs one request, not the image's attempt (docs/reliability.md). What still
    fails goes to the image's retries (layover/converge.py), which count progress."""
    for delay in (*_REQUEST_RETRY_DELAYS, None):
        try:
            return read()
        except (Transient, httpx.TransportError, RegistryError) as e:
            if delay is None or not _worth_again(e):
                raise
        sleep(delay * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def _worth_again(e: BaseException) -> bool:
    if isinstance(e, (Transient, httpx.TransportError)):
        return True
    return isinstance(e, RegistryError) and "hash to" in str(e)  # corrupt in transit


def _noting(pieces: Iterator[bytes], source_ok: Callable[[], None]) -> Iterator[bytes]:
    for piece in pieces:
        source_ok()
        yield piece


def _sizes(data: bytes) -> dict[Digest, int]:
    """Descriptor sizes of an image manifest's config and layers (parse_manifest keeps none)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    out: dict[Digest, int] = {}
    for desc in [doc.get("config"), *(doc.get("layers") or [])]:
        if (
            isinstance(desc, dict)
            and Digest.is_valid(str(desc.get("digest")))
            and isinstance(desc.get("size"), int)
        ):
            out[Digest.parse(desc["digest"])] = desc["size"]
    return out


def _media_type(fetched: FetchedManifest, declared: str | None) -> str:
    """The type to PUT with: what the source served, if it is a manifest type, else what the
    document declares (skopeo does the same: the registry keys its handling on it)."""
    if fetched.media_type in MANIFEST_MEDIA_TYPES:
        return fetched.media_type
    return declared or fetched.media_type


@dataclass(frozen=True)
class Wanted:
    """One blob to put back into the destination: where the source may have it."""

    digest: Digest
    repositories: tuple[str, ...]  # asked in this order; the first that has it serves it
    manifest: bool  # PUT as a manifest by digest, not uploaded as a blob


def refetch(
    src: RegistryClient,
    dst: RegistryClient,
    wanted: list[Wanted],
    *,
    sleep: Callable[[float], object] = time.sleep,
) -> list[Digest]:
    """Copy single blobs source -> destination again (the heal of a damaged archive blob,
    docs/reliability.md); returns those no listed repository at the source serves any more.

    Configs and layers first, streamed and hashed on the way as in `copy_image`; then manifests,
    fetched by digest (the bytes must hash to it) and PUT by digest, image manifests before
    indexes, because a registry accepts an index only once its children are stored. Reads are
    retried where they failed as in a copy; what still fails raises."""
    again = functools.partial(_again, sleep=sleep)
    lost: list[Digest] = []

    def blob(w: Wanted) -> bool:
        for repo in w.repositories:
            size = again(functools.partial(src.blob_size, repo, w.digest))
            if size is None:
                continue

            def upload(repo: str = repo, size: int = size) -> object:
                return dst.upload_blob(
                    repo, w.digest, src.iter_blob(repo, w.digest), size=size, check_present=False
                )

            again(upload)
            return True
        return False

    def fetch_manifest(w: Wanted) -> tuple[str, FetchedManifest] | None:
        for repo in w.repositories:
            try:
                return repo, again(functools.partial(src.get_manifest, repo, w.digest))
            except ImageNotFoundError:
                continue
        return None

    try:
        for w in wanted:
            if not w.manifest and not blob(w):
                lost.append(w.digest)
        fetched: list[tuple[str, FetchedManifest, bool]] = []
        for w in wanted:
            if not w.manifest:
                continue
            got = fetch_manifest(w)
            if got is None:
                lost.append(w.digest)
                continue
            repo, m = got
            parsed = parse_manifest(m.data, f"{src.host}/{repo}@{w.digest}")
            fetched.append((repo, m, parsed.kind is ManifestKind.INDEX))
        # image manifests, then indexes; an index of indexes waits for a later round
        todo = sorted(fetched, key=lambda f: f[2])
        while todo:
            failed: list[tuple[str, FetchedManifest, bool]] = []
            error: BaseException | None = None
            for repo, m, is_index in todo:
                try:
                    declared = parse_manifest(m.data, f"{src.host}/{repo}@{m.digest}").media_type
                    dst.put_manifest(repo, m.digest, m.data, _media_type(m, declared))
                except RegistryError as e:
                    failed.append((repo, m, is_index))
                    error = e
            if len(failed) == len(todo):
                assert error is not None
                raise error
            todo = failed
    except Transient as e:
        raise TransientCopyError(f"{src.host}: putting damaged archive blobs back: {e}") from None
    except httpx.TransportError as e:
        raise TransientCopyError(
            f"{src.host}: putting damaged archive blobs back: {type(e).__name__}: {e}"
        ) from None
    return lost
