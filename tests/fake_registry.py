"""An in-memory registry for pure-logic tests of attachment discovery (layover.attached).

Stores manifests per repository by digest, tags pointing at digests, and answers the three reads
of AttachmentReader. With `referrers_api=True` it computes the referrers list from the stored
manifests' `subject` fields as a distribution-spec 1.1 registry does; otherwise `referrers`
returns None, as Distribution 2.8 (a 404) does.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence

from layover.manifest import Descriptor
from layover.reference import Digest


class FakeRegistry:
    def __init__(self, *, referrers_api: bool = False) -> None:
        self.referrers_api = referrers_api
        self._manifests: dict[str, dict[Digest, tuple[bytes, str]]] = {}
        self._tags: dict[str, dict[str, Digest]] = {}
        self.requests: Counter[str] = Counter()

    # --- writing (test setup) ------------------------------------------------------------
    def put(self, repository: str, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        digest = Digest(hashlib.sha256(data).hexdigest())
        self._manifests.setdefault(repository, {})[digest] = (data, media_type)
        if tag is not None:
            self._tags.setdefault(repository, {})[tag] = digest
        return digest

    def tag_only(self, repository: str, tag: str, digest: Digest) -> None:
        """A tag whose manifest the registry does not have (deleted under it, or a race)."""
        self._tags.setdefault(repository, {})[tag] = digest

    # --- AttachmentReader ----------------------------------------------------------------
    def tags(self, repository: str) -> Sequence[str]:
        self.requests["tags"] += 1
        return sorted(self._tags.get(repository, {}))

    def manifest(self, repository: str, ref: str | Digest) -> tuple[bytes, str, Digest] | None:
        self.requests["manifest"] += 1
        digest = ref if isinstance(ref, Digest) else self._tags.get(repository, {}).get(ref)
        stored = self._manifests.get(repository, {}).get(digest) if digest is not None else None
        if stored is None or digest is None:
            return None
        return stored[0], stored[1], digest

    def referrers(self, repository: str, digest: Digest) -> Sequence[Descriptor] | None:
        self.requests["referrers"] += 1
        if not self.referrers_api:
            return None
        out = []
        for d, (data, media_type) in sorted(self._manifests.get(repository, {}).items()):
            doc = json.loads(data)
            if (doc.get("subject") or {}).get("digest") != str(digest):
                continue
            artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
            out.append(
                Descriptor(
                    d,
                    media_type,
                    len(data),
                    artifact_type,
                    tuple(sorted((doc.get("annotations") or {}).items())),
                )
            )
        return out
