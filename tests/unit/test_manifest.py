import json

import pytest

from layover.errors import StorageError
from layover.manifest import ManifestKind, parse_manifest
from layover.reference import Digest

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def doc(**kw) -> bytes:
    return json.dumps(kw).encode()


def test_docker_image_with_media_type():
    m = parse_manifest(
        doc(
            schemaVersion=2,
            mediaType="application/vnd.docker.distribution.manifest.v2+json",
            config={"digest": A},
            layers=[{"digest": B}, {"digest": B}],
        ),
        "x",
    )
    assert m.kind is ManifestKind.IMAGE
    assert m.config == Digest.parse(A)
    assert m.blobs == (Digest.parse(A), Digest.parse(B), Digest.parse(B))  # repeats kept


def test_oci_image_without_media_type_classified_by_shape():
    m = parse_manifest(doc(schemaVersion=2, config={"digest": A}, layers=[]), "x")
    assert m.kind is ManifestKind.IMAGE and m.media_type is None and m.blobs == (Digest.parse(A),)


@pytest.mark.parametrize(
    "layer",
    [
        {"digest": B, "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"},
        {"digest": B, "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar"},
        {"digest": B, "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"},
        {
            "digest": B,
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "urls": ["https://x.invalid/b"],
        },
    ],
)
def test_foreign_layers_flagged_and_not_needed(layer):
    m = parse_manifest(doc(schemaVersion=2, config={"digest": A}, layers=[layer, {"digest": C}]), "x")
    assert [layer.foreign for layer in m.layers] == [True, False]
    assert m.blobs == (Digest.parse(A), Digest.parse(C))
    assert m.foreign_layers == (Digest.parse(B),)


def test_empty_urls_is_not_foreign():
    m = parse_manifest(doc(schemaVersion=2, config={"digest": A}, layers=[{"digest": B, "urls": []}]), "x")
    assert not m.layers[0].foreign


@pytest.mark.parametrize(
    "media_type",
    [
        None,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ],
)
def test_index_and_list(media_type):
    body = {"schemaVersion": 2, "manifests": [{"digest": A}, {"digest": B}]}
    if media_type:
        body["mediaType"] = media_type
    m = parse_manifest(json.dumps(body).encode(), "x")
    assert m.kind is ManifestKind.INDEX
    assert m.children == (Digest.parse(A), Digest.parse(B))
    assert m.blobs == ()


def test_schema1():
    m = parse_manifest(doc(schemaVersion=1, name="n", fsLayers=[{"blobSum": A}, {"blobSum": A}]), "x")
    assert m.kind is ManifestKind.SCHEMA1 and m.blobs == (Digest.parse(A), Digest.parse(A))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x1f\x8b\x08\x00", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1,2]", "not a JSON object"),
        (
            doc(schemaVersion=2, mediaType="application/vnd.oci.artifact.manifest.v1+json", blobs=[]),
            "unknown manifest",
        ),
        (doc(schemaVersion=2, config={"digest": A}), "unknown manifest"),
        (doc(schemaVersion=2, config={"digest": "sha256:abc"}, layers=[]), "config.digest"),
        (doc(schemaVersion=2, config={"digest": A}, layers=[{"size": 3}]), "layers[].digest"),
        (doc(schemaVersion=2, manifests={"digest": A}), "not a list"),
        (doc(schemaVersion=2, manifests=[{"digest": "sha512:" + "a" * 128}]), "manifests[].digest"),
        (doc(schemaVersion=2, manifests=[], config={"digest": A}, layers=[]), "both"),
        (doc(schemaVersion=1, fsLayers=[{"blobsum": A}]), "blobSum"),
    ],
)
def test_bad_manifests_name_where(data, needle):
    with pytest.raises(StorageError) as e:
        parse_manifest(data, "/some/where/data")
    assert "/some/where/data" in str(e.value)
    assert needle in str(e.value)


def test_oci_1_1_artifact_fields():
    m = parse_manifest(
        doc(
            schemaVersion=2,
            mediaType="application/vnd.oci.image.manifest.v1+json",
            artifactType="application/spdx+json",
            config={"mediaType": "application/vnd.oci.empty.v1+json", "digest": A, "size": 2},
            layers=[{"mediaType": "application/spdx+json", "digest": B, "size": 9}],
            subject={"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": C, "size": 500},
            annotations={"z": "1", "a": "2"},
        ),
        "x",
    )
    assert (m.artifact_type, m.subject, m.config_media_type) == (
        "application/spdx+json",
        Digest.parse(C),
        "application/vnd.oci.empty.v1+json",
    )
    assert m.annotations == (("a", "2"), ("z", "1")) and m.annotation("z") == "1"
    assert m.blobs == (Digest.parse(A), Digest.parse(B))  # the subject is not referenced content


@pytest.mark.parametrize("subject", [None, "sha256:abc", {"digest": "sha512:" + "a" * 128}, {"digest": 7}])
def test_oci_1_1_fields_are_read_leniently(subject):
    body = {
        "schemaVersion": 2,
        "config": {"digest": A},
        "layers": [],
        "artifactType": 5,
        "annotations": {"k": 1, "ok": "v"},
    }
    if subject is not None:
        body["subject"] = subject
    m = parse_manifest(json.dumps(body).encode(), "x")
    assert (m.artifact_type, m.subject, m.annotations) == (None, None, (("ok", "v"),))


def test_index_descriptors_keep_artifact_type_and_annotations():
    from layover.manifest import Descriptor, parse_descriptors

    data = doc(
        schemaVersion=2,
        mediaType="application/vnd.oci.image.index.v1+json",
        manifests=[
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": A,
                "size": 646,
                "artifactType": "application/spdx+json",
                "annotations": {"k": "v"},
            },
            {"digest": B},
        ],
    )
    m = parse_manifest(data, "x")
    assert m.children == (Digest.parse(A), Digest.parse(B))
    assert (
        parse_descriptors(data, "x")
        == m.descriptors
        == (
            Descriptor(
                Digest.parse(A),
                "application/vnd.oci.image.manifest.v1+json",
                646,
                "application/spdx+json",
                (("k", "v"),),
            ),
            Descriptor(Digest.parse(B)),
        )
    )
    with pytest.raises(StorageError, match="expected an image index, found a manifest of kind image"):
        parse_descriptors(doc(schemaVersion=2, config={"digest": A}, layers=[]), "x")
