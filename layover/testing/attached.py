"""Signatures, attestations and SBOMs built by their published formats, for tests and demos.

Neither cosign nor a sigstore-enabled skopeo is available here (Debian's skopeo 1.9.3 refuses to
sign with a sigstore key), so this module writes the bytes those tools write, signs with an
ECDSA P-256 key from `cryptography`, and pushes through RegistryAPI (loopback only).

    cosign signature   tag sha256-<hex>.sig: an OCI image manifest whose config is an OCI image
                       config and whose one layer (media type
                       application/vnd.dev.cosign.simplesigning.v1+json) is the simple-signing
                       payload; the base64 ASN.1 ECDSA-P256/SHA-256 signature of that payload is
                       the layer's `dev.cosignproject.cosign/signature` annotation
    cosign attestation tag sha256-<hex>.att: the same shape, one layer of media type
                       application/vnd.dsse.envelope.v1+json holding a DSSE envelope (payloadType
                       application/vnd.in-toto+json, the signature over DSSE's PAE encoding) of an
                       in-toto statement; the layer's `predicateType` annotation names the predicate
    SPDX SBOM          an OCI 1.1 artifact: image manifest with `artifactType`
                       application/spdx+json, the empty config application/vnd.oci.empty.v1+json
                       (the two bytes `{}`), one SPDX JSON layer and a `subject` descriptor; pushed
                       by digest, untagged
    referrers index    tag sha256-<hex> (the referrers tag schema, for registries without the
                       referrers API, Distribution 2.8 included): an OCI index listing each
                       referrer's descriptor with its `artifactType` and annotations copied

Sources (read 2026-12):
  - sigstore/cosign specs/SIGNATURE_SPEC.md: tag-based discovery (`sha256-<hex>.sig`), the payload
    layer and its media type, the signature annotation, ECDSA-P256 with SHA-256, simple signing
    with `critical.type` "cosign container image signature";
    specs/ATTESTATION_SPEC.md (DSSE layer); specs/SBOM_SPEC.md (SBOM media types).
  - sigstore/cosign pkg/oci/static/signature.go and options.go (SignatureAnnotationKey, default
    layer type simple signing, config type OCI image config), pkg/types/media.go;
    cmd/cosign/cli/attest (layer type DssePayloadType plus a `predicateType` annotation).
  - sigstore/sigstore pkg/signature/payload/payload.go: the payload's JSON keys
    (critical.identity.docker-reference, critical.image.docker-manifest-digest, critical.type,
    optional).
  - secure-systems-lab/dsse envelope.md and protocol.md: the envelope and PAE
    ("DSSEv1 <len(type)> <type> <len(body)> <body>"); in-toto/attestation spec v1 Statement.
  - opencontainers/image-spec manifest.md: `artifactType`, `subject`, "Guidelines for Artifact
    Usage" and the empty descriptor (sha256:44136fa3..., size 2).
  - opencontainers/distribution-spec spec.md: "Pushing Manifests with Subject" (how a client
    updates the fallback index, artifactType and annotations copied into the descriptor) and
    "Referrers Tag Schema" (`<alg>-<hex>`).

The independent verifier (`verify_cosign_signature`, `verify_attestation`) uses only json,
hashlib, base64 and `cryptography`: none of Layover's own manifest or discovery code.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from layover.adapters.registry_api import RegistryAPI
from layover.attached import AttachmentKind, cosign_tag, referrers_tag
from layover.errors import VerifyError
from layover.manifest import (
    COSIGN_SIMPLESIGNING,
    DSSE_ENVELOPE,
    IN_TOTO,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    SPDX_JSON,
)
from layover.reference import Digest

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_TYPE_ANNOTATION = "predicateType"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
IN_TOTO_STATEMENT_V1 = "https://in-toto.io/Statement/v1"
EMPTY_JSON = b"{}"  # the OCI empty descriptor's content

# Fixed so that the same inputs give the same bytes (and digests) on every run.
_CREATED = "2023-11-14T22:13:20Z"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _sha256(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def _compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _descriptor(media_type: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": str(_sha256(data)), "size": len(data), **extra}


# --- keys ----------------------------------------------------------------------------------
class Signer:
    """An ECDSA P-256 key derived from `seed` (same seed, same key) that signs deterministically
    (RFC 6979), so a fixture's signatures and manifest digests repeat from run to run."""

    def __init__(self, seed: str = "layover-test-key") -> None:
        secret = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big") % (_P256_ORDER - 1) + 1
        self._key = ec.derive_private_key(secret, ec.SECP256R1())

    def sign(self, data: bytes) -> bytes:
        """ASN.1 DER ECDSA signature over SHA-256(data), as cosign stores it (then base64)."""
        return self._key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))

    @property
    def public_key_pem(self) -> bytes:
        """What `cosign generate-key-pair` writes to cosign.pub."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


# --- artifacts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """The manifest an artifact is attached to, as a descriptor needs it."""

    digest: Digest
    media_type: str
    size: int

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}


@dataclass(frozen=True)
class Artifact:
    """One manifest to push (by `tag` if set, else by digest) and the blobs it needs."""

    repository: str
    manifest: bytes
    media_type: str
    subject: Digest
    kind: AttachmentKind | None  # None: a referrers tag-schema index, not an artifact itself
    tag: str | None = None
    blobs: Mapping[Digest, bytes] = field(default_factory=dict)
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> Digest:
        return _sha256(self.manifest)

    @property
    def as_subject(self) -> Subject:
        return Subject(self.digest, self.media_type, len(self.manifest))

    def referrer_descriptor(self) -> dict:
        """This manifest's entry in a referrers list (distribution-spec: artifactType, annotations)."""
        entry = _descriptor(self.media_type, self.manifest)
        if self.artifact_type:
            entry["artifactType"] = self.artifact_type
        if self.annotations:
            entry["annotations"] = dict(self.annotations)
        return entry


