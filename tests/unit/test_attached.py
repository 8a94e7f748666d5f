"""Attachment discovery (layover.attached) on an in-memory registry (tests/fake_registry.py).

The artifacts are the fixture's real formats (layover.testing.attached builds cosign, DSSE and
SPDX manifests byte for byte); only the registry is fake.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from layover.attached import (
    AttachedArtifact,
    AttachmentCounts,
    AttachmentKind,
    FoundBy,
    TagMerge,
    attachment_tag_subject,
    classify,
    cosign_tag,
    discover,
    merge_attachment_tag,
    referrers_tag,
)
from layover.errors import ImageNotFoundError
from layover.manifest import OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Descriptor, parse_manifest
from layover.reference import Digest, ImageRef
from layover.testing.attached import (
    Artifact,
    Signer,
    Subject,
    cosign_attestation,
    cosign_signature,
    referrers_index,
    spdx_sbom,
)
from tests.fake_registry import FakeRegistry

REPO = "apps/web"
SIGNER = Signer("unit")
SIG, ATT, SBOM, OTHER = (
    AttachmentKind.SIGNATURE,
    AttachmentKind.ATTESTATION,
    AttachmentKind.SBOM,
    AttachmentKind.OTHER,
)


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image_manifest(seed: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha(seed + "c"), "size": 1},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(seed + "l"),
                    "size": 1,
                }
            ],
        }
    ).encode()


def push_image(
    reg: FakeRegistry, tag: str = "1.0", *, platforms: int = 0
) -> tuple[Digest, tuple[Digest, ...]]:
    """A tagged image (platforms=0) or an index of `platforms` untagged children."""
    if not platforms:
        return reg.put(REPO, image_manifest(tag), OCI_MANIFEST, tag), ()
    children = [image_manifest(f"{tag}/{p}") for p in range(platforms)]
    digests = tuple(reg.put(REPO, c, OCI_MANIFEST) for c in children)
    entries = [
        {"mediaType": OCI_MANIFEST, "digest": str(d), "size": len(c)}
        for d, c in zip(digests, children, strict=True)
    ]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return reg.put(REPO, index, OCI_INDEX, tag), digests


def push(reg: FakeRegistry, *artifacts: Artifact) -> None:
    for a in artifacts:
        reg.put(a.repository, a.manifest, a.media_type, a.tag)


def subject_of(reg: FakeRegistry, digest: Digest) -> Subject:
    got = reg.manifest(REPO, digest)
    assert got is not None
    return Subject(digest, got[1], len(got[0]))


def found(result) -> set[tuple[Digest, Digest, AttachmentKind, FoundBy, str | None]]:
    return {(a.digest, a.subject, a.kind, a.found_by, a.tag) for a in result.artifacts}


# --- tags ------------------------------------------------------------------------------------
def test_attachment_tag_names_round_trip():
    d = Digest("ab" * 32)
    assert cosign_tag(d, ".sig") == f"sha256-{d.hex}.sig" and referrers_tag(d) == f"sha256-{d.hex}"
    assert attachment_tag_subject(cosign_tag(d, ".att")) == (d, ".att")
    assert attachment_tag_subject(referrers_tag(d)) == (d, "")
    for other in (
        "latest",
        "sha256-abc.sig",
        f"sha256-{d.hex}.cert",
        f"sha512-{d.hex}",
        f"sha256-{d.hex}.sig.x",
    ):
        assert attachment_tag_subject(other) is None, other
    with pytest.raises(ValueError):
        cosign_tag(d, ".cert")


# --- discovery -------------------------------------------------------------------------------
def test_no_attachments():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert (result.digest, result.subjects, result.artifacts, result.referrers_indexes, result.problems) == (
        image,
        (image,),
        (),
        (),
        (),
    )
    assert result.counts == AttachmentCounts() and result.counts.total == 0 and not result.signed
    assert result.tags == {} and result.digests == frozenset()


def test_cosign_tags_on_a_single_image():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    sig = cosign_signature(SIGNER, REPO, image)
    att = cosign_attestation(SIGNER, REPO, image)
    sbom_tagged = Artifact(
        REPO, image_manifest("cosign-sbom"), OCI_MANIFEST, image, SBOM, tag=cosign_tag(image, ".sbom")
    )
    push(reg, sig, att, sbom_tagged)
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert found(result) == {
        (sig.digest, image, SIG, FoundBy.COSIGN_TAG, sig.tag),
        (att.digest, image, ATT, FoundBy.COSIGN_TAG, att.tag),
        (sbom_tagged.digest, image, SBOM, FoundBy.COSIGN_TAG, sbom_tagged.tag),
    }
    assert result.counts == AttachmentCounts(signatures=1, attestations=1, sboms=1) and result.signed
    assert result.tags == {sig.tag: sig.digest, att.tag: att.digest, sbom_tagged.tag: sbom_tagged.digest}
    by_digest = {a.digest: a for a in result.artifacts}
    assert by_digest[sig.digest].media_type == OCI_MANIFEST
    assert by_digest[sig.digest].artifact_type == OCI_CONFIG  # no artifactType: config.mediaType


def test_every_child_of_an_index_is_a_subject():
    reg = FakeRegistry()
    index, children = push_image(reg, platforms=2)
    sigs = [cosign_signature(SIGNER, REPO, d) for d in (index, *children)]
    sbom = spdx_sbom(REPO, subject_of(reg, children[1]))
    push(reg, *sigs, sbom, referrers_index(REPO, children[1], [sbom]))
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert result.subjects == (index, *children)
    assert {(a.subject, a.kind) for a in result.artifacts} == {
        (index, SIG),
        (children[0], SIG),
        (children[1], SIG),
        (children[1], SBOM),
    }
    assert result.signed  # the index itself is signed


def test_a_child_signature_alone_does_not_make_the_image_signed():
    reg = FakeRegistry()
    _, children = push_image(reg, platforms=2)
    push(reg, cosign_signature(SIGNER, REPO, children[0]))
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert result.counts.signatures == 1 and not result.signed


def test_referrers_api_is_used_where_present():
    reg = FakeRegistry(referrers_api=True)
    image, _ = push_image(reg)
    sbom = spdx_sbom(REPO, subject_of(reg, image))
    push(reg, sbom)  # no tag-schema index: a registry with the API needs none
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert found(result) == {(sbom.digest, image, SBOM, FoundBy.REFERRERS_API, None)}
    assert result.referrers_indexes == () and result.tags == {}
    assert result.artifacts[0].artifact_type == "application/spdx+json"


def test_referrers_tag_schema_when_the_registry_has_no_api():
    reg = FakeRegistry(referrers_api=False)
    image, _ = push_image(reg)
    sbom = spdx_sbom(REPO, subject_of(reg, image))
    index = referrers_index(REPO, image, [sbom])
    push(reg, sbom, index)
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert found(result) == {(sbom.digest, image, SBOM, FoundBy.REFERRERS_TAG, referrers_tag(image))}
    [ri] = result.referrers_indexes
    assert (ri.subject, ri.tag, ri.digest, ri.referrers) == (
        image,
        referrers_tag(image),
        index.digest,
        (sbom.digest,),
    )
    assert result.tags == {referrers_tag(image): index.digest}
    assert result.digests == {sbom.digest, index.digest}


def test_without_api_or_tag_schema_an_untagged_referrer_is_not_found():
    """Discovery never scans the repository: a referrer nobody listed is invisible (as to cosign)."""
    reg = FakeRegistry(referrers_api=False)
    image, _ = push_image(reg)
    push(reg, spdx_sbom(REPO, subject_of(reg, image)))
    assert discover(reg, ImageRef(REPO, "1.0")).artifacts == ()


def test_with_the_api_the_tag_schema_is_not_read():
    reg = FakeRegistry(referrers_api=True)
    image, _ = push_image(reg)
    sbom = spdx_sbom(REPO, subject_of(reg, image))
    stale = referrers_index(REPO, image, [sbom])
    push(reg, sbom, stale)
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert result.referrers_indexes == ()
    assert [a.found_by for a in result.artifacts] == [FoundBy.REFERRERS_API]


def test_recursion_finds_the_signature_of_an_sbom_and_a_signature_of_that_signature():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    sbom = spdx_sbom(REPO, subject_of(reg, image))
    sbom_sig = cosign_signature(SIGNER, REPO, sbom.digest)
    sig_sig = cosign_signature(SIGNER, REPO, sbom_sig.digest)
    push(reg, sbom, referrers_index(REPO, image, [sbom]), sbom_sig, sig_sig)
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert {(a.digest, a.subject, a.kind) for a in result.artifacts} == {
        (sbom.digest, image, SBOM),
        (sbom_sig.digest, sbom.digest, SIG),
        (sig_sig.digest, sbom_sig.digest, SIG),
    }
    assert result.counts == AttachmentCounts(signatures=2, sboms=1)
    assert not result.signed  # signatures exist, but none signs the image itself
    # breadth first: the image's own attachments before what is attached to them
    assert [a.digest for a in result.artifacts] == [sbom.digest, sbom_sig.digest, sig_sig.digest]


def test_referrers_that_list_each_other_terminate():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    a = spdx_sbom(REPO, subject_of(reg, image), package="a")
    push(reg, a)
    b = spdx_sbom(REPO, subject_of(reg, a.digest), package="b")
    push(reg, b, referrers_index(REPO, image, [a]), referrers_index(REPO, a.digest, [b]))
    # b's tag-schema index lists a again (a hand-edited index; the subject check reports it)
    push(reg, referrers_index(REPO, b.digest, [a]))
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert [x.digest for x in result.artifacts] == [a.digest, b.digest]
    assert [p.ref for p in result.problems] == [str(a.digest)]
    assert "its subject is" in result.problems[0].reason


def test_an_artifact_both_tagged_and_listed_as_referrer_is_reported_once():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    sig = cosign_signature(SIGNER, REPO, image)
    push(reg, sig, referrers_index(REPO, image, [sig]))
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert [(a.digest, a.found_by) for a in result.artifacts] == [(sig.digest, FoundBy.COSIGN_TAG)]
    assert result.tags == {sig.tag: sig.digest, referrers_tag(image): result.referrers_indexes[0].digest}


def test_attachment_tags_whose_subject_does_not_exist_are_not_attached():
    reg = FakeRegistry()
    push_image(reg)
    gone = Digest(hashlib.sha256(b"an image deleted long ago").hexdigest())
    orphan_sig = cosign_signature(SIGNER, REPO, gone)
    orphan_sbom = spdx_sbom(REPO, Subject(gone, OCI_MANIFEST, 100))
    push(reg, orphan_sig, orphan_sbom, referrers_index(REPO, gone, [orphan_sbom]))
    other_image, _ = push_image(reg, "2.0")
    push(reg, cosign_signature(SIGNER, REPO, other_image))  # attached, but to an image not asked for
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert result.artifacts == () and result.problems == ()
    assert attachment_tag_subject(orphan_sig.tag or "") == (gone, ".sig")  # it looks like one, though


def test_a_listed_tag_without_its_manifest_is_a_problem_not_an_error():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    reg.tag_only(REPO, cosign_tag(image, ".sig"), Digest("0" * 64))
    sbom = spdx_sbom(REPO, subject_of(reg, image))
    push(reg, referrers_index(REPO, image, [sbom]))  # lists a referrer the registry does not hold
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert result.artifacts == ()
    assert [(p.ref, p.subject) for p in result.problems] == [
        (cosign_tag(image, ".sig"), image),
        (str(sbom.digest), image),
    ]
    assert str(result.problems[0]).startswith(f"{REPO}:{cosign_tag(image, '.sig')} (attached to {image}): ")


def test_a_referrers_tag_that_is_not_an_index_is_ignored():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    reg.put(REPO, image_manifest("not-an-index"), OCI_MANIFEST, referrers_tag(image))
    result = discover(reg, ImageRef(REPO, "1.0"))
    assert result.artifacts == () and result.referrers_indexes == ()
    assert "not an image index" in result.problems[0].reason


def test_digest_pinned_reference_and_missing_image():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    push(reg, cosign_signature(SIGNER, REPO, image))
    assert discover(reg, ImageRef(REPO, "moved-tag", image)).counts.signatures == 1
    with pytest.raises(ImageNotFoundError, match=f"{REPO}:nope"):
        discover(reg, ImageRef(REPO, "nope"))


def test_tags_are_listed_once_per_image():
    reg = FakeRegistry()
    image, children = push_image(reg, platforms=2)
    push(reg, *(cosign_signature(SIGNER, REPO, d) for d in (image, *children)))
    discover(reg, ImageRef(REPO, "1.0"))
    # 1 image + 3 signatures read; one referrers probe per subject (3 + 3 signatures)
    assert reg.requests == {"tags": 1, "manifest": 4, "referrers": 6}


# --- classification --------------------------------------------------------------------------
def artifact_manifest(
    artifact_type: str | None = None,
    layer_types: tuple[str, ...] = ("application/x",),
    config_type: str = OCI_EMPTY,
    annotations: dict | None = None,
):
    doc: dict = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha("c"), "size": 2},
        "layers": [{"mediaType": t, "digest": sha(t), "size": 1} for t in layer_types],
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if annotations:
        doc["annotations"] = annotations
    return parse_manifest(json.dumps(doc).encode(), "test")


BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


@pytest.mark.parametrize(
    ("artifact_type", "kind"),
    [
        ("application/vnd.dev.cosign.simplesigning.v1+json", SIG),
        ("application/vnd.cncf.notary.signature", SIG),
        ("application/vnd.dsse.envelope.v1+json", ATT),
        ("application/vnd.in-toto+json", ATT),
        ("application/vnd.in-toto.provenance+dsse", ATT),
        ("application/spdx+json", SBOM),
        ("text/spdx+json", SBOM),
        ("text/spdx", SBOM),
        ("application/vnd.cyclonedx+json", SBOM),
        ("application/vnd.cyclonedx+xml; version=1.5", SBOM),
        ("application/vnd.syft+json", SBOM),
        ("application/vnd.example.thing", OTHER),
    ],
)
def test_classify_by_artifact_type(artifact_type, kind):
    assert classify(artifact_manifest(artifact_type)) is kind


@pytest.mark.parametrize(
    ("annotations", "kind"),
    [
        ({"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"}, SIG),
        ({"dev.sigstore.bundle.content": "message-signature"}, SIG),
        (
            {
                "dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1",
                "dev.sigstore.bundle.content": "dsse-envelope",
            },
            ATT,
        ),
        ({}, OTHER),  # a bundle that does not say what it carries
    ],
)
def test_classify_sigstore_bundles_by_predicate(annotations, kind):
    assert classify(artifact_manifest(BUNDLE, annotations=annotations)) is kind


def test_classify_prefers_the_manifest_then_descriptor_then_config_then_layers():
    d = Digest("1" * 64)
    sbom_descriptor = Descriptor(d, OCI_MANIFEST, 1, "application/spdx+json")
    # descriptor's artifactType when the manifest has none
    assert classify(artifact_manifest(None), descriptor=sbom_descriptor) is SBOM
    # the manifest's own artifactType wins over the descriptor's
    dsse = artifact_manifest("application/vnd.dsse.envelope.v1+json")
    assert classify(dsse, descriptor=sbom_descriptor) is ATT
    # cosign-style manifests: OCI config, the layer type decides
    assert (
        classify(artifact_manifest(None, ("application/vnd.dev.cosign.simplesigning.v1+json",), OCI_CONFIG))
        is SIG
    )
    assert classify(artifact_manifest(None, ("text/spdx", "application/vnd.cyclonedx"), OCI_CONFIG)) is SBOM
    assert classify(artifact_manifest(None, ("text/spdx", "application/x"), OCI_CONFIG)) is OTHER
    # a bundle whose annotations a fallback index dropped (sigstore/cosign#4641): the manifest's count
    bare = Descriptor(d, OCI_MANIFEST, 1, BUNDLE)
    signed = artifact_manifest(
        BUNDLE, annotations={"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"}
    )
    assert classify(signed, descriptor=bare) is SIG
    # the cosign tag suffix outranks everything
    assert classify(artifact_manifest("application/spdx+json"), cosign_suffix=".att") is ATT


def test_counts_add_and_print():
    a = AttachmentCounts(1, 2, 3, 4)
    assert a + a == AttachmentCounts(2, 4, 6, 8) and (a + a).total == 20
    assert str(a) == "1 signature(s), 2 attestation(s), 3 SBOM(s), 4 other referrer(s)"
    one = AttachedArtifact(
        REPO, Digest("2" * 64), Digest("3" * 64), OTHER, FoundBy.REFERRERS_API, None, None, None
    )
    assert AttachmentCounts.of([one, one]) == AttachmentCounts(other=2)


# --- an attachment tag the push target already holds -------------------------------------------
IMAGE = Digest(hashlib.sha256(b"image").hexdigest())
IMAGE_SUBJECT = Subject(IMAGE, OCI_MANIFEST, 123)


def cosign_with_layers(*signers: str) -> bytes:
    """A `.sig` manifest holding one signature layer per signer, as cosign appends them."""
    docs = [json.loads(cosign_signature(Signer(s), REPO, IMAGE).manifest) for s in signers]
    return json.dumps({**docs[0], "layers": [d["layers"][0] for d in docs]}).encode()


def test_a_referrers_index_the_package_extends_is_covered_and_keeps_the_packages_bytes():
    one = spdx_sbom(REPO, IMAGE_SUBJECT, package="a")
    two = spdx_sbom(REPO, IMAGE_SUBJECT, package="b")
    target = referrers_index(REPO, IMAGE, [one]).manifest
    package = referrers_index(REPO, IMAGE, [one, two]).manifest
    got = merge_attachment_tag(referrers_tag(IMAGE), package, target)
    assert got == type(got)(TagMerge.COVERED, package)


def test_a_referrers_index_with_referrers_the_package_lacks_is_united_package_first():
    mine, theirs, shared = (spdx_sbom(REPO, IMAGE_SUBJECT, package=p) for p in ("mine", "theirs", "shared"))
    package = referrers_index(REPO, IMAGE, [shared, mine]).manifest
    target = referrers_index(REPO, IMAGE, [theirs, shared]).manifest
    got = merge_attachment_tag(referrers_tag(IMAGE), package, target)
    assert got.outcome is TagMerge.MERGED
    union = parse_manifest(got.data, "union")
    assert union.children == (shared.digest, mine.digest, theirs.digest)
    assert [d.artifact_type for d in union.descriptors] == ["application/spdx+json"] * 3
    assert union.kind.value == "index" and json.loads(got.data)["mediaType"] == OCI_INDEX


def test_a_referrers_tag_holding_something_else_is_a_conflict():
    package = referrers_index(REPO, IMAGE, [spdx_sbom(REPO, IMAGE_SUBJECT)]).manifest
    assert (
        merge_attachment_tag(referrers_tag(IMAGE), package, image_manifest("x")).outcome is TagMerge.CONFLICT
    )


def test_a_cosign_tag_whose_signatures_the_package_holds_all_of_is_covered():
    package = cosign_with_layers("vendor", "vendor-2")
    for target in (cosign_with_layers("vendor"), cosign_with_layers("vendor-2", "vendor")):
        assert merge_attachment_tag(cosign_tag(IMAGE, ".sig"), package, target).outcome is TagMerge.COVERED


def test_a_cosign_tag_with_a_signature_the_package_lacks_is_a_conflict():
    tag = cosign_tag(IMAGE, ".sig")
    package = cosign_with_layers("vendor")
    # the customer's own signature, alone or appended: moving the tag would drop it
    for target in (cosign_with_layers("customer"), cosign_with_layers("vendor", "customer")):
        assert merge_attachment_tag(tag, package, target).outcome is TagMerge.CONFLICT
    # the customer's layer is the same payload blob as the vendor's: only the annotation (where
    # cosign keeps the signature) tells them apart, and it is compared too
    layer = [json.loads(m)["layers"][0]["digest"] for m in (package, cosign_with_layers("customer"))]
    assert layer[0] == layer[1]


def test_an_ordinary_tag_at_another_digest_is_always_a_conflict():
    assert merge_attachment_tag("1.0", image_manifest("a"), image_manifest("b")).outcome is TagMerge.CONFLICT
