"""Manifests classified by structure, as GC and the verifier need them.

`mediaType` is optional in both Docker and OCI documents, so the shape decides (docs/design.md §4):

    schemaVersion 1          -> SCHEMA1: fsLayers[].blobSum are layers
    has "manifests"          -> INDEX:   OCI index or Docker manifest list; children are manifests
    has "config" + "layers"  -> IMAGE:   config blob plus layers (foreign ones flagged)

Anything else, or bytes that are not a JSON object, is a StorageError naming where it came from:
GC must stop rather than guess what a manifest references.

The OCI 1.1 fields (`artifactType`, `subject`, `annotations`, an index's full descriptors) are
read too, for attachment discovery (layover/attached.py); they never change what is referenced.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from layover.errors import ReferenceError_, StorageError
from layover.reference import Digest

# --- media types: the one home for these strings -------------------------------------------
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"  # the empty config of OCI 1.1 artifacts
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# Attached artifacts (signatures, attestations, SBOMs). Layer media types and OCI 1.1
# `artifactType` values; see layover/attached.py for how they are classified.
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"  # cosign `.sig` layers
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"  # cosign `.att` layers (in-toto in DSSE)
IN_TOTO = "application/vnd.in-toto+json"  # the DSSE payloadType of an in-toto statement
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle"  # prefix: v0.3+json, +json;version=0.2
NOTARY_SIGNATURE = "application/vnd.cncf.notary.signature"
SPDX_JSON = "application/spdx+json"
SPDX_TEXT = "text/spdx"  # cosign `.sbom` layers; also text/spdx+json, text/spdx+xml
CYCLONEDX = "application/vnd.cyclonedx"  # also +json, +xml
SYFT_JSON = "application/vnd.syft+json"

INDEX_MEDIA_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
MANIFEST_MEDIA_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX})

# Every manifest type Layover handles, for the Accept header. Without the list/index types a
# registry may answer with a different document than the one stored (or 404).
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# Layers the registry accepts without the blob being pushed (docs/design.md §3: data and link may be
# absent). Docker's foreign type and every OCI non-distributable variant (+gzip, +zstd, ...).
_FOREIGN_MARKERS = ("foreign", "nondistributable")


class ManifestKind(enum.Enum):
    SCHEMA1 = "schema1"
    IMAGE = "image"
    INDEX = "index"


@dataclass(frozen=True)
class Layer:
    digest: Digest
    foreign: bool = False  # has `urls` or a foreign/non-distributable media type
    media_type: str | None = None


Annotations = tuple[tuple[str, str], ...]  # sorted by key; a frozen stand-in for a JSON object


@dataclass(frozen=True)
class Descriptor:
    """An entry of an index's `manifests` (or of a referrers list), as far as Layover reads it."""

    digest: Digest
    media_type: str | None = None
    size: int | None = None
    artifact_type: str | None = None
    annotations: Annotations = ()

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


@dataclass(frozen=True)
class Manifest:
    kind: ManifestKind
    media_type: str | None
    config: Digest | None = None  # IMAGE only
    layers: tuple[Layer, ...] = ()  # IMAGE and SCHEMA1, in document order, repeats kept
    children: tuple[Digest, ...] = ()  # INDEX only: child manifests, stored in the same repo
    # OCI 1.1 fields, read leniently: they never decide what a manifest references (GC ignores
    # them), so a value of the wrong type reads as absent instead of failing the manifest.
    descriptors: tuple[Descriptor, ...] = ()  # INDEX only: `manifests` entries, same order as children
    config_media_type: str | None = None  # IMAGE only
    artifact_type: str | None = None
    subject: Digest | None = None  # `subject.digest`: the manifest this one is attached to
    annotations: Annotations = ()

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    @property
    def blobs(self) -> tuple[Digest, ...]:
        """Config and layers the repository must link and store (foreign layers excluded)."""
        own = tuple(layer.digest for layer in self.layers if not layer.foreign)
        return (self.config, *own) if self.config is not None else own

    @property
    def foreign_layers(self) -> tuple[Digest, ...]:
        return tuple(layer.digest for layer in self.layers if layer.foreign)


def media_type_of(manifest: Manifest) -> str:
    """The Content-Type to PUT a manifest with: its own `mediaType`, else what its shape says
    (the field is optional in OCI documents; Docker's always carry it)."""
    if manifest.media_type:
        return manifest.media_type
    return {ManifestKind.INDEX: OCI_INDEX, ManifestKind.IMAGE: OCI_MANIFEST}.get(
        manifest.kind, DOCKER_SCHEMA1_SIGNED
    )