def simple_signing_payload(
    docker_reference: str, digest: Digest, optional: Mapping[str, object] | None = None
) -> bytes:
    """The payload cosign signs, with the key order and compact JSON of Go's encoding/json."""
    return _compact(
        {
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": str(digest)},
                "type": COSIGN_SIGNATURE_TYPE,
            },
            "optional": dict(optional) if optional is not None else None,
        }
    )


def cosign_manifest(layer: bytes, layer_type: str, annotations: Mapping[str, str]) -> tuple[bytes, dict]:
    """cosign's `.sig`/`.att` image: an OCI config naming the layer's diff_id, and the one layer.

    Returns (manifest bytes, blobs)."""
    config = _compact(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [str(_sha256(layer))]},
            "config": {},
        }
    )
    manifest = _compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config),
            "layers": [_descriptor(layer_type, layer, annotations=dict(annotations))],
        }
    )
    return manifest, {_sha256(config): config, _sha256(layer): layer}


def cosign_signature(
    signer: Signer,
    repository: str,
    subject: Digest,
    *,
    docker_reference: str | None = None,
    optional: Mapping[str, object] | None = None,
) -> Artifact:
    """`cosign sign --key`: a `sha256-<hex>.sig` manifest signing `subject`."""
    payload = simple_signing_payload(docker_reference or repository, subject, optional)
    signature = base64.b64encode(signer.sign(payload)).decode()
    manifest, blobs = cosign_manifest(payload, COSIGN_SIMPLESIGNING, {SIGNATURE_ANNOTATION: signature})
    return Artifact(
        repository,
        manifest,
        OCI_MANIFEST,
        subject,
        AttachmentKind.SIGNATURE,
        tag=cosign_tag(subject, ".sig"),
        blobs=blobs,
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature is computed over."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def cosign_attestation(
    signer: Signer,
    repository: str,
    subject: Digest,
    *,
    predicate_type: str = SLSA_PROVENANCE_V1,
    predicate: Mapping[str, object] | None = None,
) -> Artifact:
    """`cosign attest --key`: a `sha256-<hex>.att` manifest with an in-toto statement in DSSE."""
    statement = _compact(
        {
            "_type": IN_TOTO_STATEMENT_V1,
            "subject": [{"name": repository, "digest": {"sha256": subject.hex}}],
            "predicateType": predicate_type,
            "predicate": dict(predicate)
            if predicate is not None
            else {
                "buildDefinition": {"buildType": "https://layover.invalid/test-build/v1"},
                "runDetails": {"builder": {"id": "https://layover.invalid/test-builder"}},
            },
        }
    )
    envelope = _compact(
        {
            "payloadType": IN_TOTO,
            "payload": base64.b64encode(statement).decode(),
            "signatures": [
                {"keyid": "", "sig": base64.b64encode(signer.sign(pae(IN_TOTO, statement))).decode()}
            ],
        }
    )
    manifest, blobs = cosign_manifest(envelope, DSSE_ENVELOPE, {PREDICATE_TYPE_ANNOTATION: predicate_type})
    return Artifact(
        repository,
        manifest,
        OCI_MANIFEST,
        subject,
        AttachmentKind.ATTESTATION,
        tag=cosign_tag(subject, ".att"),
        blobs=blobs,
    )


