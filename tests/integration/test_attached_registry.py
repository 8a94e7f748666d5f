"""Attachment discovery against a real Distribution 2.8 registry holding real artifacts.

layover.testing.attached builds cosign signatures and attestations, an SPDX SBOM referrer with its
referrers tag-schema index and a signature on the SBOM, and pushes them next to sample images (an
OCI image, a 2-platform OCI index, a Docker manifest list). Discovery through
RegistryAttachmentReader must find exactly what was pushed, classify it, and every signature must
verify with the independent verifier.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from pathlib import Path

import pytest

from layover.adapters.attachment_reader import RegistryAttachmentReader
from layover.adapters.registry_api import RegistryAPI
from layover.attached import AttachmentKind, FoundBy, ImageAttachments, discover, referrers_tag
from layover.errors import RegistryHTTPError, VerifyError
from layover.manifest import COSIGN_SIMPLESIGNING, DSSE_ENVELOPE, OCI_MANIFEST
from layover.reference import Digest
from layover.testing.attached import (
    SIGNATURE_ANNOTATION,
    Artifact,
    Signer,
    Subject,
    attach_all,
    cosign_attestation,
    cosign_manifest,
    cosign_signature,
    push_artifact,
    referrers_index,
    simple_signing_payload,
    spdx_sbom,
    verify_attestation,
    verify_cosign_signature,
)
from layover.testing.images import SampleImage
from layover.testing.push import push_release
from layover.testing.releases import release
from tests.integration.signatures import verify_found

pytestmark = pytest.mark.integration

SIGNER = Signer("integration")


@pytest.fixture
def ci(registries, tmp_path: Path):
    storage = tmp_path / "ci"
    storage.mkdir()
    host = registries.start("ci", storage).host
    rel = release(1, scale=0.05)
    push_release(host, rel)
    with RegistryAPI(host) as api:
        yield api, rel


def verify_all(api: RegistryAPI, found: ImageAttachments) -> int:
    """Run the independent verifier over every signature and attestation found; returns how many."""
    verified = verify_found(SIGNER.public_key_pem, api, found)
    for a, result in verified:
        assert [v.subject for v in result] == [a.subject]
    return len(verified)


def test_discovery_finds_exactly_what_was_attached_and_every_signature_verifies(ci):
    api, rel = ci
    web, metrics, gateway = map(rel.image, ("apps/team-a/web", "platform/metrics", "platform/gateway"))
    unsigned, elsewhere = rel.image("base/debian"), rel.image("base/python")

    pushed = {
        web.repository: attach_all(api, web.repository, web.digest, SIGNER),
        metrics.repository: attach_all(
            api, metrics.repository, metrics.digest, SIGNER, children=[c.digest for c in metrics.children]
        ),
        gateway.repository: attach_all(
            api, gateway.repository, gateway.digest, SIGNER, children=[c.digest for c in gateway.children]
        ),
    }
    # An SBOM on one platform of the index, with that child's own tag-schema index.
    child = metrics.children[1]
    child_sbom = spdx_sbom(
        metrics.repository, Subject(child.digest, child.media_type, child.size), package="arm64"
    )
    child_index = referrers_index(metrics.repository, child.digest, [child_sbom])
    for a in (child_sbom, child_index):
        push_artifact(api, a)
    # Not attached to anything listed: a signature of an image deleted long ago, in web's repository,
    # and a signed image nobody asks about.
    gone = Digest(hashlib.sha256(b"deleted image").hexdigest())
    push_artifact(api, cosign_signature(SIGNER, web.repository, gone))
    push_artifact(api, cosign_signature(SIGNER, elsewhere.repository, elsewhere.digest))

    reader = RegistryAttachmentReader(api)
    assert api.referrers(web.repository, web.digest) is None  # Distribution 2.8: no referrers API

    for img in (web, metrics, gateway):
        found = discover(reader, img.ref)
        fixture = pushed[img.repository]
        expected = list(fixture.artifacts) + ([child_sbom] if img is metrics else [])
        indexes = list(fixture.indexes) + ([child_index] if img is metrics else [])
        assert found.digest == img.digest
        assert found.subjects == (img.digest, *(c.digest for c in img.children))
        assert {(a.digest, a.subject, a.kind) for a in found.artifacts} == {
            (a.digest, a.subject, a.kind) for a in expected
        }, img.repository
        assert len(found.artifacts) == len(expected)
        assert {(r.tag, r.digest, r.subject) for r in found.referrers_indexes} == {
            (i.tag, i.digest, i.subject) for i in indexes
        }
        assert found.problems == ()
        assert found.tags == {a.tag: a.digest for a in (*expected, *indexes) if a.tag}
        # the SBOM came through the tag schema, the rest through cosign tags
        for a in found.artifacts:
            via_tag_schema = a.kind is AttachmentKind.SBOM
            assert a.found_by is (FoundBy.REFERRERS_TAG if via_tag_schema else FoundBy.COSIGN_TAG)
        sboms = [a for a in found.artifacts if a.kind is AttachmentKind.SBOM]
        assert {a.artifact_type for a in sboms} == {"application/spdx+json"}
        assert {a.tag for a in sboms} <= {referrers_tag(img.digest), referrers_tag(child.digest)}
        platforms = len(img.children)
        assert found.counts.signatures == 1 + platforms + 1  # image, each child, the SBOM
        assert (found.counts.attestations, found.counts.sboms, found.counts.other) == (
            1,
            1 + (img is metrics),
            0,
        )
        assert found.signed
        assert verify_all(api, found) == found.counts.signatures + found.counts.attestations

    nothing = discover(reader, unsigned.ref)
    assert (nothing.artifacts, nothing.referrers_indexes, nothing.problems) == ((), (), ())
    assert not nothing.signed
    # one tag listing per image, and one referrers probe in all (2.8 answers 404: no API)
    assert (reader.requests["tags"], reader.requests["referrers"], reader.has_referrers_api) == (4, 1, False)


def test_the_verifier_rejects_a_tampered_payload_a_foreign_key_and_another_image(ci):
    api, rel = ci
    img = rel.image("apps/team-a/web")
    other = rel.image("apps/team-a/worker")
    genuine = cosign_signature(SIGNER, img.repository, img.digest)
    # Tampered: the payload is changed after signing (an `optional` claim added, the digest kept) while
    # the annotation keeps the signature over the original payload.
    signature = dict(_layer_annotations(genuine))[SIGNATURE_ANNOTATION]
    forged_payload = simple_signing_payload(img.repository, img.digest, {"approved-by": "mallory"})
    manifest, blobs = cosign_manifest(forged_payload, COSIGN_SIMPLESIGNING, {SIGNATURE_ANNOTATION: signature})
    tampered = Artifact(
        img.repository,
        manifest,
        OCI_MANIFEST,
        img.digest,
        AttachmentKind.SIGNATURE,
        tag=genuine.tag,
        blobs=blobs,
    )
    push_artifact(api, tampered)

    blob = functools.partial(api.get_blob, img.repository)
    subject_bytes = api.manifest(img.repository, img.digest).data
    pulled = api.manifest(img.repository, genuine.tag or "").data
    assert pulled == tampered.manifest
    with pytest.raises(VerifyError, match="does not verify with this public key"):
        verify_cosign_signature(SIGNER.public_key_pem, pulled, blob, subject_bytes)

    push_artifact(api, genuine)  # the tag moves back to the genuine signature
    pulled = api.manifest(img.repository, genuine.tag or "").data
    assert len(verify_cosign_signature(SIGNER.public_key_pem, pulled, blob, subject_bytes)) == 1
    with pytest.raises(VerifyError, match="does not verify with this public key"):
        verify_cosign_signature(Signer("someone else").public_key_pem, pulled, blob, subject_bytes)
    wrong_image = f"payload signs {img.digest} but the pulled manifest is {other.digest}$"
    with pytest.raises(VerifyError, match=wrong_image):
        verify_cosign_signature(SIGNER.public_key_pem, pulled, blob, other.manifest)


def test_the_verifier_rejects_a_tampered_attestation(ci):
    api, rel = ci
    img = rel.image("apps/team-a/web")
    genuine = cosign_attestation(SIGNER, img.repository, img.digest)
    [(_, envelope_bytes)] = [(d, b) for d, b in genuine.blobs.items() if b.startswith(b'{"payloadType"')]
    envelope = json.loads(envelope_bytes)
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"] = {"builder": "mallory"}  # the claim changes, the signature stays
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    manifest, blobs = cosign_manifest(
        json.dumps(envelope).encode(), DSSE_ENVELOPE, dict(_layer_annotations(genuine))
    )
    tampered = Artifact(
        img.repository,
        manifest,
        OCI_MANIFEST,
        img.digest,
        AttachmentKind.ATTESTATION,
        tag=genuine.tag,
        blobs=blobs,
    )
    blob = functools.partial(api.get_blob, img.repository)
    subject_bytes = api.manifest(img.repository, img.digest).data
    for artifact in (genuine, tampered):
        push_artifact(api, artifact)
    with pytest.raises(VerifyError, match="a DSSE signature does not verify with this public key"):
        verify_attestation(
            SIGNER.public_key_pem, api.manifest(img.repository, tampered.digest).data, blob, subject_bytes
        )
    assert (
        len(
            verify_attestation(
                SIGNER.public_key_pem, api.manifest(img.repository, genuine.digest).data, blob, subject_bytes
            )
        )
        == 1
    )


def _layer_annotations(artifact: Artifact) -> list[tuple[str, str]]:
    return list(json.loads(artifact.manifest)["layers"][0]["annotations"].items())


def test_attachments_of_a_sample_image_are_pushed_in_an_order_the_registry_accepts(ci):
    """The tag-schema index is an index: Distribution refuses it until its referrers are stored."""
    api, rel = ci
    img: SampleImage = rel.image("apps/team-a/worker")
    sbom = spdx_sbom(img.repository, Subject(img.digest, img.media_type, len(img.manifest)))
    index = referrers_index(img.repository, img.digest, [sbom])
    with pytest.raises(RegistryHTTPError, match="returned 400 MANIFEST_BLOB_UNKNOWN"):
        push_artifact(api, index)
    push_artifact(api, sbom)
    assert push_artifact(api, index) == index.digest
    assert api.manifest(img.repository, referrers_tag(img.digest)).digest == index.digest