def is_foreign(media_type: str | None, urls: object) -> bool:
    if urls:  # a non-empty `urls` list means "fetch from elsewhere"
        return True
    return media_type is not None and any(m in media_type for m in _FOREIGN_MARKERS)


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Classify and read one manifest. `where` (a path or reference) names it in errors."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise StorageError(
            where, f"manifest is not valid JSON ({e}); the blob is corrupt, re-copy the image"
        ) from None
    if not isinstance(doc, dict):
        raise StorageError(where, "manifest is not a JSON object; the blob is corrupt, re-copy the image")
    media_type = doc.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):
        raise StorageError(where, "manifest mediaType is not a string")
    if doc.get("schemaVersion") == 1:
        fs_layers = _list(doc, "fsLayers", where)
        layers = tuple(
            Layer(_digest(_obj(x, where).get("blobSum"), where, "fsLayers[].blobSum")) for x in fs_layers
        )
        return Manifest(ManifestKind.SCHEMA1, media_type, layers=layers)
    if "manifests" in doc:
        if "config" in doc or "layers" in doc:
            raise StorageError(
                where,
                "manifest has both `manifests` and `config`/`layers`; "
                "cannot tell an index from an image, refusing to guess",
            )
        descriptors = tuple(_descriptor(_obj(m, where), where) for m in _list(doc, "manifests", where))
        artifact_type, subject, annotations = _oci11(doc)
        return Manifest(
            ManifestKind.INDEX,
            media_type,
            children=tuple(d.digest for d in descriptors),
            descriptors=descriptors,
            artifact_type=artifact_type,
            subject=subject,
            annotations=annotations,
        )
    if "config" in doc and "layers" in doc:
        config_obj = _obj(doc["config"], where)
        config = _digest(config_obj.get("digest"), where, "config.digest")
        image_layers: list[Layer] = []
        for entry in _list(doc, "layers", where):
            obj = _obj(entry, where)
            mt = obj.get("mediaType")
            image_layers.append(
                Layer(
                    _digest(obj.get("digest"), where, "layers[].digest"),
                    is_foreign(mt if isinstance(mt, str) else None, obj.get("urls")),
                    mt if isinstance(mt, str) else None,
                )
            )
        artifact_type, subject, annotations = _oci11(doc)
        return Manifest(
            ManifestKind.IMAGE,
            media_type,
            config=config,
            layers=tuple(image_layers),
            config_media_type=_str(config_obj.get("mediaType")),
            artifact_type=artifact_type,
            subject=subject,
            annotations=annotations,
        )
    raise StorageError(
        where,
        f"unknown manifest shape (mediaType {media_type!r}, keys {sorted(doc)[:8]}): expected "
        "schemaVersion 1, `manifests`, or `config` + `layers`",
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _annotations(value: object) -> Annotations:
    if not isinstance(value, dict):
        return ()
    return tuple(sorted((k, v) for k, v in value.items() if isinstance(k, str) and isinstance(v, str)))


def _oci11(doc: dict) -> tuple[str | None, Digest | None, Annotations]:
    """artifactType, subject digest and annotations of an image manifest or index (lenient: a
    subject that is not a sha256 digest reads as none)."""
    subject = doc.get("subject")
    digest = subject.get("digest") if isinstance(subject, dict) else None
    parsed = Digest.parse(digest) if isinstance(digest, str) and Digest.is_valid(digest) else None
    return _str(doc.get("artifactType")), parsed, _annotations(doc.get("annotations"))


def _descriptor(obj: dict, where: str) -> Descriptor:
    size = obj.get("size")
    return Descriptor(
        _digest(obj.get("digest"), where, "manifests[].digest"),
        media_type=_str(obj.get("mediaType")),
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        artifact_type=_str(obj.get("artifactType")),
        annotations=_annotations(obj.get("annotations")),
    )


def parse_descriptors(data: bytes, where: str) -> tuple[Descriptor, ...]:
    """The `manifests` of an index document, e.g. a referrers API response.

    Raises StorageError like parse_manifest when `data` is not an index.
    """
    manifest = parse_manifest(data, where)
    if manifest.kind is not ManifestKind.INDEX:
        raise StorageError(where, f"expected an image index, found a manifest of kind {manifest.kind.value}")
    return manifest.descriptors


def _list(doc: dict, key: str, where: str) -> list:
    value = doc.get(key)
    if not isinstance(value, list):
        raise StorageError(where, f"manifest field `{key}` is missing or not a list")
    return value


def _obj(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise StorageError(where, "manifest descriptor is not a JSON object")
    return value


def _digest(value: object, where: str, field: str) -> Digest:
    if not isinstance(value, str):
        raise StorageError(where, f"manifest field `{field}` is missing or not a string")
    try:
        return Digest.parse(value)
    except ReferenceError_ as e:
        raise StorageError(where, f"manifest field `{field}`: {e.reason} (found {value[:90]!r})") from None