def spdx_sbom(
    repository: str, subject: Subject, *, package: str = "example", version: str = "1.0"
) -> Artifact:
    """An SPDX 2.3 JSON SBOM as an OCI 1.1 referrer of `subject` (what `oras attach` writes)."""
    document = _compact(
        {
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": f"{repository}@{subject.digest}",
            "documentNamespace": f"https://layover.invalid/spdx/{subject.digest.hex}",
            "creationInfo": {"created": _CREATED, "creators": ["Tool: layover-testing"]},
            "packages": [
                {
                    "SPDXID": "SPDXRef-Package",
                    "name": package,
                    "versionInfo": version,
                    "downloadLocation": "NOASSERTION",
                }
            ],
        }
    )
    annotations = {"org.opencontainers.image.created": _CREATED}
    manifest = _compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SPDX_JSON,
            "config": _descriptor(OCI_EMPTY, EMPTY_JSON),
            "layers": [_descriptor(SPDX_JSON, document)],
            "subject": subject.descriptor(),
            "annotations": annotations,
        }
    )
    return Artifact(
        repository,
        manifest,
        OCI_MANIFEST,
        subject.digest,
        AttachmentKind.SBOM,
        blobs={_sha256(EMPTY_JSON): EMPTY_JSON, _sha256(document): document},
        artifact_type=SPDX_JSON,
        annotations=annotations,
    )


def referrers_index(repository: str, subject: Digest, referrers: Sequence[Artifact]) -> Artifact:
    """The referrers tag-schema index (`sha256-<hex>`) listing `referrers`, in that order."""
    manifest = _compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [r.referrer_descriptor() for r in referrers],
        }
    )
    return Artifact(repository, manifest, OCI_INDEX, subject, None, tag=referrers_tag(subject))


# --- pushing -------------------------------------------------------------------------------
def push_artifact(api: RegistryAPI, artifact: Artifact) -> Digest:
    """Blobs, then the manifest by tag (or by digest when untagged). Returns the manifest digest.

    A referrers index needs its referrers pushed first (the registry checks an index's children).
    """
    for digest, data in artifact.blobs.items():
        api.push_blob(artifact.repository, digest, data)
    return api.put_manifest(
        artifact.repository, artifact.tag or artifact.digest, artifact.manifest, artifact.media_type
    )


@dataclass(frozen=True)
class AttachedFixture:
    """What `attach_all` pushed for one image."""

    repository: str
    image: Digest
    artifacts: tuple[Artifact, ...]  # signatures, attestation, SBOM, the SBOM's signature
    indexes: tuple[Artifact, ...]  # referrers tag-schema indexes

    def of_kind(self, kind: AttachmentKind) -> tuple[Artifact, ...]:
        return tuple(a for a in self.artifacts if a.kind is kind)


def attach_all(
    api: RegistryAPI, repository: str, image: Digest, signer: Signer, *, children: Sequence[Digest] = ()
) -> AttachedFixture:
    """Sign `image` and every child, attest it, attach an SPDX SBOM as a referrer (with its tag-schema
    index, as cosign v3 and oras write on a registry without the referrers API) and sign the SBOM."""
    fetched = api.manifest(repository, image)
    subject = Subject(image, fetched.media_type, len(fetched.data))
    artifacts = [cosign_signature(signer, repository, d) for d in (image, *children)]
    artifacts.append(cosign_attestation(signer, repository, image))
    sbom = spdx_sbom(repository, subject, package=repository.rsplit("/", 1)[-1])
    artifacts += [sbom, cosign_signature(signer, repository, sbom.digest)]
    index = referrers_index(repository, image, [sbom])
    for artifact in (*artifacts, index):
        push_artifact(api, artifact)
    return AttachedFixture(repository, image, tuple(artifacts), (index,))


