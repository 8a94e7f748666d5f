"""Pushing sample images into a registry on loopback, through the registry's HTTP API.

A registry checks on manifest PUT that the config and layers are linked in that repository and
that an index's children are already stored there, so an image goes in as: blobs, children by
digest, then the tagged manifest. Blobs already pushed to another repository are mounted from
it instead of uploaded again, as `docker push` does for shared base layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from layover.adapters.registry_api import RegistryAPI
from layover.reference import Digest
from layover.testing.images import SampleImage
from layover.testing.releases import Release


@dataclass(frozen=True)
class PushResult:
    image: str  # repository:tag@digest
    blobs_uploaded: int  # bytes sent
    blobs_mounted: int  # linked from another repository of this registry, no bytes sent
    blobs_present: int  # already in the repository (HEAD 200)
    manifests: int  # children + the tagged manifest


def push_image(api: RegistryAPI, image: SampleImage, *, seen: dict[Digest, str] | None = None) -> PushResult:
    """Blobs, then children by digest, then the manifest by tag.

    `seen` (digest -> a repository that has it) lets shared base layers be mounted instead
    of uploaded again; it is updated with this image's blobs.
    """
    seen = {} if seen is None else seen
    counts = {"uploaded": 0, "mounted": 0, "present": 0}
    for digest, data in image.blobs.items():
        counts[api.push_blob(image.repository, digest, data, mount_from=seen.get(digest))] += 1
        seen.setdefault(digest, image.repository)
    for child in image.children:
        api.put_manifest(image.repository, child.digest, child.data, child.media_type)
    api.put_manifest(image.repository, image.tag, image.manifest, image.media_type)
    return PushResult(
        str(image), counts["uploaded"], counts["mounted"], counts["present"], len(image.children) + 1
    )


def push_release(host: str, release: Release, *, ready_timeout: float = 30.0) -> tuple[PushResult, ...]:
    """Push every image of a sample release into the registry at `host`, in list order."""
    with RegistryAPI(host) as api:
        api.wait_ready(ready_timeout)
        seen: dict[Digest, str] = {}
        return tuple(push_image(api, img, seen=seen) for img in release.images)
