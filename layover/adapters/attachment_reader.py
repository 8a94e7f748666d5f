"""The registry side of attachment discovery: layover.attached.AttachmentReader over RegistryAPI.

Counts the requests it makes, so a caller can report what discovery cost per image. Probes the
referrers API once: a registry that has it never answers 404 for a repository that exists
(distribution-spec 1.1), so after one 404 every later subject goes straight to the tag schema,
saving one request per subject on Distribution 2.8 and 3.x.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from layover.adapters.registry_api import FetchedManifest, RegistryAPI
from layover.errors import RegistryHTTPError
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
