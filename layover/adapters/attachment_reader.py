"""The registry side of attachment discovery: layover.attached.AttachmentReader over a registry.

    RegistryAttachmentReader  over RegistryAPI (our loopback registries, tests)
    SourceAttachmentReader    over RegistryClient (the source: TLS, credentials as skopeo finds
                              them); thread-safe, keeps what it fetched so the copy that follows
                              discovery does not fetch a manifest twice

Both count the requests they make, so a caller can report what discovery cost per image. Both
probe the referrers API once: a registry that has it never answers 404 for a repository that
exists (distribution-spec 1.1), so after one 404 every later subject goes straight to the tag
schema, saving one request per subject on Distribution 2.8 and 3.x.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

from layover.adapters.registry_api import FetchedManifest, RegistryAPI
from layover.adapters.registry_client import Descriptor as ClientDescriptor
from layover.adapters.registry_client import RegistryClient
from layover.errors import ImageNotFoundError, RegistryHTTPError
from layover.manifest import Descriptor
from layover.reference import Digest


class RegistryAttachmentReader:
    """Reads tags, manifests and referrers of one registry; a missing manifest reads as None."""

    def __init__(self, api: RegistryAPI) -> None:
        self.api = api
        self.requests: Counter[str] = Counter()  # "tags" / "manifest" / "referrers" -> calls
        self.has_referrers_api: bool | None = None  # unknown until the first probe

    def tags(self, repository: str) -> Sequence[str]:
        self.requests["tags"] += 1
        return self.api.tags(repository)

    def manifest(self, repository: str, ref: str | Digest) -> FetchedManifest | None:
        self.requests["manifest"] += 1
        try:
            return self.api.manifest(repository, ref)
        except RegistryHTTPError as e:
            if e.not_found:  # MANIFEST_UNKNOWN (a tag listed a moment ago may be gone) or NAME_UNKNOWN
                return None
            raise

    def referrers(self, repository: str, digest: Digest) -> Sequence[Descriptor] | None:
        if self.has_referrers_api is False:
            return None
        self.requests["referrers"] += 1
        found = self.api.referrers(repository, digest)
        self.has_referrers_api = found is not None
        return found


class SourceAttachmentReader:
    """Reads tags, manifests and referrers of the source through RegistryClient.

    A missing manifest or repository reads as None / no tags; authentication, TLS and transient
    failures are raised as RegistryClient maps them (layover.errors). Every manifest fetched is
    kept (`fetched`): attachments are small, and the copy after discovery needs their bytes. A
    repository's tags are listed once per reader: several listed images of one repository (two
    tags of a product, an image and its debug variant) share one listing, which may be long.
    """

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.requests: Counter[str] = Counter()
        self.has_referrers_api: bool | None = None
        self._fetched: dict[tuple[str, Digest], tuple[bytes, str]] = {}
        self._tags: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    def tags(self, repository: str) -> Sequence[str]:
        with self._lock:
            listed = self._tags.get(repository)
        if listed is not None:
            return listed
        self._count("tags")
        try:
            listed = self.client.tags(repository)
        except ImageNotFoundError:  # NAME_UNKNOWN: nothing tagged there
            listed = ()
        with self._lock:
            self._tags[repository] = listed
        return listed

    def manifest(self, repository: str, ref: str | Digest) -> tuple[bytes, str, Digest] | None:
        if isinstance(ref, Digest):
            with self._lock:
                kept = self._fetched.get((repository, ref))
            if kept is not None:
                return kept[0], kept[1], ref
        self._count("manifest")
        try:
            got = self.client.get_manifest(repository, ref)
        except ImageNotFoundError:  # MANIFEST_UNKNOWN (a tag listed a moment ago may be gone)
            return None
        with self._lock:
            self._fetched[(repository, got.digest)] = (got.data, got.media_type)
        return got.data, got.media_type, got.digest

    def fetched(self, repository: str, digest: Digest) -> tuple[bytes, str] | None:
        """The bytes and media type of a manifest this reader fetched, if it did."""
        with self._lock:
            return self._fetched.get((repository, digest))

    def referrers(self, repository: str, digest: Digest) -> Sequence[Descriptor] | None:
        if self.has_referrers_api is False:
            return None
        self._count("referrers")
        found = self.client.referrers(repository, digest)
        self.has_referrers_api = found is not None
        return None if found is None else tuple(_descriptor(d) for d in found)


def _descriptor(d: ClientDescriptor) -> Descriptor:
    return Descriptor(d.digest, d.media_type or None, d.size, d.artifact_type, d.annotations)
