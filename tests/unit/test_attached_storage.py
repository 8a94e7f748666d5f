"""Attachment discovery over a storage tree, verify's comparison with the run's record
(layover.attached_storage), and the source reader over RegistryClient (scripted HTTP answers).

Storage trees are laid out as docker-registry 2.8 writes them (tests/unit/storage_builder.py);
the artifacts are the fixture's real formats (layover.testing.attached).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import httpx
import pytest

from layover.adapters.attachment_reader import SourceAttachmentReader
from layover.adapters.registry_client import SOURCE, Endpoint, RegistryClient
from layover.attached import AttachedRecord, ListedAttachments, discover
from layover.attached_storage import StorageAttachmentReader, attached_differences
from layover.manifest import OCI_INDEX, OCI_MANIFEST
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
from tests.unit.storage_builder import StorageBuilder

REPO = "apps/web"
SIGNER = Signer("unit-storage")


def put(sb: StorageBuilder, reg: FakeRegistry, a: Artifact) -> None:
    """The same artifact into a storage tree and into the fake source registry."""
    for data in a.blobs.values():
        sb.push_blob(a.repository, data)
    sb.push_manifest(a.repository, a.manifest)
    if a.tag:
        sb.tag(a.repository, a.tag, a.digest)
    reg.put(a.repository, a.manifest, a.media_type, a.tag)


def signed_image(tmp_path, *, referrers_api: bool = False):
    sb = StorageBuilder(tmp_path / "pkg")
    reg = FakeRegistry(referrers_api=referrers_api)
    image = sb.image(REPO, oci=True)
    sb.tag(REPO, "1.0", image)
    data = sb.layout.blob_data(image).read_bytes()
    reg.put(REPO, data, OCI_MANIFEST, "1.0")
    sig = cosign_signature(SIGNER, REPO, image)
    sbom = spdx_sbom(REPO, Subject(image, OCI_MANIFEST, len(data)))
    parts = [sig, sbom, cosign_signature(SIGNER, REPO, sbom.digest)]
    if not referrers_api:
        parts.append(referrers_index(REPO, image, [sbom]))
    for a in parts:
        put(sb, reg, a)
    return sb, reg, image, sig, sbom


def record(reg: FakeRegistry, image: Digest) -> AttachedRecord:
    ref = ImageRef(REPO, "1.0")
    return AttachedRecord("copy", (ListedAttachments(ref, discover(reg, ref)),))


def test_discovery_over_storage_finds_what_the_registry_serves(tmp_path):
    sb, reg, image, *_ = signed_image(tmp_path)
    reader = StorageAttachmentReader(sb.layout)
    on_disk, served = discover(reader, ImageRef(REPO, "1.0")), discover(reg, ImageRef(REPO, "1.0"))
    assert on_disk.digests == served.digests and on_disk.tags == served.tags
    assert on_disk.counts == served.counts and on_disk.counts.total == 3
    assert reader.referrers(REPO, image) is None
    assert reader.tags("no/such") == () and reader.manifest(REPO, "no-such-tag") is None
    assert reader.manifest(REPO, Digest("0" * 64)) is None


def test_a_package_equal_to_the_record_has_no_differences(tmp_path):
    sb, reg, image, *_ = signed_image(tmp_path)
    assert attached_differences(sb.layout, record(reg, image)) == []
    assert attached_differences(sb.layout, AttachedRecord("none")) == []


def test_a_missing_artifact_an_extra_one_and_a_moved_tag_are_named(tmp_path):
    sb, reg, image, _, sbom = signed_image(tmp_path)
    rec = record(reg, image)
    # the SBOM's signature is gone: its tag and revision
    sbom_sig = cosign_signature(SIGNER, REPO, sbom.digest)
    shutil.rmtree(sb.layout.tag_dir(REPO, sbom_sig.tag or ""))
    shutil.rmtree(sb.layout.revision_dir(REPO, sbom_sig.digest))
    # an attestation the source did not have at sync time
    att = cosign_attestation(SIGNER, REPO, image)
    for data in att.blobs.values():
        sb.push_blob(REPO, data)
    sb.push_manifest(REPO, att.manifest)
    sb.tag(REPO, att.tag or "", att.digest)
    [line] = attached_differences(sb.layout, rec)
    assert line.startswith(f"{REPO}:1.0: ")
    assert f"1 recorded artifact(s) missing (first {sbom_sig.digest})" in line
    assert f"1 artifact(s) the source did not have (first {att.digest})" in line
    assert sbom_sig.tag in line  # its tag no longer points at the recorded digest
    # a signature tag moved to another manifest (re-signed after sync): only that is reported
    sb2, reg2, image2, sig2, _ = signed_image(tmp_path / "second")
    other = cosign_signature(Signer("someone else"), REPO, image2)
    for data in other.blobs.values():
        sb2.push_blob(REPO, data)
    sb2.push_manifest(REPO, other.manifest)
    sb2.tag(REPO, sig2.tag or "", other.digest, history=[sig2.digest])
    [line] = attached_differences(sb2.layout, record(reg2, image2))
    assert "artifact(s) the source did not have" in line and f"tag(s) {sig2.tag} not at the recorded" in line


def test_a_referrer_from_the_referrers_api_only_needs_to_be_stored(tmp_path):
    """The package has no referrers API and no tag-schema index for it: discovery over the package
    cannot find it, so verify checks that it is stored, by digest."""
    sb, reg, image, _, sbom = signed_image(tmp_path, referrers_api=True)
    rec = record(reg, image)
    assert sbom.digest in rec.images[0].found.digests
    assert attached_differences(sb.layout, rec) == []
    shutil.rmtree(sb.layout.revision_dir(REPO, sbom.digest))
    [line] = attached_differences(sb.layout, rec)
    assert f"missing (first {sbom.digest})" in line


# --- the source reader ---------------------------------------------------------------------------
def test_source_reader_lists_a_repository_once_and_keeps_what_it_fetched():
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    digest = Digest(hashlib.sha256(manifest).hexdigest())
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        path = req.url.path
        seen.append(f"{req.method} {path}")
        if path == "/v2/":
            return httpx.Response(200)
        if path == "/v2/a/tags/list":
            return httpx.Response(200, json={"name": "a", "tags": ["1.0", f"sha256-{digest.hex}"]})
        if path == "/v2/gone/tags/list":
            return httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN"}]})
        if path == f"/v2/a/manifests/sha256-{digest.hex}":
            return httpx.Response(
                200,
                content=manifest,
                headers={"Content-Type": OCI_INDEX, "Docker-Content-Digest": str(digest)},
            )
        if path.startswith("/v2/a/manifests/"):
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        if "/referrers/" in path:
            return httpx.Response(404, text="404 page not found")
        raise AssertionError(path)

    client = RegistryClient(Endpoint("ci.example.com", flags=SOURCE), transport=httpx.MockTransport(handler))
    reader = SourceAttachmentReader(client)
    assert reader.tags("a") == ("1.0", f"sha256-{digest.hex}")
    assert reader.tags("a") == ("1.0", f"sha256-{digest.hex}")  # listed once
    assert reader.tags("gone") == ()
    got = reader.manifest("a", f"sha256-{digest.hex}")
    assert got == (manifest, OCI_INDEX, digest)
    assert reader.manifest("a", digest) == got  # by digest: kept, no request
    assert reader.fetched("a", digest) == (manifest, OCI_INDEX)
    assert reader.manifest("a", "no-such-tag") is None
    assert reader.referrers("a", digest) is None and reader.referrers("a", Digest("1" * 64)) is None
    assert reader.has_referrers_api is False
    assert dict(reader.requests) == {"tags": 2, "manifest": 2, "referrers": 1}
    assert seen.count("GET /v2/a/tags/list") == 1


def test_a_manifest_body_cut_off_is_a_transient_error():
    """The head came whole, the body broke off: retrying may help (attached sync retries it)."""
    from layover.errors import TransientHTTPError

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)

        def body():
            yield b'{"schemaVersion":'
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

        return httpx.Response(200, content=body(), headers={"Content-Type": OCI_MANIFEST})

    client = RegistryClient(Endpoint("ci.example.com", flags=SOURCE), transport=httpx.MockTransport(handler))
    with pytest.raises(TransientHTTPError, match=r"ci\.example\.com"):
        SourceAttachmentReader(client).manifest("a", "sha256-x.sig")