# --- the independent verifier ---------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedSignature:
    signature: Digest  # the `.sig` (or `.att`) manifest
    subject: Digest  # what the payload says it signs, equal to the digest of the pulled manifest
    payload: bytes


Blob = Callable[[Digest], bytes]  # digest -> bytes, e.g. functools.partial(api.get_blob, repository)


def _load_public_key(public_key_pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerifyError("public key is not an ECDSA key; give the cosign.pub of the signing key")
    return key


def _layers(manifest: bytes, media_type: str, where: str) -> list[dict]:
    layers = [x for x in json.loads(manifest).get("layers", []) if x.get("mediaType") == media_type]
    if not layers:
        raise VerifyError(f"{where}: no {media_type} layer; this is not a cosign signature manifest")
    return layers


def _blob(blob: Blob, layer: dict, where: str) -> bytes:
    data = blob(Digest.parse(layer["digest"]))
    if hashlib.sha256(data).hexdigest() != layer["digest"].removeprefix("sha256:"):
        raise VerifyError(f"{where}: layer {layer['digest']} served bytes with another digest")
    return data


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, signature_b64: str, data: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_cosign_signature(
    public_key_pem: bytes, signature_manifest: bytes, blob: Blob, subject_manifest: bytes
) -> tuple[VerifiedSignature, ...]:
    """Every simple-signing layer of a `.sig` manifest verifies with the key, and its payload's
    docker-manifest-digest is the digest of `subject_manifest` (the manifest as pulled).

    VerifyError names the first layer that fails.
    """
    key = _load_public_key(public_key_pem)
    sig_digest = _sha256(signature_manifest)
    subject = _sha256(subject_manifest)
    where = f"signature {sig_digest}"
    out = []
    for layer in _layers(signature_manifest, COSIGN_SIMPLESIGNING, where):
        payload = _blob(blob, layer, where)
        signature = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION, "")
        if not _ecdsa_ok(key, signature, payload):
            raise VerifyError(
                f"{where}: the ECDSA signature over payload {layer['digest']} does not verify "
                "with this public key"
            )
        critical = json.loads(payload).get("critical", {})
        if critical.get("type") != COSIGN_SIGNATURE_TYPE:
            raise VerifyError(
                f"{where}: payload type is {critical.get('type')!r}, not {COSIGN_SIGNATURE_TYPE!r}"
            )
        signed = critical.get("image", {}).get("docker-manifest-digest")
        if signed != str(subject):
            raise VerifyError(f"{where}: payload signs {signed} but the pulled manifest is {subject}")
        out.append(VerifiedSignature(sig_digest, subject, payload))
    return tuple(out)


def verify_attestation(
    public_key_pem: bytes, attestation_manifest: bytes, blob: Blob, subject_manifest: bytes
) -> tuple[VerifiedSignature, ...]:
    """Every DSSE layer of a `.att` manifest: each signature verifies over PAE(payloadType, payload),
    the statement's subject digest is the pulled manifest's, and its predicateType matches the
    layer's annotation."""
    key = _load_public_key(public_key_pem)
    att_digest = _sha256(attestation_manifest)
    subject = _sha256(subject_manifest)
    where = f"attestation {att_digest}"
    out = []
    for layer in _layers(attestation_manifest, DSSE_ENVELOPE, where):
        envelope = json.loads(_blob(blob, layer, where))
        statement = base64.b64decode(envelope["payload"])
        signed_bytes = pae(envelope["payloadType"], statement)
        if not envelope.get("signatures") or not all(
            _ecdsa_ok(key, s.get("sig", ""), signed_bytes) for s in envelope["signatures"]
        ):
            raise VerifyError(f"{where}: a DSSE signature does not verify with this public key")
        doc = json.loads(statement)
        digests = {s.get("digest", {}).get("sha256") for s in doc.get("subject", [])}
        if subject.hex not in digests:
            raise VerifyError(
                f"{where}: the statement's subjects do not include the pulled manifest {subject}"
            )
        annotated = (layer.get("annotations") or {}).get(PREDICATE_TYPE_ANNOTATION)
        if annotated != doc.get("predicateType"):
            raise VerifyError(
                f"{where}: predicateType annotation {annotated!r} differs from the statement's "
                f"{doc.get('predicateType')!r}"
            )
        out.append(VerifiedSignature(att_digest, subject, statement))
    return tuple(out)
